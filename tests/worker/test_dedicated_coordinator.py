"""A dedicated coordinator (issue #19): rank 0 alone in member 0's pod, plans every step and serves nothing;
every serving member, the one holding rank 1 (whose output answers each step) included, dies and comes back
in place while the answers go on, none wrong or missing. Real mooncake-cpu, pods as real processes
(`eep_testkit.pods`), every answer checked against the reference model.

Before: the worker had no such layout (`EEP_COORDINATOR` unknown; rank 0 always served, and losing member 0
was a whole-group restart)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eep_testkit.client import CheckingClient
from eep_testkit.pods import LocalPods
from eep_testkit.stream import Stream

pytestmark = [pytest.mark.mooncake, pytest.mark.timeout(400)]

JOIN_TIMEOUT_S = 60.0
"""The worker's join timeout (120 s by default): 30 s once ran out on a loaded CI host, the joiner still
waiting in Mooncake's `join_group` (whose own hold on a dead rank's registration is 30 s)."""


def serve_and_replace(tmp_path: Path, ranks_per_member: int, killed: list[int]) -> None:
    """Three members (the coordinator and two serving members of `ranks_per_member` ranks) under a checking
    stream; each member in `killed`, in turn, SIGKILLed and replaced (`LocalPods.kill_and_replace`); no
    answer wrong or missing, and the coordinator's leader recovered."""
    with LocalPods(
        tmp_path,
        members=3,
        ranks_per_member=ranks_per_member,
        collective_timeout_s=0.5,
        reconcile_window_s=4.0,
        join_timeout_s=JOIN_TIMEOUT_S,
        dedicated=True,
    ) as cluster:
        cluster.start_all()
        coordinator = cluster.pods[0].logs()
        assert "groups and model ready" in coordinator, coordinator[-2000:]
        client = CheckingClient(cluster.pods[0])
        with Stream(client, pause_s=0.02) as stream:
            stream.wait_answer(lambda a: not a["degraded"], 30)
            for member in killed:
                cluster.kill_and_replace(member, stream)
        assert not stream.errors, stream.errors[:5]
        assert len(stream.answered) >= 5
        assert "recovery succeeded" in cluster.pods[0].logs()


@pytest.mark.mooncake_faults
def test_every_serving_member_recovers_in_place(tmp_path: Path) -> None:
    serve_and_replace(tmp_path, 1, [1, 2])  # member 1 holds rank 1: the output rank


@pytest.mark.mooncake_faults
def test_a_serving_member_of_several_ranks_recovers_in_place(tmp_path: Path) -> None:
    """Members of 2 ranks (world 5: rank 0, then ranks 1-2 and 3-4): member 1, which holds the output rank,
    dies and comes back with both its ranks while member 2 serves every expert (each is placed on two
    serving members)."""
    serve_and_replace(tmp_path, 2, [1])
