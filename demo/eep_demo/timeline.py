"""Recovery metrics from what the demo observed: the client's attempts, the CR status samples, the kill time.

Pure: no I/O, no clock. Called by `eep_demo.scenario` (the demo, the e2e test), `bench/mttr.py` and
`bench/soak.py`; unit-tested with synthetic timelines in tests/e2e/test_timeline_unit.py.

Every time is in seconds on one monotonic clock (the scenario's). Definitions (the summary prints these):

- **detect_s**: kill -> the first status sample in which the killed member is no longer Healthy on its old pod
  (state not Healthy, or a different pod UID: a sampler that missed the short Failed state still counts).
  Resolution: the sampling interval.
- **resume_s**: kill -> completion of the first correct answer to an attempt *sent after* the kill. An answer
  to a request sent before the kill may have been computed before the failure touched anything, so it proves
  nothing; the first post-kill request's answer had to get through whatever the failure did (Mooncake's
  detection = collective timeout + reconciliation window, then the re-run of the step) or wait for a restarted
  group. 0 would mean the failure never delayed a request.
- **full_s**: kill -> the first status sample, after detection, in which every member is Healthy and
  `activeRanks` holds the whole world: full capacity as the operator publishes it.
- **no_serving_s**: seconds after the kill in which no correct answer completed, beyond the normal spacing of
  answers: the sum over the gaps between consecutive correct completions in [kill, end] (the first gap starts
  at the kill) of `max(0, gap - allowance_s)`. `allowance_s` is what a normal gap can be: twice the 90th
  percentile latency of the correct answers completed in the `baseline_s` before the kill, at least
  `min_allowance_s`. (Latency, not the spacing of completions: the leader batches concurrent requests into
  one step, so completions arrive in bunches and their spacing says little.) With a client that always has
  requests outstanding, no answer for longer than two normal round trips means nothing was being served.
  Compare it only between runs with the same client settings and machine load (the benchmark does).
- **capacity_lost_rank_s**: the integral over [kill, full] of missing ranks (world size - active ranks):
  the killed member's ranks count as missing from the kill until detection (they are dead; the status just
  does not say so yet), after detection the status' `activeRanks` count is used, held until the next sample.
- Requests: a request is **ok** when some attempt got a correct answer, **wrong** when any attempt got a
  wrong one (a wrong answer is never excused by a later right one), **failed** when no attempt got an answer
  by the end. Attempts that got no answer (connection error, 503, timeout) and were retried are *retries*, not
  failures.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
from collections.abc import Iterable, Sequence

__all__ = [
    "Attempt",
    "AttemptResult",
    "MemberSample",
    "RecoveryMetrics",
    "RequestCounts",
    "StatusSample",
    "allowance",
    "capacity_lost",
    "count_requests",
    "detect_time",
    "epoch_regressions",
    "full_time",
    "no_serving",
    "recovery_metrics",
    "resume_time",
]


class AttemptResult(enum.StrEnum):
    """How one HTTP attempt of a request ended."""

    OK = "ok"
    """Answered, and the answer matches the float64 reference."""
    WRONG = "wrong"
    """Answered, and the answer does not match the reference (or is malformed)."""
    NO_ANSWER = "no_answer"
    """No answer: connection refused/reset, 503 (not ready), 504, or a client timeout; retried."""


@dataclasses.dataclass(frozen=True)
class Attempt:
    request_id: str
    sent: float
    done: float
    result: AttemptResult
    detail: str = ""
    """Error text for NO_ANSWER/WRONG; `epoch=N degraded=B` for answers."""


@dataclasses.dataclass(frozen=True)
class MemberSample:
    index: int
    state: str
    pod_uid: str | None
    restarts: int


@dataclasses.dataclass(frozen=True)
class StatusSample:
    """One observation of the CR status, taken at `t`."""

    t: float
    phase: str
    epoch: int
    active_ranks: int
    world_size: int
    members: tuple[MemberSample, ...]

    def member(self, index: int) -> MemberSample | None:
        return next((m for m in self.members if m.index == index), None)

    @property
    def full(self) -> bool:
        return (
            self.world_size > 0
            and self.active_ranks == self.world_size
            and bool(self.members)
            and all(m.state == "Healthy" for m in self.members)
        )


@dataclasses.dataclass(frozen=True)
class RequestCounts:
    sent: int
    ok: int
    wrong: int
    failed: int
    attempts: int
    retries: int


@dataclasses.dataclass(frozen=True)
class RecoveryMetrics:
    detect_s: float | None
    resume_s: float | None
    full_s: float | None
    no_serving_s: float
    longest_gap_s: float
    allowance_s: float
    capacity_lost_rank_s: float | None
    requests: RequestCounts

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def detect_time(samples: Sequence[StatusSample], kill_t: float, member: int) -> float | None:
    """Time of the first sample after the kill showing `member` off its pre-kill pod (see module doc)."""
    before = [s for s in samples if s.t <= kill_t and s.member(member) is not None]
    old_uid = before[-1].member(member).pod_uid if before else None  # type: ignore[union-attr]
    for s in samples:
        m = s.member(member)
        if s.t <= kill_t or m is None:
            continue
        if m.state != "Healthy" or (old_uid is not None and m.pod_uid != old_uid):
            return s.t
    return None


def full_time(samples: Sequence[StatusSample], after_t: float | None) -> float | None:
    """Time of the first sample after `after_t` (the detection) at full capacity."""
    if after_t is None:
        return None
    return next((s.t for s in samples if s.t >= after_t and s.full), None)


def resume_time(attempts: Iterable[Attempt], kill_t: float) -> float | None:
    done = [a.done for a in attempts if a.result is AttemptResult.OK and a.sent >= kill_t]
    return min(done) if done else None


def allowance(
    attempts: Iterable[Attempt], kill_t: float, baseline_s: float = 10.0, min_allowance_s: float = 0.5
) -> float:
    """The longest normal gap between answers: 2 x the p90 latency before the kill (see module doc)."""
    latencies = sorted(
        a.done - a.sent
        for a in attempts
        if a.result is AttemptResult.OK and kill_t - baseline_s <= a.done <= kill_t
    )
    if not latencies:
        return min_allowance_s
    p90 = latencies[min(len(latencies) - 1, int(0.9 * len(latencies)))]
    return max(min_allowance_s, 2 * p90)


def no_serving(
    attempts: Iterable[Attempt], kill_t: float, end_t: float, allowance_s: float
) -> tuple[float, float]:
    """(no-serving seconds, longest gap) over [kill, end]; see the module doc."""
    done = sorted(a.done for a in attempts if a.result is AttemptResult.OK and kill_t <= a.done <= end_t)
    edges = [kill_t, *done]
    if not done or done[-1] < end_t:
        # Still nothing at the end: the open gap counts too.
        edges.append(end_t)
    gaps = [b - a for a, b in itertools.pairwise(edges)]
    return sum(max(0.0, g - allowance_s) for g in gaps), max(gaps, default=0.0)


def capacity_lost(
    samples: Sequence[StatusSample],
    kill_t: float,
    detect_t: float | None,
    end_t: float | None,
    killed_ranks: int,
) -> float | None:
    """Rank-seconds missing over [kill, end] (see module doc); None when the recovery never ended."""
    if detect_t is None or end_t is None:
        return None
    lost = killed_ranks * max(0.0, min(detect_t, end_t) - kill_t)
    window = [s for s in samples if detect_t <= s.t <= end_t]
    for s, nxt in itertools.pairwise(window):
        lost += max(0, s.world_size - s.active_ranks) * (nxt.t - s.t)
    return lost


def count_requests(attempts: Iterable[Attempt], request_ids: Iterable[str]) -> RequestCounts:
    """Per-request outcome (see module doc). `request_ids` are every request the client started, so one
    whose attempts all went unanswered (or that never got an attempt recorded) counts as failed."""
    results: dict[str, set[AttemptResult]] = {rid: set() for rid in request_ids}
    n_attempts = 0
    for a in attempts:
        results.setdefault(a.request_id, set()).add(a.result)
        n_attempts += 1
    wrong = sum(1 for r in results.values() if AttemptResult.WRONG in r)
    ok = sum(1 for r in results.values() if AttemptResult.OK in r and AttemptResult.WRONG not in r)
    failed = sum(1 for r in results.values() if not r & {AttemptResult.OK, AttemptResult.WRONG})
    return RequestCounts(
        sent=len(results),
        ok=ok,
        wrong=wrong,
        failed=failed,
        attempts=n_attempts,
        retries=n_attempts - sum(1 for r in results.values() if r),
    )


def epoch_regressions(samples: Sequence[StatusSample]) -> list[tuple[float, int, int]]:
    """(t, previous epoch, epoch) for every sample whose epoch is below the one before it: must be empty."""
    return [(b.t, a.epoch, b.epoch) for a, b in itertools.pairwise(samples) if b.epoch < a.epoch]


def recovery_metrics(
    attempts: Sequence[Attempt],
    *,
    request_ids: Iterable[str],
    samples: Sequence[StatusSample],
    kill_t: float,
    member: int,
    killed_ranks: int,
    end_t: float,
    baseline_s: float = 10.0,
    min_allowance_s: float = 0.5,
) -> RecoveryMetrics:
    """Everything above for one failure. `end_t`: the end of the observation (the client's stop)."""
    detect_t = detect_time(samples, kill_t, member)
    full_t = full_time(samples, detect_t)
    resume_t = resume_time(attempts, kill_t)
    allow = allowance(attempts, kill_t, baseline_s, min_allowance_s)
    outage, longest = no_serving(attempts, kill_t, end_t, allow)
    return RecoveryMetrics(
        detect_s=None if detect_t is None else detect_t - kill_t,
        resume_s=None if resume_t is None else resume_t - kill_t,
        full_s=None if full_t is None else full_t - kill_t,
        no_serving_s=outage,
        longest_gap_s=longest,
        allowance_s=allow,
        capacity_lost_rank_s=capacity_lost(samples, kill_t, detect_t, full_t, killed_ranks),
        requests=count_requests(attempts, request_ids),
    )
