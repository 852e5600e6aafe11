"""The pod launcher without starting a pod: the environment it renders is the contract's, and the worker's
own settings parser reads back exactly the pod that was meant (member, ranks, ports, timeouts, membership
source)."""

from __future__ import annotations

import sys
from pathlib import Path

from eep_contract.env import TuningEnv
from eep_testkit.membership import read_membership
from eep_testkit.pods import LocalPods, worker_command
from eep_testkit.standin import MembershipFeed, OperatorStandIn
from eep_worker.settings import parse


def test_the_worker_reads_back_the_rendered_pod(tmp_path: Path) -> None:
    pods = LocalPods(
        tmp_path,
        members=3,
        ranks_per_member=2,
        collective_timeout_s=0.5,
        reconcile_window_s=4.0,
        join_timeout_s=7.0,
        tuning=TuningEnv(warmup_delay_s=1.5),
    )
    snapshot = read_membership(tmp_path / "membership.json")
    assert snapshot is not None and (snapshot.epoch, snapshot.active_ranks) == (1, [0, 1, 2, 3, 4, 5])
    s = parse(["serve", "--rejoin"], pods.env_of(2, 31234))
    assert (s.cluster.member_index, s.cluster.first_rank, s.cluster.rank_count, s.cluster.world_size) == (
        2,
        4,
        2,
        6,
    )
    assert (s.cluster.coordinator_host, s.cluster.coordinator_port) == ("127.0.0.1", pods.coordinator_port)
    assert s.cluster.rendezvous_port == pods.tuning.rendezvous_port != 0
    assert (s.timeouts.collective_timeout_s, s.timeouts.reconcile_window_s, s.timeouts.join_timeout_s) == (
        0.5,
        4.0,
        7.0,
    )
    assert (s.backend, s.pod_ip, s.http_port, s.rejoin, s.warmup_delay_s) == (
        "mooncake-cpu",
        "127.0.0.1",
        31234,
        True,
        1.5,
    )
    assert (s.membership_source, s.membership_file) == ("file", str(tmp_path / "membership.json"))
    assert pods.ranks_of(2) == [4, 5]
    pods.write_membership([0, 1, 2, 3], [4, 5])
    assert pods.epoch == 2
    pods.stop()


def test_pods_can_read_a_zmq_feed(tmp_path: Path) -> None:
    pods = LocalPods(tmp_path, 2, 1, standin=OperatorStandIn(MembershipFeed()))
    try:
        s = parse(["serve"], pods.env_of(0, 1))
        assert (s.membership_source, s.membership_zmq) == (
            "zmq",
            pods.standin.sink.point(TuningEnv()).membership_zmq,
        )
    finally:
        pods.stop()


def test_worker_command() -> None:
    assert worker_command() == [sys.executable, "-m", "eep_worker", "serve"]
    assert worker_command(rejoin=True)[-1] == "--rejoin"
