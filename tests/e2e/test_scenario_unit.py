"""Unit tests of the demo's pure helpers (no cluster): status samples from raw CR objects, the choice of the
member to kill, the live view's progress line. (The CR it applies and the rule-window scaling are the test
kit's: tests/testkit.)"""

from __future__ import annotations

import random

import pytest

from eep_demo.cluster import sample_of
from eep_demo.live import progress_line
from eep_demo.scenario import pick_member


def test_sample_of_a_raw_cr() -> None:
    obj = {
        "spec": {"nodes": 2, "ranksPerNode": 1},
        "status": {
            "phase": "Degraded",
            "worldSize": 2,
            "membership": {"epoch": 7, "activeRanks": [0]},
            "members": [
                {"index": 0, "state": "Healthy", "podUid": "a", "restarts": 0},
                {"index": 1, "state": "Failed", "podUid": "b", "restarts": 2},
            ],
        },
    }
    s = sample_of(obj, 3.0)
    assert (s.t, s.phase, s.epoch, s.active_ranks, s.world_size) == (3.0, "Degraded", 7, 1, 2)
    assert s.member(1) is not None and s.member(1).restarts == 2  # type: ignore[union-attr]
    assert not s.full
    empty = sample_of({"spec": {"nodes": 4, "ranksPerNode": 1}}, 0.0)
    assert empty.world_size == 4 and empty.epoch == 0 and not empty.full


def test_pick_member_never_picks_member_zero() -> None:
    rng = random.Random(0)
    assert {pick_member(4, None, rng) for _ in range(100)} == {1, 2, 3}
    assert pick_member(4, 2, rng) == 2
    with pytest.raises(RuntimeError, match="not a non-zero member"):
        pick_member(4, 0, rng)


def test_progress_line() -> None:
    line = progress_line("recovering", 12.34, {"sent": 5, "ok": 4, "wrong": 0, "no_answer": 1})
    assert line.plain == "recovering   12.3s  requests 5  answers ok 4  unanswered (retried) 1  wrong 0"
