"""Unit tests of eep_demo.timeline with synthetic timelines (no cluster)."""

from __future__ import annotations

import math

import pytest

from eep_demo.timeline import (
    Attempt,
    AttemptResult,
    MemberSample,
    StatusSample,
    allowance,
    capacity_lost,
    count_requests,
    detect_time,
    epoch_regressions,
    full_time,
    no_serving,
    recovery_metrics,
    resume_time,
)

OK, WRONG, NONE = AttemptResult.OK, AttemptResult.WRONG, AttemptResult.NO_ANSWER


def sample(
    t: float, states: list[str], active: int, epoch: int = 1, uids: list[str] | None = None
) -> StatusSample:
    uids = uids or [f"u{i}" for i in range(len(states))]
    members = tuple(MemberSample(i, s, uids[i], 0) for i, s in enumerate(states))
    return StatusSample(t, "Running", epoch, active, len(states), members)


H, F, R, J = "Healthy", "Failed", "Restarting", "Joining"


def steady(start: float, end: float, every: float, latency: float = 0.05, prefix: str = "s") -> list[Attempt]:
    """A correct answer completing every `every` seconds in [start, end)."""
    out = []
    t = start
    i = 0
    while t < end:
        out.append(Attempt(f"{prefix}{i}", t - latency, t, OK))
        t += every
        i += 1
    return out


# A per-member recovery: kill at 10; status sees member 2 Failed at 11.5, Joining at 14, Healthy at 20.
PER_MEMBER = [
    sample(9.0, [H, H, H, H], 4, 3),
    sample(10.5, [H, H, H, H], 4, 3),
    sample(11.5, [H, H, F, H], 3, 4),
    sample(13.0, [H, H, R, H], 3, 4, ["u0", "u1", "v2", "u3"]),
    sample(14.0, [H, H, J, H], 3, 5, ["u0", "u1", "v2", "u3"]),
    sample(20.0, [H, H, H, H], 4, 6, ["u0", "u1", "v2", "u3"]),
    sample(21.0, [H, H, H, H], 4, 6, ["u0", "u1", "v2", "u3"]),
]


def test_detect_is_the_first_sample_off_the_old_pod() -> None:
    assert detect_time(PER_MEMBER, 10.0, 2) == 11.5
    assert detect_time(PER_MEMBER, 10.0, 1) is None  # member 1 never left Healthy


def test_detect_counts_a_new_pod_uid_when_failed_was_missed() -> None:
    samples = [sample(9.0, [H, H], 2), sample(12.0, [H, H], 2, uids=["u0", "new"])]
    assert detect_time(samples, 10.0, 1) == 12.0


def test_detect_ignores_samples_before_the_kill() -> None:
    samples = [sample(9.0, [H, F], 1), sample(9.5, [H, H], 2, uids=["u0", "x"]), sample(11.0, [H, R], 1)]
    assert detect_time(samples, 10.0, 1) == 11.0


def test_full_needs_every_member_healthy_and_every_rank_active_after_detection() -> None:
    assert full_time(PER_MEMBER, 11.5) == 20.0
    assert full_time(PER_MEMBER, None) is None
    # All Healthy but a rank not yet active is not full.
    samples = [sample(12.0, [H, H], 1), sample(13.0, [H, H], 2)]
    assert full_time(samples, 11.0) == 13.0


def test_resume_is_the_first_correct_answer_to_a_request_sent_after_the_kill() -> None:
    attempts = [
        Attempt("a", 9.9, 10.2, OK),  # sent before the kill: proves nothing
        Attempt("b", 10.1, 10.3, NONE),
        Attempt("b", 10.5, 12.4, OK),
        Attempt("c", 10.6, 12.3, OK),
        Attempt("d", 10.0, 12.2, WRONG),
    ]
    assert resume_time(attempts, 10.0) == 12.3
    assert resume_time([Attempt("a", 9.0, 11.0, OK)], 10.0) is None


def test_allowance_is_twice_the_p90_baseline_latency_with_a_floor() -> None:
    attempts = steady(0.0, 10.0, 0.1, latency=0.05)
    assert allowance(attempts, 10.0) == pytest.approx(0.5)  # 2 * 0.05 is below the floor
    slow = steady(0.0, 10.0, 0.4, latency=0.8)
    assert allowance(slow, 10.0) == pytest.approx(1.6)
    assert allowance(slow, 10.0, baseline_s=2.0, min_allowance_s=2.0) == pytest.approx(2.0)
    # One slow request among 25 is above the 90th percentile: it does not widen the allowance.
    assert allowance([*slow, Attempt("slow", 0.0, 9.99, OK)], 10.0) == pytest.approx(1.6)
    # Failed and wrong attempts do not count, nor answers outside the baseline window.
    assert allowance([Attempt("x", 0, 9.0, NONE), Attempt("y", 0, 9.5, WRONG)], 10.0) == 0.5
    assert allowance([Attempt("old", -20.0, -15.0, OK)], 10.0) == 0.5


def test_no_serving_counts_only_gaps_beyond_the_allowance() -> None:
    attempts = steady(0.0, 10.0, 0.1) + steady(13.0, 30.0, 0.1, prefix="p")
    outage, longest = no_serving(attempts, 10.0, 30.0, 0.5)
    # Gap 10.0 -> 13.0 (the first post-kill completion), minus the allowance.
    assert outage == pytest.approx(2.5)
    assert longest == pytest.approx(3.0)


def test_no_serving_counts_an_open_gap_at_the_end() -> None:
    attempts = steady(0.0, 10.0, 0.1)
    outage, longest = no_serving(attempts, 10.0, 20.0, 0.5)
    assert outage == pytest.approx(9.5) and longest == pytest.approx(10.0)


def test_no_serving_is_zero_when_answers_keep_coming() -> None:
    attempts = steady(0.0, 30.0, 0.2)
    outage, longest = no_serving(attempts, 10.0, 30.0, 0.5)
    assert outage == 0.0 and longest <= 0.2 + 1e-9


def test_capacity_lost_integrates_missing_ranks() -> None:
    # kill 10 -> detect 11.5: 1 rank x 1.5 s; 11.5 -> 20: 3 of 4 active for 8.5 s.
    lost = capacity_lost(PER_MEMBER, 10.0, 11.5, 20.0, killed_ranks=1)
    assert lost == pytest.approx(1.5 + 8.5)
    assert capacity_lost(PER_MEMBER, 10.0, None, 20.0, 1) is None
    assert capacity_lost(PER_MEMBER, 10.0, 11.5, None, 1) is None


def test_capacity_lost_of_a_group_restart_is_the_whole_world() -> None:
    samples = [
        sample(9.0, [H, H, H, H], 4),
        sample(11.0, ["Pending"] * 4, 0),
        sample(31.0, [H, H, H, H], 4),
    ]
    assert capacity_lost(samples, 10.0, 11.0, 31.0, killed_ranks=1) == pytest.approx(1.0 + 4 * 20.0)


def test_count_requests_separates_retries_from_failures_and_wrong_answers() -> None:
    attempts = [
        Attempt("a", 0, 1, OK),
        Attempt("b", 0, 1, NONE),
        Attempt("b", 1, 2, NONE),
        Attempt("b", 2, 3, OK),  # retried, then answered: not lost
        Attempt("c", 0, 1, NONE),  # never answered: failed
        Attempt("d", 0, 1, WRONG),
        Attempt("e", 0, 1, WRONG),
        Attempt("e", 1, 2, OK),  # a wrong answer is not excused by a later right one
    ]
    counts = count_requests(attempts, ["a", "b", "c", "d", "e", "f"])
    assert (counts.sent, counts.ok, counts.wrong, counts.failed) == (6, 2, 2, 2)  # f: no attempt at all
    assert counts.attempts == 8 and counts.retries == 3


def test_epoch_regressions() -> None:
    assert epoch_regressions(PER_MEMBER) == []
    bad = [sample(1, [H], 1, 5), sample(2, [H], 1, 4), sample(3, [H], 1, 6)]
    assert epoch_regressions(bad) == [(2, 5, 4)]


def test_recovery_metrics_of_a_whole_per_member_recovery() -> None:
    attempts = steady(0.0, 10.0, 0.1) + steady(12.0, 25.0, 0.1, prefix="p")
    attempts.append(Attempt("late", 10.01, 12.0, OK))
    ids = {a.request_id for a in attempts}
    m = recovery_metrics(
        attempts, request_ids=ids, samples=PER_MEMBER, kill_t=10.0, member=2, killed_ranks=1, end_t=25.0
    )
    assert m.detect_s == pytest.approx(1.5)
    assert m.resume_s == pytest.approx(2.0)
    assert m.full_s == pytest.approx(10.0)
    assert m.no_serving_s == pytest.approx(1.5)  # 2 s gap, 0.5 s allowance
    assert m.capacity_lost_rank_s == pytest.approx(10.0)
    assert m.requests.failed == 0 and m.requests.wrong == 0
    assert m.as_dict()["requests"] == {
        "sent": len(ids),
        "ok": len(ids),
        "wrong": 0,
        "failed": 0,
        "attempts": len(attempts),
        "retries": 0,
    }


def test_recovery_metrics_when_nothing_recovers() -> None:
    samples = [sample(9.0, [H, H], 2), sample(11.0, [H, F], 1)]
    m = recovery_metrics(
        steady(0, 10, 0.1), request_ids=[], samples=samples, kill_t=10.0, member=1, killed_ranks=1, end_t=20.0
    )
    assert m.detect_s == pytest.approx(1.0)
    assert m.full_s is None and m.resume_s is None and m.capacity_lost_rank_s is None
    assert math.isclose(m.no_serving_s, 9.5)
