"""Survivor recovery and joiner admission: the Mooncake calls, their order, and the metadata broadcast.

Who calls it: admission (`admission.py`). Survivors call `recover_survivor` when a RECOVER plan arrives
(every survivor at the same step, because the plan says so); a rank started with --rejoin calls `join` once
its groups exist. Both then run `exchange_metadata` together. Each phase logs one line with its duration and
reports it to the metrics sink.

Order (the same on every rank): the groups this rank is a member of, `GroupRegistry.member_groups()` (the
world first, then the subgroups by name); in each, the device group before the CPU group. A joiner shows as
ready in `get_peer_state` on a group only once it waits in that group's `join_group`
(mooncake-transfer-engine 0.3.13), so survivors wait (bounded) before each group's `recover_ranks` in turn,
and agree on it first: a survivor that called `recover_ranks` alone would block, so the group's survivors
vote "ready" through `agree` (out of band, the TCPStore: `agreement.StoreAgreement.vote`) and all recover or
all give up. Not a collective on the group: one can fail on a single rank while a joiner registers, and that
rank would give up alone (docs/known-issues.md, "Mooncake's failure hints can name live ranks").
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from eep_contract.reasons import RecoveryPhase
from eep_worker import expert_location as el
from eep_worker.groups import Group, GroupRegistry
from eep_worker.metrics import MetricsSink

if TYPE_CHECKING:  # the rank passes its Mooncake in
    from eep_worker.mooncake import Mooncake

__all__ = ["RecoveryOutcome", "exchange_metadata", "join", "live_ranks", "recover_survivor"]

log = logging.getLogger(__name__)
Clock = Callable[[], float]
CONTROL_MAGIC = 0x45454D44  # "EEMD"


@dataclasses.dataclass(frozen=True)
class RecoveryOutcome:
    ok: bool
    reason: str
    """Why it failed ("" when it succeeded)."""


@dataclasses.dataclass
class _Phases:
    rank: int
    sink: MetricsSink
    clock: Clock
    epoch: int

    @contextmanager
    def phase(self, name: RecoveryPhase) -> Iterator[None]:
        t0 = self.clock()
        try:
            yield
        finally:
            dt = self.clock() - t0
            self.sink.phase(name, dt)
            log.info("rank %d epoch %d: phase %s took %.3fs", self.rank, self.epoch, name, dt)


def live_ranks(world: Group) -> frozenset[int]:
    """Global ranks active in the world's CPU mirror (host read of a CPU tensor: no device sync)."""
    return frozenset(r for r, flag in zip(world.spec.ranks, world.cpu_mirror.tolist(), strict=True) if flag)


Agree = Callable[[str, list[int], bool], bool]
"""(vote name, the voters' global ranks, this rank's vote) -> True when every voter voted True. Every voter
gets the same answer."""


def recover_survivor(
    mc: Mooncake,
    registry: GroupRegistry,
    joining: frozenset[int],
    *,
    survivors: frozenset[int],
    agree: Agree,
    epoch: int,
    timeout_s: float,
    sink: MetricsSink,
    clock: Clock = time.monotonic,
    poll_s: float = 0.02,
) -> RecoveryOutcome:
    """Admit `joining` on every group this rank belongs to, in registry order. Never raises: a joiner that is
    not ready in time or a rejected proposal becomes a failed outcome (the caller serves on degraded)."""
    ph = _Phases(registry.rank, sink, clock, epoch)
    for group in registry.member_groups():
        local = group.spec.locals_of(sorted(joining))
        if not local:
            continue
        voters = sorted(r for r in group.spec.ranks if r in survivors)
        for i, pg in enumerate(group.pgs()):
            with ph.phase(RecoveryPhase.WAIT_PEER):
                deadline = clock() + timeout_s
                while not (ready := mc.peer_ready(pg, local)) and clock() < deadline:
                    time.sleep(poll_s)
                all_ready = agree(f"{group.name}/{i}", voters, ready)
            if not all_ready:
                reason = f"joining ranks {sorted(joining)} not ready on {group.name} within {timeout_s:.1f}s"
                log.error("rank %d epoch %d: %s; serving on without them", registry.rank, epoch, reason)
                return RecoveryOutcome(False, reason)
            with ph.phase(RecoveryPhase.RECOVER_RANKS):
                result = mc.recover_ranks(pg, local)
            log.info(
                "rank %d epoch %d: recover_ranks %s %s -> %s %s",
                registry.rank,
                epoch,
                group.name,
                local,
                result.status,
                result.reason,
            )
            if not result.applied:
                return RecoveryOutcome(False, f"rejected on {group.name}: {result.reason}")
    return RecoveryOutcome(True, "")


def join(
    mc: Mooncake,
    registry: GroupRegistry,
    *,
    timeout_s: float,
    sink: MetricsSink,
    on_timeout: Callable[[], None],
    clock: Clock = time.monotonic,
) -> None:
    """Joiner side: `join_group` on every group (device, then CPU), in registry order. `join_group` blocks
    inside Mooncake, so a watchdog calls `on_timeout` (the rank exits) when the join has not finished within
    `timeout_s`."""
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(timeout_s):
            log.error("rank %d: not admitted within %.1fs", registry.rank, timeout_s)
            on_timeout()

    threading.Thread(target=watchdog, name="join-watchdog", daemon=True).start()
    ph = _Phases(registry.rank, sink, clock, -1)
    with ph.phase(RecoveryPhase.JOIN):
        for group in registry.member_groups():
            for pg in group.pgs():
                mc.join_group(pg)
                log.info("rank %d: joined %s", registry.rank, group.name)
    done.set()


@dataclasses.dataclass(frozen=True)
class Control:
    """What rank 0 tells every rank (the joiner included) before the metadata broadcast."""

    epoch: int
    step: int
    source: int


def exchange_metadata(
    registry: GroupRegistry,
    metadata: el.ExpertLocationMetadata | None,
    control: Control | None,
    *,
    sink: MetricsSink,
    clock: Clock = time.monotonic,
) -> tuple[el.ExpertLocationMetadata, Control]:
    """Every rank, survivors and joiners: rank 0 broadcasts the `Control` (epoch, step, source), then the
    source broadcasts the packed metadata (header, then body), all on the CPU world group; every rank then
    copies the metadata to its device. Rank 0 passes `control`; the source passes its `metadata`; joiners
    pass None for both. Returns (metadata on this rank's device, control). Raises ValueError on a malformed
    control or header.

    Why the CPU group, not the device group: on GPUs the same broadcast on the device group never reached a
    rank that had just joined (docs/known-issues.md, "GPU rejoin stalled in the transfer engine"). The
    metadata is a few KB, copied to the device once per recovery; the hot path keeps the device group."""
    world = registry.world
    assert world.cpu is not None and world.device is not None
    ph = _Phases(registry.rank, sink, clock, control.epoch if control else -1)
    with ph.phase(RecoveryPhase.BROADCAST):
        buf = torch.zeros(4, dtype=torch.int64)
        if registry.rank == 0:
            assert control is not None
            buf[:] = torch.tensor([CONTROL_MAGIC, control.epoch, control.step, control.source])
        dist.broadcast(buf, src=0, group=world.cpu)
        magic, epoch, step, source = (int(v) for v in buf.tolist())
        if magic != CONTROL_MAGIC or source not in world.spec.ranks:
            raise ValueError(f"malformed recovery control message {buf.tolist()}")
        got = Control(epoch, step, source)
        if registry.rank == source:
            assert metadata is not None
            packed = el.pack(metadata)
            header, body = packed.header.cpu(), packed.body.cpu()
        else:
            header = torch.zeros(el.HEADER_NUMEL, dtype=torch.int64)
        dist.broadcast(header, src=source, group=world.cpu)
        if registry.rank != source:
            body = torch.zeros(el.MetadataLayout.from_header(header).body_numel, dtype=torch.int64)
        dist.broadcast(body, src=source, group=world.cpu)
        received = el.unpack(header, body, world.device_mirror.device)
    log.info("rank %d epoch %d: expert-location metadata from rank %d", registry.rank, epoch, source)
    return received, got
