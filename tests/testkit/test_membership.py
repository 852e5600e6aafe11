"""Membership readers: every shape of a CR (raw JSON) that the demo and the tests read, parsed by the
contract."""

from __future__ import annotations

from typing import Any

import pytest

from eep_contract.v1alpha1 import Membership
from eep_testkit.membership import at_full_capacity, membership_of

SNAP = {"epoch": 4, "activeRanks": [0, 1], "joiningRanks": [2]}
WANT = Membership(epoch=4, active_ranks=[0, 1], joining_ranks=[2])


@pytest.mark.parametrize(
    "obj", [{"status": {"membership": SNAP}}, {"membership": SNAP}, SNAP], ids=["cr", "status", "snapshot"]
)
def test_membership_of_every_shape(obj: dict[str, Any]) -> None:
    assert membership_of(obj) == WANT


@pytest.mark.parametrize("obj", [None, {}, {"spec": {}}, {"status": {}}, {"status": {"membership": {}}}])
def test_no_membership_yet_is_epoch_zero(obj: dict[str, Any] | None) -> None:
    assert membership_of(obj) == Membership()


def test_a_membership_that_does_not_parse_raises() -> None:
    with pytest.raises(ValueError, match="both active and joining"):
        membership_of({"status": {"membership": {"epoch": 1, "activeRanks": [0], "joiningRanks": [0]}}})


@pytest.mark.parametrize(
    ("status", "full"),
    [
        ({"phase": "Running", "worldSize": 2, "membership": {"epoch": 3, "activeRanks": [0, 1]}}, True),
        ({"phase": "Running", "worldSize": 3, "membership": {"epoch": 3, "activeRanks": [0, 1]}}, False),
        ({"phase": "Degraded", "worldSize": 2, "membership": {"epoch": 3, "activeRanks": [0, 1]}}, False),
        ({"phase": "Running", "membership": {"epoch": 3, "activeRanks": []}}, False),
        ({}, False),
    ],
)
def test_at_full_capacity(status: dict[str, Any], full: bool) -> None:
    assert at_full_capacity({"status": status}) is full
