"""GET /v1/group: member 0's view of which ranks are live in the group (`eep_contract.wire.GroupView`), the
operator's evidence that a lost node's ranks have left it (issue #13, a kubelet lost while its ranks run on).

The supervisor's part (events in, the view out, over HTTP to the operator's reader) runs without Mooncake;
the last test runs real pods on mooncake-cpu: all ranks live while they serve, a SIGKILLed member's ranks
out of the view within the recovery pause its settings imply, back once its replacement joined.

Before the fix (the worker of 0076d16): "AttributeError: 'Supervisor' object has no attribute 'group_view'",
and on real pods "WaitTimeout: timed out after 30s waiting for every rank live" (member 0 answered /v1/group
with 404, so `fetch_group_view` gave None).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from eep_contract.pause import WINDOW_MARGIN_S
from eep_contract.wire import GROUP_PATH, GroupView
from eep_operator.io.groupview import fetch_group_view
from eep_testkit.pods import HOST, LocalPods, Pod
from eep_testkit.wait import wait_until
from eep_worker import events as E
from eep_worker.serve import Supervisor
from eep_worker.settings import Settings, parse


def _supervisor(member: int) -> Supervisor:
    settings = parse(["serve", "--member-index", str(member), "--rank-count", "2", "--world-size", "4"], {})
    settings = dataclasses.replace(settings, pod_ip=HOST, http_port=0)
    return Supervisor(settings, CollectorRegistry())


@pytest.fixture
def member0() -> Supervisor:
    return _supervisor(0)


def test_member_0_has_no_view_until_the_leader_reports_one(member0: Supervisor) -> None:
    code, reply = member0.group_view()
    assert code == 503 and "error" in reply


def test_the_view_is_the_leaders_last_report(member0: Supervisor) -> None:
    member0.dispatch(E.ServingState(0, [0, 1, 2, 3]))
    member0.dispatch(E.ServingState(2, [3, 0, 1]))
    code, reply = member0.group_view()
    assert code == 200
    view = GroupView.model_validate(reply)
    assert (view.epoch, view.world_size, view.live_ranks) == (2, 4, [0, 1, 3])
    assert view.updated_seconds_ago < 1.0


def test_the_age_counts_from_rank_0s_last_report(member0: Supervisor) -> None:
    member0.dispatch(E.ServingState(1, [0, 1, 2, 3]))
    member0.leader_heard_at -= 30.0  # the last report, 30 s ago
    member0.dispatch(E.StepCounts(1, 5, 0, 0))  # another rank's steps say nothing of the leader
    assert GroupView.model_validate(member0.group_view()[1]).updated_seconds_ago >= 30.0
    member0.dispatch(E.StepCounts(0, 5, 0, 0))
    view = GroupView.model_validate(member0.group_view()[1])
    assert view.updated_seconds_ago < 1.0
    assert view.live_ranks == [0, 1, 2, 3]


def test_other_members_do_not_serve_it() -> None:
    member1 = _supervisor(1)
    member1.dispatch(E.ServingState(1, [0, 1]))
    assert member1.group_view()[0] == 404


@pytest.fixture
def served(member0: Supervisor) -> Iterator[tuple[Supervisor, int]]:
    server = member0.http_server()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield member0, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_the_operators_reader_gets_the_view_over_http(served: tuple[Supervisor, int]) -> None:
    supervisor, port = served
    assert fetch_group_view(HOST, port, 2.0) is None  # 503: not known yet
    supervisor.dispatch(E.ServingState(3, [0, 2]))
    view = fetch_group_view(HOST, port, 2.0)
    assert view is not None
    assert (view.epoch, view.live_ranks) == (3, [0, 2])


# ---------------------------------------------------------------- real pods on mooncake-cpu


def _view(pod: Pod) -> GroupView | None:
    return fetch_group_view(HOST, pod.http_port, 2.0)


def _pod_settings(cluster: LocalPods, member: int) -> Settings:
    """The worker's settings as the member's pod parses them from its environment."""
    return parse(["serve"], cluster.env_of(member, cluster.pods[member].http_port))


def _wait_view(
    pod: Pod, what: str, check: Callable[[GroupView], bool], timeout_s: float
) -> tuple[GroupView, float]:
    """Poll member 0's view until ``check(view)``; returns that view and the seconds it took."""
    t0 = time.monotonic()

    def matching() -> GroupView | None:
        view = _view(pod)
        return view if view is not None and check(view) else None

    view = wait_until(
        matching,
        timeout_s,
        what,
        interval_s=0.05,
        describe=lambda: f"view {_view(pod)}\n{pod.logs()[-2000:]}",
    )
    return view, time.monotonic() - t0


@pytest.mark.mooncake
@pytest.mark.mooncake_faults
@pytest.mark.timeout(400)
def test_a_killed_members_ranks_leave_the_view_and_their_replacement_returns(tmp_path: Path) -> None:
    """2 members x 2 ranks. Nothing tells the leader that member 1 died (the operator waits for this view):
    the group finds out by itself, from a failed collective and the step fence."""
    with LocalPods(
        tmp_path,
        members=2,
        ranks_per_member=2,
        collective_timeout_s=0.5,
        reconcile_window_s=4.0,
        join_timeout_s=150.0,  # a replacement's start-up (torch, Mooncake) takes 40 s on a loaded 2-core host
    ) as cluster:
        cluster.start_all()
        leader = cluster.pods[0]
        assert cluster.pods[1].get(GROUP_PATH)[0] == 404
        # Epoch 0 (rank 0's report before its first plan), then the stand-in's first snapshot's.
        view, _ = _wait_view(
            leader, "every rank live", lambda v: v.live_ranks == [0, 1, 2, 3] and v.epoch == cluster.epoch, 30
        )
        assert view.world_size == 4
        s = _pod_settings(cluster, 0)
        # Rank 0 reports its steps at least every `QueueSink` flush (0.5 s) or idle step, the longer.
        fresh_s = max(0.5, s.idle_step_s) + WINDOW_MARGIN_S
        for _ in range(10):
            now = _view(leader)
            assert now is not None and now.live_ranks == [0, 1, 2, 3], now
            assert now.updated_seconds_ago < fresh_s, now
            time.sleep(0.1)

        # Kill -> the fence passed on every survivor within the pause; then one plan (at most an idle step
        # later) carries the new live set to the supervisor.
        bound_s = s.pause.pause_s + s.idle_step_s + WINDOW_MARGIN_S
        cluster.pods[1].kill()
        view, took = _wait_view(
            leader, "member 1's ranks gone", lambda v: v.live_ranks == [0, 1], 3 * bound_s
        )
        assert took <= bound_s, f"ranks 2, 3 left the view after {took:.2f}s, bound {bound_s:.2f}s"
        assert view.epoch == cluster.epoch  # the group's own finding: no new snapshot was published

        cluster.start(1, rejoin=True)
        cluster.write_membership([0, 1], [2, 3])
        cluster.wait_ready([1], 150)
        # Ready comes after the metadata broadcast of the RECOVER step; the next plan lists the joiners.
        view, took = _wait_view(leader, "ranks 2, 3 back", lambda v: v.live_ranks == [0, 1, 2, 3], 30)
        assert took <= s.idle_step_s + WINDOW_MARGIN_S, f"back {took:.2f}s after /ready"
        assert view.epoch == cluster.epoch
        cluster.write_membership([0, 1, 2, 3], [])
        _wait_view(leader, "the new epoch", lambda v: v.epoch == cluster.epoch and len(v.live_ranks) == 4, 30)
