"""The leader's loop (global rank 0): batch client requests, plan each step, answer from trusted steps only.

Who calls it: `rank.RankRuntime.serve` on rank 0, after start-up; it never returns. Its decisions are pure
functions of `protocol` (`decide_membership`, `broadcast_source`); this module feeds them what it observes
(the membership source, the world group's CPU mirror, the joiners' readiness) and executes the result with
the step executor.

Trust. The leader answers a batch only from a step in which every one of ITS collectives succeeded
(`StepExecutor.all_succeeded`, asked after the output was read back, so it adds no sync) and its CPU
active-ranks mirror did not change, and whose output rows are finite (a rank that could not read the plan
poisons the combines with NaN: `execution.StepExecutor.poison`). Otherwise it re-plans the same batch with
the live set it then sees; the plan carries that live set, so every rank rebuilds the same dispatch map at
the same step. When it saw ranks fail, the step right after is a FENCE naming them (`fence.py`). A follower
whose own collectives failed does nothing special: its result is never used.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import NoReturn, Protocol

import torch

from eep_contract.exitcodes import ExitCode
from eep_contract.reasons import RecoveryResult
from eep_worker import protocol as P
from eep_worker.admission import Admission
from eep_worker.events import Exit, Outbox, Recovered, Response, ServingState, Untrusted
from eep_worker.execution import OUT_OF_STEP_LIMIT, StepExecutor
from eep_worker.metrics import MetricsSink
from eep_worker.protocol import Request, Snapshot, StepPlan
from eep_worker.recovery import live_ranks
from eep_worker.settings import Settings

__all__ = ["Leader", "Requests", "SnapshotSource"]

log = logging.getLogger(__name__)


class Requests(Protocol):
    """The client requests member 0's supervisor forwards (a `multiprocessing` queue). Both raise
    `queue.Empty` when there is none."""

    def get(self, block: bool = True, timeout: float | None = None) -> Request: ...
    def get_nowait(self) -> Request: ...


class SnapshotSource(Protocol):
    """The leader's membership source (a `membership.MembershipSource`; the GPU benchmark's: `FileSource`)."""

    def start(self) -> None: ...
    def latest(self) -> Snapshot | None: ...


class Leader:
    """Rank 0's serving state: the requests not yet answered and the membership view of its last plan."""

    def __init__(
        self,
        settings: Settings,
        *,
        executor: StepExecutor,
        admission: Admission,
        source: SnapshotSource | None,
        requests: Requests,
        sink: MetricsSink,
        outbox: Outbox,
        exit_rank: Exit,
    ) -> None:
        self.settings, self.executor, self.admission = settings, executor, admission
        self.source, self.requests, self.sink, self.outbox = source, requests, sink, outbox
        self._exit = exit_rank
        self.unexplained = 0
        """BATCH steps in a row not trusted with no rank seen failing (`OUT_OF_STEP_LIMIT`)."""
        self.world = executor.world
        self.world_size = settings.cluster.world_size
        self.pending: list[Request] = []

    def collect(self) -> list[Request]:
        """The next batch: pending requests first, as many whole requests as fit `max_batch_tokens`. Waits up
        to `idle_step_s` for one when none is pending (an empty batch still runs its step)."""
        budget = self.settings.model.max_batch_tokens
        batch: list[Request] = []
        used = 0
        if not self.pending:
            try:
                self.pending.append(self.requests.get(timeout=self.settings.idle_step_s))
            except queue.Empty:
                return []
        while True:
            while self.pending and used + len(self.pending[0].tokens) <= budget:
                r = self.pending.pop(0)
                batch.append(r)
                used += len(r.tokens)
            if self.pending:
                break
            try:
                self.pending.append(self.requests.get_nowait())
            except queue.Empty:
                break
        return batch

    def next_plan(self, batch: list[Request], view: P.LeaderView) -> tuple[StepPlan, P.LeaderView]:
        """Build the next plan from the membership snapshot and the batch; returns it and the new view."""
        timeout_s = self.settings.timeouts.join_timeout_s
        snap = self.source.latest() if self.source is not None else None
        now = time.monotonic()
        live = live_ranks(self.world)
        pending = snap.joining_ranks - live if snap is not None and snap.epoch > view.epoch else frozenset()
        ready = bool(pending) and self.admission.joiners_ready(pending)
        decision = P.decide_membership(
            P.LeaderView(view.epoch, live, view.pending_since),
            snap,
            ready=ready,
            now=now,
            join_timeout_s=timeout_s,
        )
        if decision.gave_up:
            log.error(
                "rank 0 epoch %d: joining ranks %s not ready within %.1fs; serving degraded without them",
                decision.epoch,
                sorted(decision.gave_up),
                timeout_s,
            )
            self.sink.recovery(RecoveryResult.FAILED)
            self.outbox.put(Recovered(decision.epoch, False, 0.0, "join timeout"))
        step = self.executor.step_no + 1
        if decision.recover:
            # The metadata comes from a rank that holds it: a serving one (not a dedicated coordinator).
            serving = live & frozenset(self.settings.cluster.serving)
            source = P.broadcast_source(serving, decision.recover, decision.epoch)
            plan = StepPlan(decision.epoch, step, P.Kind.RECOVER, (), live, decision.recover, source)
        else:
            tokens = tuple(t for r in batch for t in r.tokens)
            plan = StepPlan(decision.epoch, step, P.Kind.BATCH, tokens, live)
        return plan, P.LeaderView(decision.epoch, live, decision.pending_since)

    def lead(self) -> NoReturn:
        """Serve forever: one plan per step, answers from trusted steps, a fence and a re-run otherwise."""
        ex = self.executor
        view = P.LeaderView(ex.epoch, ex.dispatch_live)
        # The group's view before the first plan: the executor reports only changes of it, and member 0's
        # supervisor answers GET /v1/group from these reports (a fresh group: every rank).
        self.outbox.put(ServingState(ex.epoch, sorted(live_ranks(self.world))))
        while True:
            batch = self.collect()
            plan, view = self.next_plan(batch, view)
            if plan.kind is P.Kind.RECOVER:
                self.pending[:0] = batch  # served right after the recovery step
                batch = []
            mirror = self.world.cpu_mirror.clone()
            _, out = ex.run(plan)
            self.sink.steps(1, degraded=int(len(plan.live) < self.world_size))
            if out is None:
                continue
            rows = out[: len(plan.tokens)].to("cpu", torch.float64) if batch else None
            # A non-finite row means some rank could not read the plan and poisoned the combines.
            trusted = (
                ex.all_succeeded()
                and torch.equal(self.world.cpu_mirror, mirror)
                and (rows is None or bool(torch.isfinite(rows).all()))
            )
            if not trusted:
                self._rerun(plan, batch)
                continue
            self.unexplained = 0
            if rows is None:
                continue
            values = rows.tolist()
            i = 0
            degraded = len(plan.live) < self.world_size
            for r in batch:
                n = len(r.tokens)
                self.outbox.put(
                    Response(r.request_id, values[i : i + n], plan.epoch, sorted(plan.live), degraded)
                )
                i += n

    def _rerun(self, plan: StepPlan, batch: list[Request]) -> None:
        """A step not trusted: the output may be partial. Put its batch back first in line and, when ranks
        were seen failing, fence; the next plan carries the live set seen then, so every rank rebalances at
        the same step."""
        ex = self.executor
        failed = ex.failed_ranks() - {0}  # a FENCE never names the leader
        log.warning(
            "rank 0 epoch %d step %d: not trusted (failed %s, live now %s); re-running %d requests",
            plan.epoch,
            plan.step,
            sorted(failed),
            sorted(live_ranks(self.world)),
            len(batch),
        )
        self.sink.steps(0, rerun=1)
        self.outbox.put(Untrusted(plan.step, time.time()))
        self.pending[:0] = batch
        self.unexplained = 0 if failed else self.unexplained + 1
        if self.unexplained >= OUT_OF_STEP_LIMIT:
            # Nothing in-process resets Mooncake's per-peer flags (docs/known-issues.md, "Mooncake's
            # collectives can lag a step"): a new group does.
            self._exit(
                ExitCode.STALLED,
                f"{self.unexplained} steps in a row not trusted with no rank seen failing: the group is out "
                "of step",
            )
        if failed:
            ex.enter_tail()  # the fence plan's broadcast, too, still includes the dead ranks
            ex.run(StepPlan(plan.epoch, ex.step_no + 1, P.Kind.FENCE, (), plan.live, failed=failed))
