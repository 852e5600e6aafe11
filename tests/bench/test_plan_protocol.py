"""bench/plan_protocol.py: its numpy reference encodes what the runtime does, and it measures both."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import plan_protocol

from eep_worker import protocol as P


def test_the_reference_writes_what_encode_into_writes() -> None:
    # A faster encoder is only comparable if the reference does the same work: same bytes, same padding.
    for n in (64, 3, 0):
        plan = P.StepPlan(2, 9, P.Kind.BATCH, tuple(range(100, 100 + n)), frozenset({0, 1}))
        ours, reference = np.full(P.HEADER + 64, 77, np.int64), np.full(P.HEADER + 64, 77, np.int64)
        P.encode_into(plan, ours)
        plan_protocol.numpy_encode_into(plan, reference)
        assert ours.tolist() == reference.tolist() == P.encode(plan, 64)


def test_measures_every_variant() -> None:
    result = plan_protocol.measure(number=50, repeats=2)
    assert set(result["us_per_call_best_of_repeats"]) == {
        "encode_struct",
        "encode_numpy",
        "decode_cached",
        "decode_uncached",
    }
    assert result["calls_per_repeat"] == 50 and result["repeats"] == 2
