"""One rank process: its entry point, its start-up, and the composition of the runtime's jobs.

Who calls it: the pod supervisor (`serve.py`) spawns `rank_main` once per rank of the pod; the GPU benchmark
builds `RankRuntime` itself, with its own membership source, and drives steps through `RankRuntime.step`.

The jobs live in their own modules; `RankRuntime.start` builds them in this order on every rank:

- `agreement.py`: the TCPStore barrier and vote;
- `datapath.py`: the combines' data path, probed and agreed on by every rank of a fresh group (a joiner takes
  the group's); no allowed route passing ends the rank with `ExitCode.NO_DATA_PATH`;
- `admission.py`: a joiner's join, the survivors' RECOVER step, the leader's readiness check of joiners;
- `answer.py` (a dedicated coordinator's world only): rank 0's answer inbox, whose address it publishes in
  the TCPStore, and each serving rank's outbox to it;
- `execution.py`: the step executor (plan broadcast, then the forward, the recovery or the fence) and the
  step watchdog; `fence.py`: the fence;
- `leader.py` (rank 0 only): request batching, step planning, answers from trusted steps.

Global rank 0 (the leader) takes client requests from its queue, reads the membership source and sends each
step's plan (`protocol.StepPlan`); every other rank executes exactly what the plan says. Events to the
supervisor are `events.py`'s.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from eep_contract.env import DataPath
from eep_contract.exitcodes import ExitCode
from eep_worker import datapath
from eep_worker import expert_location as el
from eep_worker import protocol as P
from eep_worker.admission import Admission, registration_refused
from eep_worker.agreement import StoreAgreement
from eep_worker.answer import ADDRESS_KEY, AnswerInbox, AnswerOutbox
from eep_worker.events import Exiting, Outbox, Ready
from eep_worker.execution import StepExecutor, StepResult
from eep_worker.groups import GroupRegistry, group_specs
from eep_worker.leader import Leader, Requests, SnapshotSource
from eep_worker.metrics import QueueSink
from eep_worker.moe import ModelConfig, ShardedMoEModel
from eep_worker.mooncake import Mooncake
from eep_worker.protocol import StepPlan
from eep_worker.settings import Settings

__all__ = ["RankRuntime", "Rendezvous", "SourceFactory", "rank_main"]

log = logging.getLogger(__name__)
SourceFactory = Callable[[Settings], SnapshotSource]
"""Builds the leader's membership source (`membership.MembershipSource`-shaped: start/latest/stop)."""
Rendezvous = Callable[[Settings, int], dict[str, Any]]
"""A joiner's hello to the leader's rendezvous service: (settings, rank) -> info."""


def _die_with_parent() -> None:
    # A pod's ranks live and die together: SIGKILL of the supervisor must take its ranks down too.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def default_source(settings: Settings) -> SnapshotSource:
    from pathlib import Path  # noqa: PLC0415

    from eep_worker.membership import FileSource, ZmqSource, kube_source  # noqa: PLC0415

    if settings.membership_source == "kube":
        return kube_source(settings.cluster.namespace, settings.cluster.name)
    if settings.membership_source == "zmq":
        return ZmqSource(settings.membership_zmq)
    return FileSource(Path(settings.membership_file))


def default_rendezvous(settings: Settings, rank: int) -> dict[str, Any]:
    from eep_worker import ports  # noqa: PLC0415

    c = settings.cluster
    address = f"tcp://{c.coordinator_host}:{c.rendezvous_port}"
    return ports.ask(address, rank, settings.timeouts.join_timeout_s)


class RankRuntime:
    """One rank: builds its groups, model and jobs (`start`), then serves (`serve`) or is driven step by step
    (`step`). ``events`` is the pod's event queue; ``requests`` the client requests (rank 0 only)."""

    model: ShardedMoEModel
    """This rank's shard (after `start`; not on a dedicated coordinator's rank 0)."""
    data_path: datapath.Choice
    """The combines' data path (after `start`; not on a dedicated coordinator's rank 0)."""

    def __init__(
        self,
        settings: Settings,
        rank: int,
        events: Outbox,
        requests: Requests | None,
        *,
        source_factory: SourceFactory = default_source,
        rendezvous: Rendezvous | None = default_rendezvous,
    ) -> None:
        self.settings, self.rank, self.events, self.requests = settings, rank, events, requests
        self.source_factory, self.rendezvous = source_factory, rendezvous
        self.sink = QueueSink(events, rank)
        self.mc = Mooncake()
        self.world_size = settings.cluster.world_size
        self.is_leader = rank == 0
        self.serves = settings.cluster.serving_index(rank) >= 0
        """Holds experts (every rank but a dedicated coordinator's rank 0, which has no GPU either)."""
        self.on_gpu = settings.on_gpu(rank)
        self.leader: Leader | None = None

    # ------------------------------------------------------------------ start-up

    def start(self) -> None:
        """Groups, model shard and jobs; a joiner then joins. Reports `Ready` when this rank can serve."""
        s, c = self.settings, self.settings.cluster
        t0 = time.monotonic()
        if self.on_gpu:
            # Mooncake's peer-to-peer route takes a peer's GPU to be its group-local rank mod the GPU count
            # (docs/architecture.md, "a coordinator-only rank 0"): the serving group's local rank decides.
            torch.cuda.set_device(c.serving_index(self.rank) % torch.cuda.device_count())
            self.device = torch.device("cuda", torch.cuda.current_device())
            # All of this rank's GPU work on a non-blocking stream of its own, never torch's legacy default
            # stream: off the peer-to-peer route Mooncake's TCP transport copies GPU memory with cudaMemcpy
            # on the legacy stream, which then waits behind this rank's own spinning collective kernel (a
            # wrong sum after 7-45 s; docs/known-issues.md, "Members on different hosts").
            torch.cuda.set_stream(torch.cuda.Stream())  # type: ignore[no-untyped-call]
        else:
            self.device = torch.device("cpu")
        if s.rejoin and self.rendezvous is not None:
            info = self.rendezvous(s, self.rank)
            if info.get("world_size") != self.world_size:
                raise RuntimeError(f"leader runs a world of {info.get('world_size')}, not {self.world_size}")
            log.info("rank %d: rejoining (leader at epoch %s)", self.rank, info.get("epoch"))
        pause = s.pause
        window = pause.window_s
        log.log(
            logging.WARNING if pause.raised else logging.INFO,
            "rank %d: reconciliation window %.2fs (configured %.2fs): survivors reach the step fence within "
            "%.2fs of the first failure report (%d layers, collective timeout %.3fs, then %s per "
            "collective); recovery pause up to %.2fs",
            self.rank,
            window,
            s.timeouts.reconcile_window_s,
            pause.to_fence_s,
            s.model.num_layers,
            s.timeouts.collective_timeout_s,
            f"tail {s.timeouts.tail_timeout_s:.3f}s"
            if s.combine_timeout_s is None
            else f"device combines {s.combine_timeout_s:.3f}s",
            pause.pause_s,
        )
        self.mc.configure(
            host_ip=s.pod_ip,
            collective_timeout_s=s.timeouts.collective_timeout_s,
            reconcile_window_s=window,
            gpu_collectives=s.gpu_collectives,
        )
        store = dist.TCPStore(  # type: ignore[attr-defined]
            c.coordinator_host,
            c.coordinator_port,
            self.world_size,
            is_master=self.is_leader and not s.rejoin,
            wait_for_workers=False,
            timeout=timedelta(seconds=max(60.0, s.timeouts.join_timeout_s)),
        )
        try:
            self.registry = GroupRegistry.create(
                self.mc,
                backend=s.backend,
                store=store,
                rank=self.rank,
                # A dedicated coordinator's rank 0 does not know the serving members' size: no columns then.
                specs=group_specs(
                    self.world_size,
                    c.rank_count,
                    subgroups=s.subgroups and not c.dedicated,
                    dedicated=c.dedicated,
                ),
                is_extension=lambda spec: s.rejoin,
                device=self.device,
                device_scope=self._device_scope,
            )
        except RuntimeError as e:
            if registration_refused(e, rejoin=s.rejoin):
                self.exit(
                    ExitCode.JOIN_REFUSED,
                    f"Mooncake refused this joiner's registration (an earlier incarnation of rank "
                    f"{self.rank} is still registered): {e}",
                )
            raise
        self.world = self.registry.world
        m = s.model
        config = ModelConfig(
            num_layers=m.num_layers,
            hidden_size=m.hidden_size,
            num_experts=m.num_experts,
            top_k=m.top_k,
            seed=m.seed,
        )
        metadata: el.ExpertLocationMetadata | None = None
        model: ShardedMoEModel | None = None
        path: datapath.CombinePath | None = None
        if self.serves:
            # The placement is over the serving ranks (local index = rank - first serving rank); with a
            # dedicated coordinator every serving member can die in place, the first one included.
            metadata = el.build_placement(
                m.num_layers,
                m.num_experts,
                len(c.serving),
                c.rank_count,
                m.physical_per_rank,
                device=self.device,
                every_member=c.dedicated,
            )
            model = self.model = ShardedMoEModel.build(
                config, metadata, c.serving_index(self.rank), self.device
            )
            self.data_path = self._select_data_path(store, config.dtype)
            path = self.data_path.path
        self.admission = Admission(
            s,
            self.rank,
            mc=self.mc,
            registry=self.registry,
            agreement=StoreAgreement(store, self.rank, s.timeouts.join_timeout_s),
            sink=self.sink,
            outbox=self.events,
            exit_rank=self.exit,
        )
        answers: AnswerInbox | AnswerOutbox | None = None
        if c.dedicated and self.is_leader:
            answers = AnswerInbox(s.pod_ip, hidden=m.hidden_size, max_rows=m.max_batch_tokens)
            store.set(ADDRESS_KEY, answers.address)
        elif c.dedicated:
            answers = AnswerOutbox(bytes(store.get(ADDRESS_KEY)).decode())
        self.executor = StepExecutor(
            s,
            self.rank,
            mc=self.mc,
            registry=self.registry,
            model=model,
            metadata=metadata,
            admission=self.admission,
            sink=self.sink,
            outbox=self.events,
            exit_rank=self.exit,
            path=path,
            answers=answers,
        )
        self.executor.warm_up()
        if s.warmup_delay_s > 0:
            log.info("rank %d: simulated weight load, %.2fs", self.rank, s.warmup_delay_s)
            time.sleep(s.warmup_delay_s)
        log.info(
            "rank %d: groups and model ready in %.2fs (rejoin=%s)", self.rank, time.monotonic() - t0, s.rejoin
        )
        if s.rejoin:
            self._join()
        else:
            self.events.put(Ready(self.rank))
        self.sink.membership(len(self.executor.dispatch_live), self.executor.epoch)
        if self.is_leader:
            assert self.requests is not None, "rank 0 needs the client request queue"
            source = self.source_factory(s)
            source.start()
            self.leader = Leader(
                s,
                executor=self.executor,
                admission=self.admission,
                source=source,
                requests=self.requests,
                sink=self.sink,
                outbox=self.events,
                exit_rank=self.exit,
            )

    def _select_data_path(self, store: Any, dtype: torch.dtype) -> datapath.Choice:
        """The combines' data path (`datapath.select`) on the serving group, whose ranks are numbered from 0
        there: probed by every serving rank of a fresh group, read from the store by a joiner. Ends the rank
        with `ExitCode.NO_DATA_PATH` when no allowed route passes."""
        s, serving = self.settings, self.registry.serving
        assert serving.device is not None and serving.cpu is not None
        device_pg, cpu_pg = serving.device, serving.cpu
        index, size = s.cluster.serving_index(self.rank), len(s.cluster.serving)
        numel = s.model.max_batch_tokens * s.model.hidden_size
        build: dict[DataPath, Callable[[], datapath.CombinePath]] = {
            DataPath.DEVICE: lambda: datapath.DevicePath(device_pg, s.backend),
            DataPath.STAGED: lambda: datapath.StagedPath(cpu_pg, self.device, numel=numel, dtype=dtype),
        }
        try:
            where = datapath.UNKNOWN_PLACEMENT
            if s.data_path is DataPath.AUTO and not s.rejoin:
                where = datapath.placement(store, rank=index, world_size=size, node=s.node_name, rdma=s.rdma)
            choice = datapath.select(
                s.data_path,
                build=build,
                rank=index,
                world_size=size,
                rejoin=s.rejoin,
                sizes=datapath.probe_sizes(numel),
                device=self.device,
                success=self.mc.local_success,
                agreement=StoreAgreement(
                    store, index, max(s.timeouts.join_timeout_s, s.probe_timeout_s + s.probe_drain_s)
                ),
                store=store,
                bound_s=s.probe_timeout_s,
                drain_s=s.probe_drain_s,
                where=where,
            )
        except datapath.NoDataPath as e:
            self.exit(ExitCode.NO_DATA_PATH, str(e))
        log.info("rank %d: data path %s", self.rank, choice.describe())
        return choice

    def _device_scope(self) -> contextlib.AbstractContextManager[None]:
        """Where device groups are created: with `TimeoutSettings.device_timeout_s` if set (experimental)."""
        t = self.settings.timeouts
        if not t.device_timeout_s:
            return contextlib.nullcontext()
        log.warning("rank %d: device groups created with a %.3fs timeout", self.rank, t.device_timeout_s)
        return self.mc.device_group_timeout(t.device_timeout_s, t.collective_timeout_s)

    def _join(self) -> None:
        assert self.executor.metadata_cpu is not None, "only a serving rank rejoins"
        joined = self.admission.join(self.executor.metadata_cpu)
        control = joined.control
        self.executor.adopt(joined.metadata, control.epoch, control.step)
        log.info(
            "rank %d: joined at epoch %d step %d (metadata from rank %d)",
            self.rank,
            control.epoch,
            control.step,
            control.source,
        )
        self.events.put(Ready(self.rank))

    # ------------------------------------------------------------------ serving

    def serve(self) -> NoReturn:
        """Serve forever, under the step watchdog: the leader's loop on rank 0, the follower's elsewhere. Call
        after `start`."""
        self.executor.watchdog.start()
        if self.leader is not None:
            self.leader.lead()
        self.follow()

    def follow(self) -> NoReturn:
        """A follower: execute every plan the leader sends."""
        while True:
            self.executor.run(None)
            self.sink.steps(1)

    def exit(self, code: int, reason: str) -> NoReturn:
        """End this rank (`events.Exit`): log, report `Exiting`, exit the process with ``code``."""
        log.error("rank %d: exiting with code %d: %s", self.rank, code, reason)
        self.sink.flush()
        try:
            self.events.put(Exiting(self.rank, code, reason))
            time.sleep(0.2)  # let the queue's feeder thread deliver it
        finally:
            # Mooncake's teardown can abort; nothing is left to clean up that the OS does not.
            os._exit(code)

    # ------------------------------------------------------------------ driving steps (benchmarks)

    def step(self, tokens: Sequence[int] | None = None) -> StepResult:
        """One elastic step as serving runs it, outside the serving loop. Collective: every rank calls it
        together, after `start` and before `serve`. The leader passes the batch's ``tokens`` (a BATCH plan at
        the current epoch over the ranks it dispatches to); the others pass None and execute the plan they
        receive. Adds no host-device sync; read the output back before asking `step_succeeded`. Not watched
        by the step watchdog (that starts with `serve`): a driver's own steps in between would look hung."""
        ex = self.executor
        plan = (
            StepPlan(ex.epoch, ex.step_no + 1, P.Kind.BATCH, tuple(tokens), ex.dispatch_live)
            if tokens is not None
            else None
        )
        return ex.run(plan)

    def step_succeeded(self) -> bool:
        """Whether every collective of the last step succeeded on this rank (`StepExecutor.all_succeeded`)."""
        return self.executor.all_succeeded()


def rank_main(settings: Settings, rank: int, events: Outbox, requests: Requests | None) -> None:
    """Entry point of a spawned rank process."""
    _die_with_parent()
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` dumps every thread's stack (a hung collective)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
    )
    rt = RankRuntime(settings, rank, events, requests)
    try:
        rt.start()
        rt.serve()
    except Exception as e:
        log.exception("rank %d failed", rank)
        rt.exit(1, f"{type(e).__name__}: {e}")
