"""The operator stand-in against the worker's own membership sources: what it publishes is what a pod reads
(`eep_worker.membership.FileSource` / `ZmqSource`, validated by the contract), epochs only grow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eep_contract.env import TuningEnv
from eep_contract.v1alpha1 import Membership
from eep_testkit.membership import read_membership
from eep_testkit.standin import MembershipFeed, MembershipFile, OperatorStandIn
from eep_testkit.wait import wait_until
from eep_worker.membership import FileSource, ZmqSource
from eep_worker.protocol import Snapshot


def test_file_stand_in_publishes_the_wire_form_with_growing_epochs(tmp_path: Path) -> None:
    path = tmp_path / "membership.json"
    standin = OperatorStandIn(MembershipFile(path))
    first = standin.publish([2, 0, 1])
    assert first == Membership(epoch=1, active_ranks=[0, 1, 2], joining_ranks=[])
    assert json.loads(path.read_text()) == {"epoch": 1, "activeRanks": [0, 1, 2], "joiningRanks": []}
    second = standin.publish([0, 1], [2])
    assert (second.epoch, standin.epoch, read_membership(path)) == (2, 2, second)
    assert standin.published == [first, second]
    standin.publish_raw("{not json")
    assert standin.epoch == 2 and path.read_text() == "{not json"
    with pytest.raises(ValueError, match="not JSON"):
        read_membership(path)
    assert read_membership(tmp_path / "absent.json") is None
    assert [p.name for p in tmp_path.iterdir()] == ["membership.json"], "no temporary file left behind"


def test_the_worker_file_source_reads_what_the_stand_in_writes(tmp_path: Path) -> None:
    sink = MembershipFile(tmp_path / "m.json")
    standin = OperatorStandIn(sink)
    tuning = sink.point(TuningEnv())
    assert (tuning.membership_source, tuning.membership_file) == ("file", str(tmp_path / "m.json"))
    source = FileSource(Path(tuning.membership_file), poll_s=0.01)
    source.start()
    try:
        standin.publish([0, 1, 2])
        standin.publish([0, 1], [2])
        expected = Snapshot(2, frozenset({0, 1}), frozenset({2}))
        wait_until(lambda: source.latest() == expected, 5, "the file source to read epoch 2")
    finally:
        source.stop()


def test_the_worker_zmq_source_reads_the_feed_even_when_it_subscribes_late() -> None:
    feed = MembershipFeed(repeat_s=0.05)
    standin = OperatorStandIn(feed)
    try:
        standin.publish([0, 1])  # before anyone subscribed: only the re-send can deliver it
        tuning = feed.point(TuningEnv())
        assert (tuning.membership_source, tuning.membership_zmq) == ("zmq", feed.address)
        source = ZmqSource(tuning.membership_zmq)
        source.start()
        try:
            wait_until(lambda: source.latest() == Snapshot(1, frozenset({0, 1}), frozenset()), 5, "epoch 1")
            standin.publish([0], [1])
            wait_until(lambda: source.latest() == Snapshot(2, frozenset({0}), frozenset({1})), 5, "epoch 2")
        finally:
            source.stop()
    finally:
        standin.close()
