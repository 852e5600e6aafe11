"""One rank process: groups, model shard, the step loop (leader or follower), recovery and join.

Who calls it: the pod supervisor (`serve.py`) spawns `rank_main` once per rank of the pod; the GPU benchmark
builds `RankRuntime` directly with its own membership source. Global rank 0 (the leader) takes client
requests from its queue, reads the membership source and sends each step's plan (`protocol`); every other
rank executes exactly what the plan says.

Per step, on every rank: the plan broadcast (CPU world group), then one combine all-reduce per layer over
``max_batch_tokens`` padded rows (device world group) -- or, for a RECOVER plan, the recovery sequence. Only
the world group is used in the hot path: a failure is then detected on one group only.

Trust. The leader answers a batch only from a step in which every one of ITS collectives succeeded
(`local_success`; checked after the output is read back, so it adds no sync) and its CPU active-ranks mirror
did not change. Otherwise it re-plans the same batch with the live set it now sees; the plan carries that
live set, so every rank rebuilds the same dispatch map at the same step. A follower whose own collectives
failed does nothing special: its result is never used.

Fence. When the leader saw ranks fail, its next plan is a FENCE naming them: every rank stops issuing
collectives until Mooncake's coordinator has pushed the view without them (`_fence`). Mooncake restarts its
per-collective buffer-slot counter when a group's active set changes; a survivor that applied the new view
between two collectives and another that applied it inside one then wait on different slots forever
(mooncake-transfer-engine 0.3.13: about half of the mid-stream kills hung the survivors). Parked at the
fence, every survivor applies the view between the same two collectives. This needs the leader to reach the
fence before the coordinator's reconciliation window closes; `Settings.fence_window_s` sizes the window.
"""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from eep_worker import expert_location as el
from eep_worker import protocol as P
from eep_worker.groups import GroupRegistry, group_specs
from eep_worker.metrics import QueueSink
from eep_worker.moe import ModelConfig, ShardedMoEModel
from eep_worker.mooncake import Mooncake
from eep_worker.plan_ring import PlanRing
from eep_worker.recovery import Control, exchange_metadata, join, live_ranks, recover_survivor
from eep_worker.settings import Settings

__all__ = ["RankRuntime", "SourceFactory", "rank_main"]

log = logging.getLogger("eep_worker.rank")
SourceFactory = Callable[[Settings], Any]
"""Builds the leader's membership source (`membership.MembershipSource`-shaped: start/latest/stop)."""
Rendezvous = Callable[[Settings, int], dict[str, Any]]
"""A joiner's hello to the leader's rendezvous service: (settings, rank) -> info."""
LIVENESS_TIMEOUT_S = 0.2
"""How long the leader waits for a joiner's pod to accept a connection before it sends a RECOVER plan."""


def _die_with_parent() -> None:
    # A pod's ranks live and die together: SIGKILL of the supervisor must take its ranks down too.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def default_source(settings: Settings) -> Any:
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
    def __init__(
        self,
        settings: Settings,
        rank: int,
        events: Any,
        requests: Any,
        *,
        source_factory: SourceFactory = default_source,
        rendezvous: Rendezvous | None = default_rendezvous,
    ) -> None:
        self.s, self.rank, self.events, self.requests = settings, rank, events, requests
        self.source_factory, self.rendezvous = source_factory, rendezvous
        self.sink = QueueSink(events, rank)
        self.mc = Mooncake()
        self.world_size = settings.cluster.world_size
        self.is_leader = rank == 0
        self.on_gpu = settings.backend == "mooncake"
        self.pending: list[P.Request] = []
        self.source: Any = None
        self.epoch = 0
        self.step_no = 0
        self.dispatch_live: frozenset[int] = frozenset(range(self.world_size))
        self._works: list[dist.Work] = []
        self._step_started: float | None = None
        self._step_limit_s = 0.0
        t = settings.timeouts
        self.stall_limit_s = max(30.0, 10 * (t.collective_timeout_s + t.reconcile_window_s))
        """A step (never a recovery) that takes longer than this has hung."""

    # ------------------------------------------------------------------ start-up

    def start(self) -> None:
        s, c = self.s, self.s.cluster
        t0 = time.monotonic()
        if self.on_gpu:
            torch.cuda.set_device(self.rank % torch.cuda.device_count())
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")
        if s.rejoin and self.rendezvous is not None:
            info = self.rendezvous(s, self.rank)
            if info.get("world_size") != self.world_size:
                raise RuntimeError(f"leader runs a world of {info.get('world_size')}, not {self.world_size}")
            log.info("rank %d: rejoining (leader at epoch %s)", self.rank, info.get("epoch"))
        window = s.fence_window_s
        if window > s.timeouts.reconcile_window_s:
            log.warning(
                "rank %d: reconciliation window raised from %.2fs to %.2fs: survivors must reach the step "
                "fence ((layers + 2) x collective timeout + 1 s) before Mooncake applies a new view",
                self.rank,
                s.timeouts.reconcile_window_s,
                window,
            )
        self.mc.configure(
            host_ip=s.pod_ip,
            collective_timeout_s=s.timeouts.collective_timeout_s,
            reconcile_window_s=window,
        )
        self.store = store = dist.TCPStore(  # type: ignore[attr-defined]
            c.coordinator_host,
            c.coordinator_port,
            self.world_size,
            is_master=self.is_leader and not s.rejoin,
            wait_for_workers=False,
            timeout=timedelta(seconds=max(60.0, s.timeouts.join_timeout_s)),
        )
        self.registry = GroupRegistry.create(
            self.mc,
            backend=s.backend,
            store=store,
            rank=self.rank,
            specs=group_specs(self.world_size, c.rank_count, subgroups=s.subgroups),
            is_extension=lambda spec: s.rejoin,
        )
        self.world = self.registry.world
        m = s.model
        self.config = ModelConfig(
            num_layers=m.num_layers,
            hidden_size=m.hidden_size,
            num_experts=m.num_experts,
            top_k=m.top_k,
            seed=m.seed,
        )
        self.metadata = el.build_placement(
            m.num_layers,
            m.num_experts,
            self.world_size,
            c.rank_count,
            m.physical_per_rank,
            device=self.device,
        )
        self.metadata_cpu = self.metadata.to_cpu()
        self.model = ShardedMoEModel.build(self.config, self.metadata, self.rank, self.device)
        width = P.HEADER + m.max_batch_tokens
        self.ring = PlanRing(
            width,
            pin=self.on_gpu,
            event=torch.cuda.Event if self.on_gpu else None,
            # Passed to `Event.record` explicitly: without it, every record looks the stream up in Python.
            stream=torch.cuda.current_stream() if self.on_gpu else None,
        )
        # The whole received plan goes to the device in one copy from the start of its pinned buffer, and
        # the model reads the tokens through a view made once: copying from a fresh slice of the pinned
        # buffer each step took twice the host time of the plain step's whole-buffer copy (py-spy, H200 host).
        self.dev_plan = torch.zeros(width, dtype=torch.int64, device=self.device)
        self.tokens = self.dev_plan[P.HEADER :]
        self.zeros = torch.zeros(
            m.max_batch_tokens, m.hidden_size, dtype=self.config.dtype, device=self.device
        )
        # Warm up without collectives, so the first served step does not pay for first-call setup.
        self.model.forward(self.tokens, self.metadata.logical_to_rank_dispatch_physical_map, lambda t: t)
        if s.warmup_delay_s > 0:
            log.info("rank %d: simulated weight load, %.2fs", self.rank, s.warmup_delay_s)
            time.sleep(s.warmup_delay_s)
        log.info(
            "rank %d: groups and model ready in %.2fs (rejoin=%s)", self.rank, time.monotonic() - t0, s.rejoin
        )
        if s.rejoin:
            self._join()
        else:
            self.events.put(("ready", self.rank))
        self.sink.membership(len(self.dispatch_live), self.epoch)
        if self.is_leader:
            self.source = self.source_factory(s)
            self.source.start()
        threading.Thread(target=self._watch_steps, name="step-watchdog", daemon=True).start()

    def _watch_steps(self) -> None:
        """Turn a hung step into a clear exit. Before the fence (`_fence`), mooncake-transfer-engine 0.3.13
        left survivors that noticed a death in different collectives blocked for good; a view that still lands
        before the fence could do the same. Nothing in-process can unblock a collective, so the rank exits
        with EXIT_STALLED and the pod ends: the operator's group restart handles it."""
        while True:
            time.sleep(1.0)
            started, limit = self._step_started, self._step_limit_s
            if started is not None and time.monotonic() - started > limit:
                self._exit(P.EXIT_STALLED, f"a step did not finish within {limit:.0f}s (collective hung)")

    def _join(self) -> None:
        self.events.put(("joining", self.rank))
        # Where the leader can check that this joiner's pod still lives (its supervisor's HTTP port).
        # Mooncake's `get_peer_state` still reported a joiner that died in `join_group` as ready, and
        # recovering a dead joiner blocked the survivors for Mooncake's 20 s admission timeout and once left
        # them with different views (one Applied, one Rejected). A heartbeat thread in this process did not
        # run while `join_group` blocked; the supervisor is another process.
        self.store.set(f"eep/joiner/{self.rank}", f"{self.s.pod_ip}:{self.s.http_port}")
        join(
            self.mc,
            self.registry,
            timeout_s=self.s.timeouts.join_timeout_s,
            sink=self.sink,
            on_timeout=lambda: self._exit(P.EXIT_JOIN_FAILED, "join did not complete in time"),
        )
        epoch, _, everyone = bytes(self.store.get(f"eep/admit/{self.rank}")).decode().partition(":")
        self._admitted_barrier(int(epoch), int(everyone), P.EXIT_JOIN_FAILED)
        received, control = exchange_metadata(self.registry, None, None, sink=self.sink)
        if not torch.equal(received.physical_to_logical_map.cpu(), self.metadata_cpu.physical_to_logical_map):
            self._exit(P.EXIT_JOIN_FAILED, "received expert placement differs from this rank's shard")
        self.metadata, self.metadata_cpu = received, received.to_cpu()
        self.epoch, self.step_no = control.epoch, control.step
        self.dispatch_live = frozenset()  # the next plan's live set rebuilds the dispatch map
        log.info(
            "rank %d: joined at epoch %d step %d (metadata from rank %d)",
            self.rank,
            self.epoch,
            self.step_no,
            control.source,
        )
        self.events.put(("ready", self.rank))

    def _admitted_barrier(self, epoch: int, everyone: int, code: int) -> None:
        """Survivors and joiners, out of band (the TCPStore): nobody issues a collective on the new view until
        every rank has returned from all its `recover_ranks` / `join_group` calls. A joiner sees itself
        active before every survivor's proposal has returned. Without this barrier the first collective after
        a join stalled in one bench round of about 25 joins seen on mooncake-cpu that day; in that round the
        ranks entered it up to 0.15 s apart, one survivor still inside `recover_ranks`."""
        key = f"eep/admitted/{epoch}"
        deadline = time.monotonic() + self.s.timeouts.join_timeout_s
        n = self.store.add(key, 1)
        while n < everyone:
            if time.monotonic() > deadline:
                self._exit(code, f"{n} of {everyone} ranks admitted at epoch {epoch} within the join timeout")
            time.sleep(0.002)
            n = self.store.add(key, 0)

    def _agree(self, name: str, voters: list[int], vote: bool) -> bool:
        """An all-or-nothing vote through the TCPStore: every voter reads every vote, so all decide the same.
        A voter that has not voted within the join timeout counts as a no (the others then give up too; the
        silent one is stuck or dead, and the step watchdog or the operator handles it)."""
        key = f"eep/vote/{name}"
        self.store.set(f"{key}/{self.rank}", "1" if vote else "0")
        keys = [f"{key}/{r}" for r in voters]
        try:
            self.store.wait(keys, timedelta(seconds=self.s.timeouts.join_timeout_s))
        except RuntimeError:  # torch's DistStoreError (a RuntimeError): some voter never voted
            return False
        return all(bytes(self.store.get(k)) == b"1" for k in keys)

    def _leader_lost(self) -> None:
        self._exit(P.EXIT_LEADER_LOST, "member 0 (rank 0) is gone: not recoverable in place")

    def _exit(self, code: int, reason: str) -> None:
        log.error("rank %d: exiting with code %d: %s", self.rank, code, reason)
        self.sink.flush()
        try:
            self.events.put(("exit", self.rank, code, reason))
            time.sleep(0.2)  # let the queue's feeder thread deliver it
        finally:
            # Mooncake's teardown can abort; nothing is left to clean up that the OS does not.
            os._exit(code)

    # ------------------------------------------------------------------ every rank

    def _set_live(self, live: frozenset[int]) -> None:
        """Rebuild the dispatch map for `live` (the plan's view). Runs only when the live set changes."""
        if live == self.dispatch_live:
            return
        flags = [1 if r in live else 0 for r in range(self.world_size)]
        uncovered = el.uncovered_experts(self.metadata_cpu, flags)
        if uncovered:
            self._exit(P.EXIT_UNCOVERED, f"experts without a live replica: {uncovered[:8]}")
        active = torch.tensor(flags, dtype=torch.int32, device=self.device)
        el.rebalance(self.metadata, active, out=self.metadata.logical_to_rank_dispatch_physical_map)
        self.metadata_cpu = self.metadata.to_cpu()
        self.dispatch_live = live
        self.sink.membership(len(live), self.epoch)
        log.info("rank %d epoch %d: dispatch over live ranks %s", self.rank, self.epoch, sorted(live))
        if self.is_leader:
            self.events.put(("state", self.epoch, sorted(live)))

    def _combine(self, t: torch.Tensor) -> torch.Tensor:
        work = dist.all_reduce(t, group=self.world.device, async_op=True)
        assert work is not None
        work.wait()
        self._works.append(work)
        return t

    def _all_succeeded(self) -> bool:
        """Whether every collective of this step succeeded here. On GPU call it only after the step's output
        was read back (the works are complete then; asking earlier could wait on the device)."""
        return self.mc.all_succeeded(self._works)

    def _failed_ranks(self) -> frozenset[int]:
        """Global ranks this rank saw fail in this step's collectives (all on the world group, whose local
        ranks are the global ones). Only for a step already known to have failed."""
        return frozenset(
            r for w in self._works if not self.mc.local_success(w) for r in self.mc.failed_ranks(w)
        )

    def _fence(self, plan: P.Plan) -> None:
        """Issue nothing until Mooncake's new view has reached every group of this rank (module doc).

        The coordinator applies one decision when its reconciliation window closes: the world group's CPU
        mirror shows which of the suspected ranks (`plan.failed`) it deactivated, and the fence then waits
        until every group shows those inactive. The window closes at most one window after the first failure
        report, which came before the leader's fence; so after `Settings.fence_settle_s` with no suspected
        rank deactivated, no view is coming: the suspects were slow, not dead (Mooncake's failure hints also
        name live ranks at times), and serving goes on with them. A rank that Mooncake deactivated itself
        leaves (`EXIT_FENCED`: the operator restarts it with the join flag)."""
        t0 = time.monotonic()
        world = self.registry.world
        gone: list[int] = []
        pending: list[str] = []
        while True:
            waited = time.monotonic() - t0
            flags = world.cpu_mirror.tolist()
            if not flags[self.rank]:
                self._exit(P.EXIT_FENCED, "Mooncake deactivated this rank")
            if not flags[0]:
                self._leader_lost()
            gone = [r for r in sorted(plan.failed) if not flags[r]]
            if gone:
                pending = [
                    group.name
                    for group in self.registry.member_groups()
                    for mirror in (group.device_mirror, group.cpu_mirror)
                    # a device read on GPU: fine here, nothing is in flight
                    if any(mirror.tolist()[i] for i in group.spec.locals_of(gone))
                ]
                if not pending:
                    break
            if waited > self.s.fence_settle_s:
                break
            time.sleep(0.002)
        self.sink.phase("fence", waited)
        kept = sorted(plan.failed - set(gone))
        log.log(
            logging.WARNING if kept or pending else logging.INFO,
            "rank %d epoch %d step %d: fence passed after %.3fs: ranks %s inactive%s%s",
            self.rank,
            plan.epoch,
            plan.step,
            waited,
            gone,
            f"; suspected ranks {kept} kept active by Mooncake, serving on with them" if kept else "",
            f"; groups {sorted(set(pending))} still without the new view" if pending else "",
        )

    def run_plan(self, sent: P.Plan | None) -> tuple[P.Plan | None, torch.Tensor | None]:
        """One step on this rank: the plan broadcast (rank 0 passes the plan it sends; the others None),
        then what it says. Returns (plan or None when the received one was bad, output rows
        ``[max_batch, hidden]`` or None). Adds no host-device sync on GPU."""
        self._step_started, self._step_limit_s = time.monotonic(), self.stall_limit_s
        buf, array = self.ring.next()
        if sent is not None:
            P.encode_into(sent, array)
        self._works = []
        work = dist.broadcast(buf, src=0, group=self.world.cpu, async_op=True)
        assert work is not None
        work.wait()
        self._works.append(work)
        try:
            plan = (
                sent
                if sent is not None
                else P.decode_header(
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
                self._leader_lost()
            # Keep the group in step: the same combines as a BATCH plan, contributing nothing.
            log.warning("rank %d: ignoring a bad plan after step %d: %s", self.rank, self.step_no, e)
            for _ in range(self.config.num_layers):
                self._combine(self.zeros.clone())
            return None, None
        self.step_no = plan.step
        if plan.epoch != self.epoch:
            self.epoch = plan.epoch
            self.sink.membership(len(plan.live), plan.epoch)
            if self.is_leader:
                self.events.put(("state", plan.epoch, sorted(plan.live)))
        if plan.kind is P.Kind.RECOVER:
            # Waits for joiners up to the join timeout, then Mooncake's admission and the metadata broadcast.
            self._step_limit_s = self.stall_limit_s + 2 * self.s.timeouts.join_timeout_s
            self._recover(plan)
            return plan, None
        if plan.kind is P.Kind.FENCE:
            self._step_started = None  # bounded by Settings.fence_settle_s
            self._fence(plan)
            return plan, None
        self._set_live(plan.live)
        self.dev_plan.copy_(buf, non_blocking=self.on_gpu)
        out = self.model.forward(
            self.tokens, self.metadata.logical_to_rank_dispatch_physical_map, self._combine
        )
        return plan, out

    def _recover(self, plan: P.Plan) -> None:
        """Survivors, at the RECOVER plan's step: admit the joiners on every group, then the metadata."""
        t0 = time.monotonic()
        log.info("rank %d epoch %d: recovering ranks %s", self.rank, plan.epoch, sorted(plan.joining))
        everyone = len(plan.live | plan.joining)
        for j in sorted(plan.joining):
            # Read by joiner j once it is admitted, which cannot happen before this rank's recover_ranks.
            self.store.set(f"eep/admit/{j}", f"{plan.epoch}:{everyone}")
        outcome = recover_survivor(
            self.mc,
            self.registry,
            plan.joining,
            survivors=plan.live - plan.joining,
            agree=lambda name, voters, vote: self._agree(f"{plan.epoch}/{name}", voters, vote),
            epoch=plan.epoch,
            timeout_s=self.s.timeouts.join_timeout_s,
            sink=self.sink,
        )
        ok = outcome.ok
        if ok:
            self._admitted_barrier(plan.epoch, everyone, P.EXIT_STALLED)
            try:
                control = Control(plan.epoch, plan.step, plan.source) if self.is_leader else None
                received, _ = exchange_metadata(
                    self.registry,
                    self.metadata if self.rank == plan.source else None,
                    control,
                    sink=self.sink,
                )
                if not torch.equal(
                    received.physical_to_logical_map.cpu(), self.metadata_cpu.physical_to_logical_map
                ):
                    raise ValueError("received expert placement differs from this rank's")
            except (RuntimeError, ValueError) as e:
                ok = False
                log.error("rank %d epoch %d: metadata broadcast failed: %s", self.rank, plan.epoch, e)
        total = time.monotonic() - t0
        self.sink.phase("total", total)
        self.sink.recovery("succeeded" if ok else "failed")
        log.info(
            "rank %d epoch %d: recovery %s in %.3fs %s",
            self.rank,
            plan.epoch,
            "succeeded" if ok else "failed",
            total,
            outcome.reason,
        )
        if self.is_leader:
            self.events.put(("recovered", plan.epoch, ok, total, outcome.reason))

    def follow(self) -> None:
        while True:
            self.run_plan(None)
            self.sink.steps(1)

    # ------------------------------------------------------------------ leader

    def _collect(self) -> list[P.Request]:
        budget = self.s.model.max_batch_tokens
        batch: list[P.Request] = []
        used = 0
        if not self.pending:
            try:
                self.pending.append(self.requests.get(timeout=self.s.idle_step_s))
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

    def _alive(self, rank: int) -> bool:
        """Whether the joiner's pod accepts a TCP connection on the address it published (see `_join`)."""
        key = f"eep/joiner/{rank}"
        if not self.store.check([key]):
            return False
        host, _, port = bytes(self.store.get(key)).decode().rpartition(":")
        if port == "0":
            return True  # no HTTP server (the GPU benchmark's in-process ranks): trust Mooncake
        try:
            with socket.create_connection((host, int(port)), timeout=LIVENESS_TIMEOUT_S):
                return True
        except OSError:
            return False

    def _peer_ready(self, joining: frozenset[int]) -> bool:
        """Whether every joining rank waits in the world group's first `join_group` and its pod lives."""
        first = self.world.pgs()[0]
        if not self.mc.peer_ready(first, self.world.spec.locals_of(sorted(joining))):
            return False
        return all(self._alive(r) for r in sorted(joining))

    def next_plan(self, batch: list[P.Request], view: P.LeaderView) -> tuple[P.Plan, P.LeaderView]:
        """Build the next plan from the membership snapshot and the batch; returns it and the new view."""
        snap = self.source.latest() if self.source is not None else None
        now = time.monotonic()
        live = live_ranks(self.world)
        pending = snap.joining_ranks - live if snap is not None and snap.epoch > view.epoch else frozenset()
        ready = bool(pending) and self._peer_ready(pending)
        decision = P.decide_membership(
            P.LeaderView(view.epoch, live, view.pending_since),
            snap,
            ready=ready,
            now=now,
            join_timeout_s=self.s.timeouts.join_timeout_s,
        )
        if decision.gave_up:
            log.error(
                "rank 0 epoch %d: joining ranks %s not ready within %.1fs; serving degraded without them",
                decision.epoch,
                sorted(decision.gave_up),
                self.s.timeouts.join_timeout_s,
            )
            self.sink.recovery("failed")
            self.events.put(("recovered", decision.epoch, False, 0.0, "join timeout"))
        step = self.step_no + 1
        if decision.recover:
            source = P.broadcast_source(live, decision.recover, decision.epoch)
            plan = P.Plan(decision.epoch, step, P.Kind.RECOVER, (), live, decision.recover, source)
        else:
            tokens = tuple(t for r in batch for t in r.tokens)
            plan = P.Plan(decision.epoch, step, P.Kind.BATCH, tokens, live)
        return plan, P.LeaderView(decision.epoch, live, decision.pending_since)

    def lead(self) -> None:
        view = P.LeaderView(self.epoch, self.dispatch_live)
        while True:
            batch = self._collect()
            plan, view = self.next_plan(batch, view)
            if plan.kind is P.Kind.RECOVER:
                self.pending[:0] = batch  # served right after the recovery step
                batch = []
            mirror = self.world.cpu_mirror.clone()
            _, out = self.run_plan(plan)
            self.sink.steps(1, degraded=int(len(plan.live) < self.world_size))
            if out is None:
                continue
            rows = out[: len(plan.tokens)].to("cpu", torch.float64) if batch else None
            trusted = self._all_succeeded() and torch.equal(self.world.cpu_mirror, mirror)
            if not trusted:
                # A rank failed during this step: the output may be partial. Fence, then re-plan the same
                # batch; the next plan carries the live set the leader sees then, so every rank rebalances at
                # the same step.
                failed = self._failed_ranks() - {self.rank}  # a FENCE never names the leader
                log.warning(
                    "rank 0 epoch %d step %d: not trusted (failed %s, live now %s); re-running %d requests",
                    plan.epoch,
                    plan.step,
                    sorted(failed),
                    sorted(live_ranks(self.world)),
                    len(batch),
                )
                self.sink.steps(0, rerun=1)
                self.events.put(("untrusted", plan.step, time.time()))
                self.pending[:0] = batch
                if failed:
                    fence = P.Plan(plan.epoch, self.step_no + 1, P.Kind.FENCE, (), plan.live, failed=failed)
                    self.run_plan(fence)
                continue
            if rows is None:
                continue
            values = rows.tolist()
            i = 0
            for r in batch:
                self.events.put(
                    (
                        "response",
                        r.request_id,
                        values[i : i + len(r.tokens)],
                        plan.epoch,
                        sorted(plan.live),
                        len(plan.live) < self.world_size,
                    )
                )
                i += len(r.tokens)


def rank_main(settings: Settings, rank: int, events: Any, requests: Any) -> None:
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
        rt.lead() if rt.is_leader else rt.follow()
    except Exception as e:
        log.exception("rank %d failed", rank)
        rt._exit(1, f"{type(e).__name__}: {e}")
