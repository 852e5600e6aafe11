"""Worker metrics (prefix `elasticep_worker_`, label `rank`; names in docs/dev/interfaces.md).

Rank processes do not own a registry: they report through a `MetricsSink` (the rank runtime's `QueueSink`
puts typed `events.MetricEvent`s on the pod's event queue, batching per-step counters), and the supervisor
(`serve.Supervisor`) applies them to one `WorkerMetrics` built on the registry `__main__` creates. Tests build
their own registry. Only `WorkerMetrics` imports prometheus-client.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Protocol, assert_never

from eep_contract.reasons import RecoveryPhase, RecoveryResult
from eep_worker.events import (
    MembershipGauge,
    MetricEvent,
    Outbox,
    PhaseDuration,
    RankEvent,
    RecoveryCount,
    StepCounts,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["MetricsSink", "QueueSink", "WorkerMetrics"]

_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class MetricsSink(Protocol):
    """What a rank reports. Implementations never raise."""

    def recovery(self, result: RecoveryResult) -> None: ...
    def phase(self, phase: RecoveryPhase, seconds: float) -> None: ...
    def steps(self, total: int = 1, degraded: int = 0, rerun: int = 0) -> None: ...
    def membership(self, active_ranks: int, epoch: int) -> None: ...


class WorkerMetrics:
    """The Prometheus series of one pod's ranks."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Imported here so rank processes (and the GPU bench) need only `QueueSink`, not prometheus-client.
        from prometheus_client import Counter, Gauge, Histogram  # noqa: PLC0415

        p = "elasticep_worker_"
        self.recoveries = Counter(
            p + "recoveries", "Recoveries by result", ["rank", "result"], registry=registry
        )
        self.phase_seconds = Histogram(
            p + "recovery_phase_seconds",
            "Duration of each recovery phase",
            ["rank", "phase"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.degraded_steps = Counter(
            p + "degraded_steps", "Steps served with ranks missing", ["rank"], registry=registry
        )
        self.rerun_steps = Counter(
            p + "rerun_steps", "Steps re-run after an untrusted result", ["rank"], registry=registry
        )
        self.steps = Counter(p + "steps", "Steps run", ["rank"], registry=registry)
        self.active_ranks = Gauge(
            p + "active_ranks", "Active ranks seen by this rank", ["rank"], registry=registry
        )
        self.epoch = Gauge(p + "epoch", "Membership epoch this rank acts on", ["rank"], registry=registry)

    def apply(self, event: MetricEvent) -> None:
        """Apply one metric event from a rank's `QueueSink`."""
        r = str(event.rank)
        match event:
            case RecoveryCount(result=result):
                self.recoveries.labels(r, result).inc()
            case PhaseDuration(phase=phase, seconds=seconds):
                self.phase_seconds.labels(r, phase).observe(seconds)
            case StepCounts(total=total, degraded=degraded, rerun=rerun):
                self.steps.labels(r).inc(total)
                self.degraded_steps.labels(r).inc(degraded)
                self.rerun_steps.labels(r).inc(rerun)
            case MembershipGauge(active_ranks=active, epoch=epoch):
                self.active_ranks.labels(r).set(active)
                self.epoch.labels(r).set(epoch)
            case _:
                assert_never(event)


class QueueSink:
    """A rank's sink: puts metric events on the pod's event queue; per-step counters are flushed at most
    every `flush_s` seconds so the hot path does not pickle per step."""

    def __init__(self, queue: Outbox, rank: int, flush_s: float = 0.5) -> None:
        self._q, self._rank, self._flush_s = queue, rank, flush_s
        self._pending = [0, 0, 0]
        self._last = time.monotonic()

    def _send(self, event: RankEvent) -> None:
        with contextlib.suppress(Exception):  # metrics must never take a rank down
            self._q.put(event)

    def recovery(self, result: RecoveryResult) -> None:
        self._send(RecoveryCount(self._rank, result))

    def phase(self, phase: RecoveryPhase, seconds: float) -> None:
        self._send(PhaseDuration(self._rank, phase, seconds))

    def steps(self, total: int = 1, degraded: int = 0, rerun: int = 0) -> None:
        p = self._pending
        p[0] += total
        p[1] += degraded
        p[2] += rerun
        now = time.monotonic()
        if now - self._last >= self._flush_s or degraded or rerun:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if any(self._pending):
            self._send(StepCounts(self._rank, *self._pending))
            self._pending = [0, 0, 0]
        self._last = time.monotonic() if now is None else now

    def membership(self, active_ranks: int, epoch: int) -> None:
        self._send(MembershipGauge(self._rank, active_ranks, epoch))
