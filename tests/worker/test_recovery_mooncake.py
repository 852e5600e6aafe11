"""End to end on real mooncake-cpu: pods as real processes, the harness playing the operator's part.

Collective timeout and reconciliation window are ~1 s. A background client keeps sending requests and checks
every answer against the float64 reference; no request may fail or be answered wrongly.

The kill/rejoin tests carry the marker `mooncake_faults` (`make test-recovery` runs only them; `make test`
runs them too). They are what the step fence (`rank.RankRuntime._fence`) was built against: without it,
mooncake-transfer-engine 0.3.13.post1 left the survivors of a mid-stream kill hung in about half the runs
(docs/known-issues.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .harness import Client, LocalCluster, Pod

pytestmark = [pytest.mark.mooncake, pytest.mark.timeout(300)]


class Stream:
    """A client thread that keeps sending; collects errors instead of raising in the thread."""

    def __init__(self, client: Client) -> None:
        self.client, self.errors, self.stop = client, list[str](), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            tokens = [(i * 37 + j * 11) % 1024 for j in range(1 + i % 5)]
            try:
                self.client.infer(tokens, timeout=90)
            except Exception as e:
                self.errors.append(f"{type(e).__name__}: {e}")
            time.sleep(0.02)

    def __enter__(self) -> Stream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(120)


def wait_answers(client: Client, pred: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    n = len(client.answers)
    while time.monotonic() < deadline:
        for a in client.answers[n:]:
            if pred(a):
                return a
        time.sleep(0.1)
    last = {k: v for k, v in client.answers[-1].items() if k != "output"} if client.answers else None
    raise AssertionError(f"no answer matching within {timeout_s}s; last {last}")


def test_all_ranks_serve_correct_answers(tmp_path: Path) -> None:
    """Steady state on real mooncake-cpu: 3 members, every answer checked against the float64 reference."""
    with LocalCluster(tmp_path, members=3, ranks_per_member=1) as cluster:
        cluster.start_all()
        client = Client(cluster.pods[0])
        for i in range(40):
            answer = client.infer([(i * 13 + j) % 1024 for j in range(1 + i % 7)], timeout=60)
            assert not answer["degraded"]
            assert answer["active_ranks"] == [0, 1, 2]
        assert len(client.answers) == 40


@pytest.mark.mooncake_faults
def test_kill_and_rejoin_twice(tmp_path: Path) -> None:
    with LocalCluster(
        tmp_path,
        members=3,
        ranks_per_member=1,
        collective_timeout_s=0.5,
        reconcile_window_s=4.0,
        join_timeout_s=30.0,
    ) as cluster:
        cluster.start_all()
        client = Client(cluster.pods[0])
        with Stream(client) as stream:
            wait_answers(client, lambda a: not a["degraded"], 30)
            for _ in range(2):
                cluster.pods[2].kill()
                cluster.write_membership([0, 1], [])
                wait_answers(client, lambda a: a["active_ranks"] == [0, 1], 30)
                cluster.start(2, rejoin=True)
                cluster.write_membership([0, 1], [2])
                cluster.wait_ready([2], 90)
                cluster.write_membership([0, 1, 2], [])
                wait_answers(client, lambda a: a["active_ranks"] == [0, 1, 2], 30)
        assert not stream.errors, stream.errors[:5]
        logs = cluster.pods[0].logs()
        assert logs.count("recovery succeeded") == 2, logs[-3000:]


@pytest.mark.mooncake_faults
def test_member_with_two_ranks_rejoins(tmp_path: Path) -> None:
    """2 members x 2 ranks (world group only on mooncake-cpu, see groups.py); both ranks of member 1 die
    mid-stream, member 0 keeps answering correctly, both rejoin."""
    with LocalCluster(
        tmp_path,
        members=2,
        ranks_per_member=2,
        collective_timeout_s=0.5,
        reconcile_window_s=4.0,
        join_timeout_s=30.0,
    ) as cluster:
        cluster.start_all()
        client = Client(cluster.pods[0])
        with Stream(client) as stream:
            wait_answers(client, lambda a: not a["degraded"], 30)
            cluster.pods[1].kill()
            cluster.write_membership([0, 1], [])
            wait_answers(client, lambda a: a["active_ranks"] == [0, 1], 30)
            cluster.start(1, rejoin=True)
            cluster.write_membership([0, 1], [2, 3])
            cluster.wait_ready([1], 90)
            wait_answers(client, lambda a: a["active_ranks"] == [0, 1, 2, 3], 30)
        assert not stream.errors, stream.errors[:5]
        logs = cluster.pods[0].logs()
        assert "recover_ranks world [2, 3] -> ProposalStatus.Applied" in logs, logs[-3000:]


@pytest.mark.mooncake_faults
def test_failures_around_a_join(tmp_path: Path) -> None:
    """A malformed snapshot (ignored, logged); a joiner that never comes (the leader gives up after the join
    timeout, logs it, serving goes on degraded); a joiner killed while it waits in its join (the same);
    finally member 0 is lost and member 1 exits with code 3 (EXIT_LEADER_LOST: the operator restarts the
    group)."""
    with LocalCluster(
        tmp_path,
        members=3,
        ranks_per_member=1,
        collective_timeout_s=0.5,
        reconcile_window_s=4.0,
        join_timeout_s=4.0,
    ) as cluster:
        cluster.start_all()
        client = Client(cluster.pods[0])
        with Stream(client) as stream:
            wait_answers(client, lambda a: not a["degraded"], 30)
            cluster.write_membership([], [], raw='{"membership": {"epoch": "x", "activeRanks": 7}')
            wait_for_log(cluster.pods[0], "ignoring malformed snapshot", 10)
            cluster.pods[2].kill()
            cluster.write_membership([0, 1], [])
            wait_answers(client, lambda a: a["active_ranks"] == [0, 1], 30)
            # Nobody comes: bounded wait, clear error, degraded serving goes on.
            cluster.write_membership([0, 1], [2])
            wait_for_log(cluster.pods[0], "not ready within 4.0s; serving degraded", 15)
            wait_answers(client, lambda a: a["active_ranks"] == [0, 1] and a["epoch"] == cluster.epoch, 15)
            # A joiner that dies while it waits in join_group (its join is never completed).
            doomed = cluster.start(2, rejoin=True)
            wait_for_log(doomed, "groups and model ready", 60)
            time.sleep(0.5)
            doomed.kill()
            # Mooncake still reports the dead joiner ready; its heartbeat has stopped, so the leader never
            # sends the RECOVER plan, gives up after the join timeout and serves on degraded.
            cluster.write_membership([0, 1], [2])
            wait_for_log(cluster.pods[0], "not ready within 4.0s; serving degraded", 15, count=2)
            wait_answers(client, lambda a: a["active_ranks"] == [0, 1] and a["epoch"] == cluster.epoch, 30)
            # Survivors keep answering correctly. (A later replacement of rank 2 is refused by Mooncake
            # 0.3.13 for as long as the dead joiner stays registered: "registerAgent rejected: rank already
            # registered and is Healthy"; the operator's join timeout then restarts the group.)
            time.sleep(2)
            wait_answers(client, lambda a: a["active_ranks"] == [0, 1], 30)
        assert not stream.errors, stream.errors[:5]
        # Member 0 lost: not recoverable in place; the others exit with EXIT_LEADER_LOST for a group restart.
        cluster.pods[0].kill()
        assert cluster.pods[1].proc.wait(30) == 3, cluster.pods[1].logs()[-2000:]
        assert "not recoverable in place" in cluster.pods[1].logs()


def wait_for_log(pod: Pod, text: str, timeout_s: float, count: int = 1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pod.logs().count(text) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(
        f"{text!r} not logged by member {pod.member} within {timeout_s}s:\n{pod.logs()[-2000:]}"
    )
