"""protocol.py: plan encoding/validation and the leader's membership decisions (pure, table-driven)."""

from __future__ import annotations

import numpy as np
import pytest

from eep_worker import protocol as P

W = 4
ALL = frozenset(range(W))
BASE = P.StepPlan(epoch=3, step=10, kind=P.Kind.BATCH, tokens=(5, 6, 7), live=ALL)


def test_encode_is_fixed_size_and_round_trips() -> None:
    for plan in (
        BASE,
        BASE._replace(tokens=()),
        P.StepPlan(4, 11, P.Kind.RECOVER, (), frozenset({0, 1}), frozenset({2}), 1),
        P.StepPlan(4, 12, P.Kind.FENCE, (), ALL, failed=frozenset({2, 3})),
    ):
        vec = P.encode(plan, max_tokens=8)
        assert len(vec) == P.HEADER + 8
        assert P.decode(vec, world_size=W, min_epoch=plan.epoch, after_step=plan.step - 1) == plan


def test_encode_rejects_too_many_tokens() -> None:
    with pytest.raises(ValueError, match="exceed"):
        P.encode(BASE._replace(tokens=tuple(range(9))), max_tokens=8)


def test_encode_into_writes_what_encode_returns_over_a_used_buffer() -> None:
    buf = np.full(P.HEADER + 8, 77, dtype=np.int64)  # what an earlier, longer plan left behind
    for plan in (
        BASE._replace(tokens=tuple(range(8))),
        BASE,
        BASE._replace(tokens=()),
    ):
        P.encode_into(plan, buf)
        assert buf.tolist() == P.encode(plan, max_tokens=8)
    with pytest.raises(ValueError, match="exceed"):
        P.encode_into(BASE._replace(tokens=tuple(range(9))), buf)


def test_decode_header_checks_the_same_and_leaves_the_tokens_out() -> None:
    vec = P.encode(BASE, 8)
    plan = P.decode_header(vec[: P.HEADER], capacity=8, world_size=W, min_epoch=3, after_step=9)
    assert plan == BASE._replace(tokens=())
    with pytest.raises(P.PlanError, match="token count"):
        P.decode_header(vec[: P.HEADER], capacity=2, world_size=W, min_epoch=0, after_step=0)
    with pytest.raises(P.PlanError, match="stale step"):
        P.decode_header(vec[: P.HEADER], capacity=8, world_size=W, min_epoch=0, after_step=10)


def _patched(index: int, value: int) -> list[int]:
    vec = P.encode(BASE, max_tokens=8)
    vec[index] = value
    return vec


@pytest.mark.parametrize(
    ("vector", "min_epoch", "after_step", "message"),
    [
        (_patched(0, 0), 0, 0, "bad magic"),
        ([P.MAGIC, 1], 0, 0, "bad magic"),
        (P.encode(BASE, 8), 4, 0, "stale epoch"),
        (P.encode(BASE, 8), 3, 10, "stale step"),
        (P.encode(BASE, 8), 3, 11, "stale step"),
        (_patched(3, 9), 0, 0, "unknown kind"),
        (_patched(4, 9), 0, 0, "token count"),
        (_patched(4, -1), 0, 0, "token count"),
        (_patched(5, 0), 0, 0, "masks"),
        (_patched(5, 1 << W), 0, 0, "masks"),
        (_patched(6, -1), 0, 0, "masks"),
        (_patched(6, 1 << (W + 1)), 0, 0, "masks"),
        # RECOVER without joining ranks, or with a source that is joining or not live
        (P.encode(BASE._replace(kind=P.Kind.RECOVER), 8), 0, 0, "recover plan"),
        (
            P.encode(P.StepPlan(4, 11, P.Kind.RECOVER, (), frozenset({0, 1}), frozenset({1}), 1), 8),
            0,
            0,
            "recover plan",
        ),
        (
            P.encode(P.StepPlan(4, 11, P.Kind.RECOVER, (), frozenset({0, 1}), frozenset({2}), 3), 8),
            0,
            0,
            "recover plan",
        ),
        # FENCE names the failed ranks; no other kind does; rank 0 (the leader) is never fenced
        (P.encode(BASE._replace(kind=P.Kind.FENCE), 8), 0, 0, "FENCE plan with failed"),
        (P.encode(BASE._replace(failed=frozenset({2})), 8), 0, 0, "BATCH plan with failed"),
        (
            P.encode(P.StepPlan(4, 11, P.Kind.FENCE, (), ALL, failed=frozenset({0, 2})), 8),
            0,
            0,
            "failed ranks",
        ),
        (_patched(8, 1 << W), 0, 0, "masks"),
        (_patched(8, -1), 0, 0, "masks"),
    ],
)
def test_decode_rejects(vector: list[int], min_epoch: int, after_step: int, message: str) -> None:
    with pytest.raises(P.PlanError, match=message):
        P.decode(vector, world_size=W, min_epoch=min_epoch, after_step=after_step)


def test_decode_accepts_a_newer_epoch_and_any_later_step() -> None:
    plan = P.decode(P.encode(BASE, 8), world_size=W, min_epoch=1, after_step=2)
    assert plan.step == 10 and plan.epoch == 3 and plan.tokens == (5, 6, 7)


def test_masks() -> None:
    assert P.unmask(P.mask(frozenset({0, 3, 61}))) == {0, 3, 61}
    with pytest.raises(ValueError):
        P.mask(frozenset({62}))


@pytest.mark.parametrize(
    ("live", "joining", "epoch", "expected"),
    [
        ({0, 1, 2}, {3}, 0, 0),
        ({0, 1, 2}, {3}, 1, 1),
        ({0, 1, 2}, {3}, 5, 2),
        ({0, 1, 3}, {3}, 1, 1),  # a joining rank is never the source
        ({0}, set(), 7, 0),
    ],
)
def test_broadcast_source_rotates_over_healthy_ranks(
    live: set[int], joining: set[int], epoch: int, expected: int
) -> None:
    assert P.broadcast_source(frozenset(live), frozenset(joining), epoch) == expected


def test_broadcast_source_needs_a_healthy_rank() -> None:
    with pytest.raises(ValueError):
        P.broadcast_source(frozenset({2}), frozenset({2}), 0)


def snap(epoch: int, active: set[int], joining: set[int]) -> P.Snapshot:
    return P.Snapshot(epoch, frozenset(active), frozenset(joining))


LIVE3 = frozenset({0, 1, 2})


@pytest.mark.parametrize(
    ("name", "view", "snapshot", "ready", "now", "expected"),
    [
        ("no snapshot", P.LeaderView(2, LIVE3), None, False, 0.0, P.JoinDecision(2, frozenset(), None)),
        ("stale", P.LeaderView(2, LIVE3), snap(1, {0}, {3}), True, 0.0, P.JoinDecision(2, frozenset(), None)),
        (
            "same epoch",
            P.LeaderView(2, LIVE3),
            snap(2, {0}, {3}),
            True,
            0,
            P.JoinDecision(2, frozenset(), None),
        ),
        (
            "newer, no join",
            P.LeaderView(2, LIVE3),
            snap(3, {0, 1, 2}, set()),
            False,
            0.0,
            P.JoinDecision(3, frozenset(), None),
        ),
        (
            "joining already live",
            P.LeaderView(2, LIVE3),
            snap(3, {0, 1}, {2}),
            False,
            0.0,
            P.JoinDecision(3, frozenset(), None),
        ),
        (
            "join pending starts",
            P.LeaderView(2, LIVE3),
            snap(3, {0, 1, 2}, {3}),
            False,
            5.0,
            P.JoinDecision(2, frozenset(), 5.0),
        ),
        (
            "join pending goes on",
            P.LeaderView(2, LIVE3, 5.0),
            snap(3, {0, 1, 2}, {3}),
            False,
            9.0,
            P.JoinDecision(2, frozenset(), 5.0),
        ),
        (
            "joiner ready: recover",
            P.LeaderView(2, LIVE3, 5.0),
            snap(3, {0, 1, 2}, {3}),
            True,
            9.0,
            P.JoinDecision(3, frozenset({3}), None),
        ),
        (
            "timeout: adopt without",
            P.LeaderView(2, LIVE3, 5.0),
            snap(3, {0, 1, 2}, {3}),
            False,
            15.0,
            P.JoinDecision(3, frozenset(), None, gave_up=frozenset({3})),
        ),
    ],
)
def test_decide_membership(  # noqa: PLR0917 - one parameter per table column
    name: str,
    view: P.LeaderView,
    snapshot: P.Snapshot | None,
    ready: bool,
    now: float,
    expected: P.JoinDecision,
) -> None:
    assert P.decide_membership(view, snapshot, ready=ready, now=now, join_timeout_s=10.0) == expected, name


def test_decode_header_checks_membership_fields_every_time_though_it_caches_them() -> None:
    # The kind and rank fields are checked once per distinct value (cached); a cache that kept an answer
    # across worlds, or kept nothing for a bad header, would let a plan through or reject it only once.
    vec = P.encode(BASE, 8)
    assert P.decode_header(vec[: P.HEADER], capacity=8, world_size=W, min_epoch=0, after_step=0).live == ALL
    for _ in range(2):
        with pytest.raises(P.PlanError, match="masks"):
            P.decode_header(vec[: P.HEADER], capacity=8, world_size=W - 1, min_epoch=0, after_step=0)
    bad = P.encode(P.StepPlan(4, 11, P.Kind.RECOVER, (), frozenset({0, 1}), frozenset({1}), 1), 8)
    for _ in range(2):
        with pytest.raises(P.PlanError, match="recover plan"):
            P.decode_header(bad[: P.HEADER], capacity=8, world_size=W, min_epoch=0, after_step=0)
