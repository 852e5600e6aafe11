"""bench/operator_scale.py: what its watcher records (no cluster needed)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import operator_scale

from eep_contract.v1alpha1 import MANAGED_BY_VALUE, Annotations, Labels


def pod(uid: str, member: int, terminated: bool = False, join: bool = True) -> dict[str, Any]:
    state = {"terminated": {"exitCode": 137}} if terminated else {"running": {}}
    return {
        "metadata": {
            "uid": uid,
            "labels": {
                Labels.CLUSTER: "c000",
                Labels.MEMBER: str(member),
                Labels.MANAGED_BY: MANAGED_BY_VALUE,
            },
            "annotations": {Annotations.JOIN: "true"} if join else {},
        },
        "status": {"containerStatuses": [{"state": state}]},
    }


def test_a_reconnected_watch_keeps_the_first_sight_of_a_replacement() -> None:
    """Before the fix: the relist's ADDED overwrote `created_wall` (1070.0 instead of 1000.0), so
    created-after-backoff grew with the run's length."""
    w = operator_scale.Watcher(None)
    w.saw_pod("ADDED", pod("new", 3), now=10.0, wall=1000.0)
    w.saw_pod("MODIFIED", pod("new", 3), now=11.0, wall=1001.0)
    # The watch timed out and reconnected: every pod comes again as ADDED.
    w.saw_pod("ADDED", pod("new", 3), now=70.0, wall=1070.0)
    assert w.created_wall == {"new": 1000.0}
    assert w.created == {("c000", 3): [(10.0, "new")]}


def test_termination_is_recorded_once() -> None:
    w = operator_scale.Watcher(None)
    w.saw_pod("MODIFIED", pod("old", 2, terminated=True, join=False), now=5.0, wall=500.0)
    w.saw_pod("ADDED", pod("old", 2, terminated=True, join=False), now=65.0, wall=560.0)
    assert w.terminated == {"old": 5.0}
    assert w.created == {}  # only pods started with the join flag are replacements
