"""What a rank process tells its pod's supervisor: one frozen dataclass per kind of message.

Who uses it: the rank runtime (`rank.py`, `leader.py`, `admission.py`, `execution.py`) and its metrics sink
(`metrics.QueueSink`) put these on the pod's event queue (a `multiprocessing` queue: every event is pickled,
so each is a small, flat value). The supervisor (`serve.Supervisor`) dispatches on the type; it hands the
`MetricEvent` kinds to `metrics.WorkerMetrics`. The GPU benchmark (`bench/gpu_recovery.py`) reads the same
queue. `RankEvent` is the closed union of every kind: a kind added here must be added there, and a test
(`tests/worker/test_events.py`) fails until the supervisor has a handler for it.

`Exit` is the other half of ending a rank: report `Exiting`, then end the process with the contract's code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NoReturn, Protocol

from eep_contract.reasons import RecoveryPhase, RecoveryResult

__all__ = [
    "LEADER_LOST",
    "Exit",
    "Exiting",
    "Joining",
    "MembershipGauge",
    "MetricEvent",
    "Outbox",
    "PhaseDuration",
    "RankEvent",
    "Ready",
    "Recovered",
    "RecoveryCount",
    "Response",
    "ServingState",
    "StepCounts",
    "Untrusted",
]


# ---------------------------------------------------------------- lifecycle and serving


@dataclasses.dataclass(frozen=True, slots=True)
class Ready:
    """`rank` has its groups and model (a joiner: it has joined and holds the metadata). /ready counts it."""

    rank: int


@dataclasses.dataclass(frozen=True, slots=True)
class Joining:
    """`rank` starts its join: not ready until it sends `Ready` again."""

    rank: int


@dataclasses.dataclass(frozen=True, slots=True)
class Exiting:
    """`rank` ends the pod with `code` (an `ExitCode`, or 1 for an unexpected exception). Sent just before the
    process exits; the supervisor keeps the first one it gets as the pod's exit code and reason."""

    rank: int
    code: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    """The leader's answer to one client request: `output` rows (float64 as Python floats, one per token)
    from a trusted step at `epoch`, computed over `active_ranks` (`degraded`: fewer than the world)."""

    request_id: str
    output: list[list[float]]
    epoch: int
    active_ranks: list[int]
    degraded: bool


@dataclasses.dataclass(frozen=True, slots=True)
class ServingState:
    """The leader moved to `epoch` or to a new dispatch set: what the rendezvous service tells joiners."""

    epoch: int
    active_ranks: list[int]


@dataclasses.dataclass(frozen=True, slots=True)
class Recovered:
    """The leader's outcome of one join at `epoch` (a RECOVER step, or a join it gave up on after the join
    timeout, with `seconds` 0): logged by the supervisor."""

    epoch: int
    ok: bool
    seconds: float
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Untrusted:
    """The leader did not trust step `step` (a collective failed or the active set changed during it) and
    re-runs its batch. `at` is the wall-clock time (`time.time()`), for the benchmark's detection time."""

    step: int
    at: float


# ---------------------------------------------------------------- metrics (applied by metrics.WorkerMetrics)


@dataclasses.dataclass(frozen=True, slots=True)
class RecoveryCount:
    """One recovery on `rank` ended with `result`."""

    rank: int
    result: RecoveryResult


@dataclasses.dataclass(frozen=True, slots=True)
class PhaseDuration:
    """One recovery phase on `rank` took `seconds`."""

    rank: int
    phase: RecoveryPhase
    seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class StepCounts:
    """Steps `rank` ran since its last report: `total`, of them `degraded` (ranks missing), and `rerun`
    (answers not trusted, batch re-run)."""

    rank: int
    total: int
    degraded: int
    rerun: int


@dataclasses.dataclass(frozen=True, slots=True)
class MembershipGauge:
    """`rank` now dispatches over `active_ranks` ranks at `epoch`."""

    rank: int
    active_ranks: int
    epoch: int


MetricEvent = RecoveryCount | PhaseDuration | StepCounts | MembershipGauge
"""The kinds `metrics.WorkerMetrics.apply` takes."""

RankEvent = (
    Ready
    | Joining
    | Exiting
    | Response
    | ServingState
    | Recovered
    | Untrusted
    | RecoveryCount
    | PhaseDuration
    | StepCounts
    | MembershipGauge
)
"""Every kind a rank sends (the metric kinds included)."""


class Outbox(Protocol):
    """Where a rank puts its events: the pod's `multiprocessing` queue (its `put` never blocks: the queue is
    unbounded and pickles in a feeder thread)."""

    def put(self, event: RankEvent, /) -> None: ...


Exit = Callable[[int, str], NoReturn]
"""Ends this rank: logs, sends `Exiting(rank, code, reason)`, exits the process with `code` (an `ExitCode`;
1 only for an unexpected exception). Callable from any thread (the step and join watchdogs use it)."""

LEADER_LOST = "member 0 (rank 0) is gone: not recoverable in place"
"""The reason of `ExitCode.LEADER_LOST`, wherever a rank finds it."""
