"""The step executor: one step on this rank, exactly as the step plan says, and the watchdog over it.

Who calls it: every rank's loop. The leader (`leader.Leader`) passes the plan it sends to `StepExecutor.run`;
a follower (`rank.RankRuntime.follow`) passes None and executes the plan it receives. The GPU benchmark drives
it through `rank.RankRuntime.step` and this class's public methods (`begin`, `combine`, `all_succeeded`,
`variant`).

Per step, on every rank: the plan broadcast (CPU world group), then one combine all-reduce per layer over
``max_batch_tokens`` padded rows for a BATCH plan, through the data path chosen at start-up
(`datapath.py`: the device world group, or staged through host memory on the CPU world group); the recovery
sequence for a RECOVER plan (`admission.Admission.admit`); nothing until Mooncake's new view for a FENCE plan
(`fence.pass_fence`). Only the world group is used in the hot path: a failure is then detected on one group
only. A BATCH step on the device path adds no host-device sync on GPU: this rank's success is asked only after
the leader read its output back; the staged path syncs the host once per combine.

After a failure (issue #14): the first collective that fails on a rank puts the process on the tail timeout
(`enter_tail`), so the rest of the step costs milliseconds per collective instead of a collective timeout
each, while every collective is still issued; the timeout is restored once the fence has passed
(`leave_tail`). Which collectives are checked: the plan broadcast, and the combines where they are CPU works
(mooncake-cpu, the staged path); a GPU device combine would need a host sync.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch
import torch.distributed as dist

from eep_contract.env import DataPath
from eep_contract.exitcodes import ExitCode
from eep_worker import expert_location as el
from eep_worker import protocol as P
from eep_worker.answer import Answer, AnswerInbox, AnswerOutbox
from eep_worker.datapath import CombinePath, DevicePath
from eep_worker.events import LEADER_LOST, Exit, Outbox, ServingState
from eep_worker.fence import pass_fence
from eep_worker.groups import GroupRegistry
from eep_worker.metrics import MetricsSink
from eep_worker.moe import ShardedMoEModel
from eep_worker.plan_ring import PlanRing
from eep_worker.protocol import StepPlan
from eep_worker.settings import Settings

if TYPE_CHECKING:
    from eep_worker.admission import Admission
    from eep_worker.mooncake import Mooncake

__all__ = [
    "OUT_OF_STEP_LIMIT",
    "STAMPS",
    "UNANSWERED_LIMIT",
    "PlanCodec",
    "StepExecutor",
    "StepResult",
    "StepWatchdog",
    "output_rank",
    "stamp",
]

log = logging.getLogger(__name__)
OUT_OF_STEP_LIMIT = 32
"""Plans in a row a rank could not read before it leaves (`ExitCode.STALLED`): a rank that reads only stale
plans is out of step with the leader (docs/known-issues.md, "Mooncake's collectives can lag a step"), and
only a new incarnation of it gets back in step; a kill costs one or two unreadable plans."""
STAMPS = 4
"""Distinct stamps of the combines (`datapath.Stamped`): combine ``i`` of step ``s`` is stamped
``(s x (layers | 1) + i) mod STAMPS + 1`` (`stamp`), so ops one or two apart differ (a late flag gives the
data of the op two before: the group has two buffer slots), and so does combine ``i`` of two consecutive
steps (an odd stride: a rank a step behind the others); 63 ranks' stamps sum to at most 252, exact even in
bfloat16."""
UNANSWERED_LIMIT = 3
"""With a dedicated coordinator: steps in a row in which rank 0 heard no answer from a live output rank
before rank 0 leaves (`ExitCode.STALLED`); each such step waits `StepExecutor.answer_wait_s`."""


def stamp(step: int, layers: int, combine: int) -> int:
    """The stamp of combine ``combine`` (0-based) of step ``step`` in a model of ``layers`` layers, in
    ``1..STAMPS`` (`STAMPS`)."""
    return (step * (layers | 1) + combine) % STAMPS + 1


def output_rank(live: frozenset[int], serving: range) -> int:
    """The rank whose output answers a step with a dedicated coordinator: the lowest live serving rank, so
    when it dies the next one answers the re-run (docs/architecture.md). Raises ValueError when none lives."""
    return min(r for r in serving if r in live)


class StepResult(NamedTuple):
    """What one step gave this rank (a named tuple: built on every step's critical path)."""

    plan: StepPlan | None
    """The plan executed; None when the received one was bad (this rank then contributed NaN)."""
    output: torch.Tensor | None
    """BATCH: the output rows ``[max_batch_tokens, hidden]`` on this rank's device, not read back (the first
    ``len(plan.tokens)`` rows are the batch's). None for RECOVER, FENCE and a bad plan."""


class PlanCodec(Protocol):
    """How the plan goes into and comes out of the broadcast buffer: the `protocol` module itself, or a
    stand-in for a benchmark's attribution (`StepExecutor.variant`)."""

    def encode_into(self, plan: StepPlan, out: P.IntBuffer) -> None: ...
    def decode_header(
        self, header: Sequence[int], *, capacity: int, world_size: int, min_epoch: int, after_step: int
    ) -> StepPlan: ...


class StepWatchdog:
    """Turns a hung step into a clear exit. Nothing in-process can unblock a collective, so when a step has
    run longer than its limit the rank exits with `ExitCode.STALLED` and the pod ends; the operator's group
    restart handles it (docs/known-issues.md: a view that lands before the fence can still split the
    survivors). The executor arms it (`started`, `limit_s`) at the start of every step; a fence disarms it
    (the fence is bounded by `Settings.fence_settle_s`)."""

    def __init__(self, exit_rank: Exit, period_s: float = 1.0) -> None:
        self.started: float | None = None
        """`time.monotonic()` when the current step started (None: no step is timed)."""
        self.limit_s = 0.0
        """How long the current step may take, seconds."""
        self._exit, self._period_s = exit_rank, period_s

    def start(self) -> None:
        """Start watching, from the next step on (an arm left by earlier, unwatched steps is dropped)."""
        self.started = None
        threading.Thread(target=self._watch, name="step-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(self._period_s)
            started, limit = self.started, self.limit_s
            if started is not None and time.monotonic() - started > limit:
                self._exit(ExitCode.STALLED, f"a step did not finish within {limit:.0f}s (collective hung)")


class StepExecutor:
    """This rank's step state: the plan buffers, the collectives of the current step, the epoch and step it
    acts on, and the expert dispatch map over the live ranks of the last plan."""

    def __init__(
        self,
        settings: Settings,
        rank: int,
        *,
        mc: Mooncake,
        registry: GroupRegistry,
        model: ShardedMoEModel | None,
        metadata: el.ExpertLocationMetadata | None,
        admission: Admission,
        sink: MetricsSink,
        outbox: Outbox,
        exit_rank: Exit,
        path: CombinePath | None = None,
        answers: AnswerInbox | AnswerOutbox | None = None,
    ) -> None:
        m, t, c = settings.model, settings.timeouts, settings.cluster
        self.settings, self.rank = settings, rank
        self.world_size = c.world_size
        self.is_leader = rank == 0
        self.serves = c.serving_index(rank) >= 0
        """This rank holds experts and runs the combines (not a dedicated coordinator's rank 0)."""
        self.offset = c.serving.start
        """Global rank of the serving group's local rank 0 (1 with a dedicated coordinator, else 0)."""
        self.dedicated = c.dedicated
        self.on_gpu = settings.on_gpu(rank)
        self.mc, self.registry, self.world = mc, registry, registry.world
        self.model = model
        self.device = model.device if model is not None else torch.device("cpu")
        self.metadata = metadata
        self.metadata_cpu = metadata.to_cpu() if metadata is not None else None
        self.admission, self.sink, self.outbox, self._exit = admission, sink, outbox, exit_rank
        serving = registry.serving.device
        self.path: CombinePath | None = path or (
            DevicePath(serving, settings.backend) if self.serves and serving is not None else None
        )
        """How the combines travel (`datapath.select` chose it; the serving group's device group by default;
        None on a dedicated coordinator's rank 0)."""
        self.tail = False
        """This rank saw a collective fail and runs on the tail timeout (`enter_tail`) until a fence
        passes."""
        self.check_combines = not self.on_gpu or (self.path is not None and self.path.mode is DataPath.STAGED)
        """Each combine's success is a host read (a CPU work): `_note` checks every one. Device combines on
        GPU are not checked (it would sync the host); their timeout is the device groups' (`mooncake.py`)."""
        self.epoch = 0
        self.step_no = 0
        self.dispatch_live: frozenset[int] = frozenset(range(self.world_size))
        """The live set the dispatch map was built for (that of the last BATCH plan)."""
        self.plan_live: frozenset[int] = self.dispatch_live
        """The live set of the last plan received (of any kind; a FENCE's without the ranks it fences)."""
        self.codec: PlanCodec = P
        width = P.HEADER + m.max_batch_tokens
        self.ring = PlanRing(
            width,
            pin=self.on_gpu,
            event=torch.cuda.Event if self.on_gpu else None,
            # Passed to `Event.record` explicitly: without it, every record looks the stream up in Python.
            stream=torch.cuda.current_stream() if self.on_gpu else None,
        )
        # The whole received plan goes to the device in one copy from the start of its pinned buffer, and the
        # model reads the tokens through a view made once (cheaper on the host than a slice copy per step).
        self.dev_plan = torch.zeros(width, dtype=torch.int64, device=self.device)
        self.tokens = self.dev_plan[P.HEADER :]
        self._works: list[dist.Work] = []
        self._combines: list[dist.Work] = []
        """This step's combines, on the serving group (local ranks shifted by `offset`)."""
        self._answer_ok = True
        """With a dedicated coordinator: the output rank's step succeeded (rank 0: as its answer says)."""
        self._answer_failed: frozenset[int] = frozenset()
        """With a dedicated coordinator: the global ranks the output rank's answer names as failed."""
        self.answers = answers
        """With a dedicated coordinator: rank 0's inbox, a serving rank's outbox (`answer.py`); else None."""
        self.answer_barrier = torch.zeros(1, dtype=torch.float64)
        """The one-element broadcast from the output rank after each answer (`_exchange_answer`)."""
        self.poison = torch.full(
            (m.max_batch_tokens, m.hidden_size),
            float("nan"),
            dtype=model.config.dtype if model is not None else torch.float32,
            device=self.device,
        )
        """What a rank that could not read the plan contributes to each combine: the sum is then NaN, which
        the output rank's answer and the leader refuse, so that step is re-run, never answered."""
        self.bad_plans = 0
        """Plans in a row this rank could not read (`OUT_OF_STEP_LIMIT`)."""
        self.serving_ranks = frozenset(c.serving)
        self._stamp_step: int | None = None
        """The BATCH step whose combines are stamped (`stamp`); None: stamp nothing."""
        self.contributors = 0
        """Ranks whose stamps this step's combines should sum: the plan's live serving ranks."""
        self.lagged = 0
        """Combines whose stamps did not sum to this op's (`combine`), since start."""
        self._step_lagged = False
        """A combine of this step summed another op's data: the step failed here (`all_succeeded`)."""
        self.unanswered = 0
        """Rank 0, dedicated coordinator: steps in a row without an answer (`UNANSWERED_LIMIT`)."""
        self.stall_limit_s = max(30.0, 10 * (t.collective_timeout_s + t.reconcile_window_s))
        """A step (never a recovery) that takes longer than this has hung."""
        self.answer_wait_s = self.stall_limit_s / 3
        """Rank 0, dedicated coordinator: how long it waits for an answer once the output rank's broadcast
        succeeded (the answer was sent before it; the broadcast can end early on a stale flag, module doc of
        `answer.py`), seconds: well inside the step's stall limit."""
        self.watchdog = StepWatchdog(exit_rank)

    @property
    def dispatch_map(self) -> torch.Tensor:
        """``[layers, experts]``: the physical replica each logical expert's tokens go to (on the device)."""
        assert self.metadata is not None, "a dedicated coordinator's rank 0 holds no experts"
        return self.metadata.logical_to_rank_dispatch_physical_map

    def warm_up(self) -> None:
        """One forward without collectives, so the first served step does not pay for first-call setup."""
        if self.model is not None:
            self.model.forward(self.tokens, self.dispatch_map, lambda t: t)

    def adopt(self, metadata: el.ExpertLocationMetadata, epoch: int, step: int) -> None:
        """A joiner, once admitted: the metadata it received and the epoch and step the group is at. The next
        plan's live set rebuilds the dispatch map. The metadata goes to this rank's device (it arrives where
        the world group's mirror lives: the host, with a dedicated coordinator)."""
        metadata = metadata.to(self.device)
        self.metadata, self.metadata_cpu = metadata, metadata.to_cpu()
        self.epoch, self.step_no = epoch, step
        self.dispatch_live = frozenset()

    # ------------------------------------------------------------------ one step

    def run(self, sent: StepPlan | None) -> StepResult:
        """One step on this rank: the plan broadcast (rank 0 passes the plan it sends; the others None), then
        what it says. Collective: every rank calls it once per step."""
        wd = self.watchdog
        wd.started, wd.limit_s = time.monotonic(), self.stall_limit_s
        buf, array = self.ring.next()
        if sent is not None:
            self.codec.encode_into(sent, array)
        self._works, self._combines = [], []
        self._answer_ok, self._answer_failed, self._step_lagged = True, frozenset(), False
        work = dist.broadcast(buf, src=0, group=self.world.cpu, async_op=True)
        assert work is not None
        work.wait()
        self._works.append(work)
        self._note(work)
        try:
            plan = (
                sent
                if sent is not None
                else self.codec.decode_header(
                    array[: P.HEADER].tolist(),
                    capacity=len(array) - P.HEADER,
                    world_size=self.world_size,
                    min_epoch=self.epoch,
                    after_step=self.step_no,
                )
            )
        except P.PlanError as e:
            # A plan broadcast that failed leaves the buffer's old plan (a stale step) or a torn one. Asked
            # here, not every step: the check is a call into Mooncake on every follower's critical path.
            lost = not self.mc.local_success(work) and 0 in self.mc.failed_ranks(work)
            if lost or not bool(self.world.cpu_mirror[0]):
                # Rank 0 hosts Mooncake's coordinator as well as the leader: no view change will ever come.
                self._exit(ExitCode.LEADER_LOST, LEADER_LOST)
            self.bad_plans += 1
            if self.bad_plans >= OUT_OF_STEP_LIMIT:
                self._exit(
                    ExitCode.STALLED,
                    f"{self.bad_plans} plans in a row unreadable after step {self.step_no}: out of step with "
                    "the leader",
                )
            # Keep the group in step: the same combines as a BATCH plan, poisoning their sums (`poison`).
            log.warning("rank %d: ignoring a bad plan after step %d: %s", self.rank, self.step_no, e)
            self._stamp_step = None
            for _ in range(self.settings.model.num_layers):
                self.combine(self.poison.clone())
            if self.dedicated:
                self._exchange_answer(output_rank(self.plan_live, self.settings.cluster.serving), None, 0)
            # The leader ran a step here all the same: a plan not after it is one read late (a lagging
            # broadcast), which would add an earlier batch to this step's sums.
            self.step_no += 1
            return StepResult(None, None)
        self.bad_plans = 0
        self.step_no = plan.step
        self.plan_live = plan.live - plan.failed  # a FENCE's live set still names the ranks it fences
        if plan.epoch != self.epoch:
            self.epoch = plan.epoch
            self.sink.membership(len(plan.live), plan.epoch)
            if self.is_leader:
                self.outbox.put(ServingState(plan.epoch, sorted(plan.live)))
        if plan.kind is P.Kind.RECOVER:
            # Waits for joiners up to the join timeout, then Mooncake's admission and the metadata broadcast.
            wd.limit_s = self.stall_limit_s + 2 * self.settings.timeouts.join_timeout_s
            self.admission.admit(plan, self.metadata, self.metadata_cpu)
            return StepResult(plan, None)
        if plan.kind is P.Kind.FENCE:
            wd.started = None  # bounded by Settings.fence_settle_s
            pass_fence(
                plan,
                registry=self.registry,
                rank=self.rank,
                settle_s=self.settings.fence_settle_s,
                sink=self.sink,
                exit_rank=self._exit,
            )
            self.leave_tail()
            return StepResult(plan, None)
        self._set_live(plan.live)
        self._stamp_step = plan.step
        self.contributors = len(plan.live & self.serving_ranks)
        out: torch.Tensor | None = None
        if self.model is not None:
            self.dev_plan.copy_(buf, non_blocking=self.on_gpu)
            out = self.model.forward(self.tokens, self.dispatch_map, self.combine)
        if self.dedicated:
            # A follower's plan has no tokens (`protocol.decode_header`); the count is in the buffer.
            tokens = len(plan.tokens) if sent is not None else int(array[P.COUNT])
            out = self._exchange_answer(output_rank(plan.live, self.settings.cluster.serving), out, tokens)
        if self.tail and self.check_combines and self.all_succeeded():
            self.leave_tail()  # a whole step without a failure: no dead rank is left in the view
        return StepResult(plan, out)

    def _set_live(self, live: frozenset[int]) -> None:
        """Rebuild the dispatch map for `live` (the plan's view). Runs only when the live set changes."""
        if live == self.dispatch_live:
            return
        if self.metadata is not None:
            # The placement is over the serving ranks: a dedicated coordinator's rank 0 holds none.
            flags = [1 if r in live else 0 for r in self.settings.cluster.serving]
            uncovered = el.uncovered_experts(self.metadata.to_cpu(), flags)
            if uncovered:
                self._exit(ExitCode.UNCOVERED, f"experts without a live replica: {uncovered[:8]}")
            active = torch.tensor(flags, dtype=torch.int32, device=self.device)
            el.rebalance(self.metadata, active, out=self.metadata.logical_to_rank_dispatch_physical_map)
            self.metadata_cpu = self.metadata.to_cpu()
        self.dispatch_live = live
        self.sink.membership(len(live), self.epoch)
        log.info("rank %d epoch %d: dispatch over live ranks %s", self.rank, self.epoch, sorted(live))
        if self.is_leader:
            self.outbox.put(ServingState(self.epoch, sorted(live)))

    # ------------------------------------------------------------------ this step's collectives

    def begin(self, work: dist.Work) -> None:
        """Start tracking a step whose first collective is ``work`` (`run` does this itself; a benchmark's
        plain step that broadcasts on its own calls it)."""
        self._works, self._combines, self._stamp_step = [work], [], None

    def combine(self, t: torch.Tensor) -> torch.Tensor:
        """The model's combine: all-reduce (SUM) ``t`` in place through the data path chosen at start-up
        (`datapath.CombinePath`: the device world group, or staged through host memory on the CPU world
        group), tracked for `all_succeeded`. Where the route carries a stamp (`datapath.Stamped`: through
        host memory) and the stamps did not sum to this op's, the result holds some peer's data of an earlier
        op: ``t`` is filled with NaN, so every later combine of the step, the output and the answer are NaN
        and the step is re-run, never answered."""
        assert self.path is not None, "a dedicated coordinator's rank 0 runs no combine"
        step = self._stamp_step
        mark = 0 if step is None else stamp(step, self.settings.model.num_layers, len(self._combines))
        work = self.path.all_reduce(t, mark)
        self._works.append(work)
        self._combines.append(work)
        if self.check_combines:  # issue #14: after a failure, the rest of the step at the tail timeout
            self._note(work)
        got = self.path.stamp_sum
        if mark and got is not None and got != mark * self.contributors:
            t.fill_(float("nan"))
            self.lagged += 1
            self._step_lagged = True
            log.warning(
                "rank %d step %d combine %d: stamps summed to %g, not %d x %d: the sum holds data of another "
                "op; the step is poisoned",
                self.rank,
                self.step_no,
                len(self._combines) - 1,
                got,
                self.contributors,
                mark,
            )
        return t

    # ------------------------------------------------------------------ after a failure: the tail

    def _note(self, work: dist.Work) -> None:
        """The first failed collective (a CPU work: its success is a host read) puts this rank on the tail."""
        if not self.tail and not self.mc.local_success(work):
            self.enter_tail()

    def enter_tail(self) -> None:
        """Put this process on the tail timeout (`TimeoutSettings.tail_timeout_s`) for the rest of the step
        and the fence plan's broadcast: every later collective that still includes a dead rank then costs the
        tail and one refused liveness probe instead of a collective timeout, so the leader reaches its fence
        in a time that hardly grows with the model's depth (`eep_contract.pause`). Safe because Mooncake's
        timeout is only a liveness probe on the CPU path: a live rank that is late is waited for, never
        condemned. Every collective is still issued, so Mooncake's per-op counters stay aligned on every
        rank. The leader also calls it before a fence plan (on GPU its device combines are not checked)."""
        if self.tail:
            return
        t = self.settings.timeouts
        self.mc.set_collective_timeout(t.tail_timeout_s)
        self.tail = True
        log.warning(
            "rank %d step %d: a collective failed; the rest of the step on a %.3fs timeout (was %.3fs)",
            self.rank,
            self.step_no,
            t.tail_timeout_s,
            t.collective_timeout_s,
        )

    def leave_tail(self) -> None:
        """Back to the collective timeout: after a fence, or after a step whose every collective succeeded."""
        if not self.tail:
            return
        self.mc.set_collective_timeout(self.settings.timeouts.collective_timeout_s)
        self.tail = False
        log.info(
            "rank %d step %d: collective timeout back to %.3fs",
            self.rank,
            self.step_no,
            self.settings.timeouts.collective_timeout_s,
        )

    def all_succeeded(self) -> bool:
        """Whether every collective of this step succeeded here (on a dedicated coordinator's rank 0: its
        broadcasts, and the output rank's step as its answer says). On GPU call it only after the step's
        output was read back (the works are complete then; asking earlier could wait on the device)."""
        return self._answer_ok and not self._step_lagged and self.mc.all_succeeded(self._works)

    def failed_ranks(self) -> frozenset[int]:
        """Global ranks this rank saw fail in this step's collectives (the world group's local ranks are the
        global ones; the serving group's are shifted by `offset`), and those the output rank's answer named.
        Only for a step already known to have failed."""
        combines = {id(w) for w in self._combines}
        return self._answer_failed | frozenset(
            r + (self.offset if id(w) in combines else 0)
            for w in self._works
            if not self.mc.local_success(w)
            for r in self.mc.failed_ranks(w)
        )

    def _exchange_answer(self, source: int, out: torch.Tensor | None, tokens: int) -> torch.Tensor | None:
        """With a dedicated coordinator, after a BATCH step: the output rank ``source`` sends rank 0 its
        answer (`answer.py`: this step, its success, the ranks it saw fail, the batch's ``tokens`` output
        rows), then every rank takes part in a one-element broadcast from it on the world group, whose
        failure tells rank 0 that the output rank died.
        Returns, on rank 0, the answer's rows (``[tokens, hidden]``, float32 or float64, on the host; zeros
        when no answer of this step came, the step then untrusted; see `all_succeeded` and `failed_ranks`),
        elsewhere ``out`` unchanged. Reads the batch's rows back on the output rank (the host sync today's
        leader makes). Ends rank 0 (`ExitCode.STALLED`) after `UNANSWERED_LIMIT` unanswered steps in a row."""
        if self.rank == source and isinstance(self.answers, AnswerOutbox):
            self.answers.send(self._answer(out, tokens))
        work = dist.broadcast(self.answer_barrier, src=source, group=self.world.cpu, async_op=True)
        assert work is not None
        work.wait()
        self._works.append(work)
        self._note(work)
        if not self.is_leader:
            return out
        inbox = self.answers
        assert isinstance(inbox, AnswerInbox), "a dedicated coordinator's rank 0 has the answer inbox"
        none = torch.zeros(tokens, self.settings.model.hidden_size, dtype=torch.float64)
        if not self.mc.local_success(work) and source in self.mc.failed_ranks(work):
            self._answer_ok = False  # the output rank died: `failed_ranks` names it from this broadcast
            return none
        got = inbox.take(self.step_no, source, self.answer_wait_s)
        if got is None:
            self._answer_ok = False
            self.unanswered += 1
            log.error(
                "rank 0 step %d: no answer from rank %d within %.1fs, though it lives (%d steps in a row; "
                "its answers go to %s)",
                self.step_no,
                source,
                self.answer_wait_s,
                self.unanswered,
                inbox.address,
            )
            if self.unanswered >= UNANSWERED_LIMIT:
                self._exit(
                    ExitCode.STALLED,
                    f"no answer reached rank 0 ({inbox.address}) from the output rank {source} in "
                    f"{self.unanswered} steps in a row; members must reach member 0 on any port",
                )
            return none
        self.unanswered = 0
        if got.step != self.step_no:  # the output rank could not read this step's plan
            self._answer_ok = False
            return none
        if got.rows.shape[0] != tokens:
            log.error(
                "rank 0 step %d: an answer of %d rows for %d tokens", self.step_no, got.rows.shape[0], tokens
            )
            self._answer_ok = False
            return none
        self._answer_ok, self._answer_failed = got.ok, got.failed
        return got.rows

    def _answer(self, out: torch.Tensor | None, tokens: int) -> Answer:
        """The output rank's answer to this step (`out` None: it could not read the plan after `step_no`)."""
        hidden = self.settings.model.hidden_size
        if out is None:
            return Answer(self.rank, -1, self.step_no, False, frozenset(), torch.zeros(0, hidden))
        rows = out[:tokens].to("cpu")  # the read-back
        if rows.dtype not in (torch.float32, torch.float64):
            rows = rows.float()
        ok = self.all_succeeded() and bool(torch.isfinite(rows).all())
        failed = frozenset() if ok else self.failed_ranks()
        return Answer(self.rank, self.step_no, self.step_no - 1, ok, failed, rows)

    @contextlib.contextmanager
    def variant(self, *, ring: PlanRing | None = None, codec: PlanCodec | None = None) -> Iterator[None]:
        """Within the block, steps use ``ring`` and/or ``codec`` instead of this executor's own (a benchmark's
        attribution variants: what the copy events or the protocol's Python cost). Every rank must use the
        same variant for the same steps."""
        saved = self.ring, self.codec
        self.ring, self.codec = ring or self.ring, codec or self.codec
        try:
            yield
        finally:
            self.ring, self.codec = saved
