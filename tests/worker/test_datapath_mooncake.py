"""The data path on real mooncake-cpu, pods as real processes (`eep_testkit.pods`), every answer checked.

`Staged` forced end to end: every rank probes the staged route at start-up (on mooncake-cpu a copy and the
same CPU collective as the device route, so this runs the code path, not the GPU's host sync), serves through
it, survives a SIGKILL of a member and admits the replacement, which takes the group's choice from the
TCPStore; not one answer is wrong or missing. `Auto` on mooncake-cpu probes the device route and keeps it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from eep_contract.env import DataPath
from eep_testkit.client import CheckingClient
from eep_testkit.pods import LocalPods
from eep_testkit.stream import Stream

pytestmark = [pytest.mark.mooncake, pytest.mark.timeout(300)]


@pytest.mark.mooncake_faults
def test_staged_path_serves_through_a_kill_and_a_rejoin(tmp_path: Path) -> None:
    with LocalPods(
        tmp_path,
        members=3,
        ranks_per_member=1,
        collective_timeout_s=0.5,
        reconcile_window_s=4.0,
        join_timeout_s=30.0,
        data_path=DataPath.STAGED,
    ) as cluster:
        cluster.start_all()
        for member in range(3):
            logs = cluster.pods[member].logs()
            assert "data path Staged probe passed here" in logs, logs[-2000:]
            assert "data path Staged: staged route" in logs, logs[-2000:]
            assert "data path Device probe" not in logs
        client = CheckingClient(cluster.pods[0])
        with Stream(client, pause_s=0.02) as stream:
            stream.wait_answer(lambda a: not a["degraded"], 30)
            cluster.kill_and_replace(2, stream)
            stream.wait_answer(lambda a: a["active_ranks"] == [0, 1, 2], 30)  # and one more after it
        assert not stream.errors, stream.errors[:5]
        assert len(stream.answered) >= 3
        joiner = cluster.pods[2].logs()
        assert "data path Staged: staged route" in joiner and "the group's choice (joined)" in joiner, joiner[
            -2000:
        ]
        assert "recovery succeeded" in cluster.pods[0].logs()


def test_auto_keeps_the_device_route_where_it_works(tmp_path: Path) -> None:
    with LocalPods(tmp_path, members=2, ranks_per_member=1) as cluster:
        cluster.start_all()
        for member in range(2):
            logs = cluster.pods[member].logs()
            assert "data path Device probe passed here" in logs, logs[-2000:]
            assert "data path Device: device route" in logs and "requested Auto" in logs, logs[-2000:]
        answer = CheckingClient(cluster.pods[0]).infer([1, 2, 3], timeout=60)
        assert answer["active_ranks"] == [0, 1]
