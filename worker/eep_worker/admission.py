"""Admission of joining ranks: the joiner's join, the survivors' RECOVER step, the leader's readiness check.

Who calls it: a rank started with --rejoin calls `Admission.join` once its groups and model exist
(`rank.RankRuntime.start`); every survivor's step executor calls `Admission.admit` at a RECOVER plan's step;
the leader asks `Admission.joiners_ready` before it sends that plan (`leader.Leader.next_plan`). The Mooncake
calls and their order are `recovery.py`'s; this module is what the ranks tell each other around them, out of
band through the TCPStore:

- ``eep/joiner/<rank>``: the joiner's pod address (its supervisor's HTTP port), set before it blocks in
  `join_group`. The leader admits a joiner only if that port accepts a connection: Mooncake keeps reporting a
  joiner that died inside `join_group` as ready, and recovering a dead joiner blocks the survivors
  (docs/known-issues.md, "A joiner that dies inside `join_group`"). The supervisor is another process, so it
  answers while the rank blocks.
- ``eep/admit/<rank>``: ``"<epoch>:<ranks>"``, set by every survivor at the RECOVER step; the joiner reads it
  once admitted, which cannot happen before that survivor's `recover_ranks`.
- ``eep/admitted/<epoch>``: the admission barrier (`agreement.StoreAgreement.barrier`). Nobody issues a
  collective on the new view until every survivor and every joiner has returned from all its
  `recover_ranks` / `join_group` calls: a joiner sees itself active before every survivor's proposal has
  returned (docs/known-issues.md, "The first collective after a join stalled once").
- ``eep/vote/<epoch>/...``: the survivors' per-group readiness votes (`recovery.recover_survivor`).

Then every rank takes part in the metadata broadcast (`recovery.exchange_metadata`).

Before all this, a joiner registers with Mooncake's coordinator when it creates its first group
(`rank.RankRuntime.start`). The coordinator refuses the registration while an earlier incarnation of the
rank is still registered as healthy (a joiner that died inside its join stays so until Mooncake's heartbeat
timeout, `eep_contract.exitcodes.JOINER_REGISTRATION_HOLD_S`); Mooncake retries it inside the group's
creation and raises only when its own registration wait runs out (`registration_refused`). The rank then exits
with `ExitCode.JOIN_REFUSED`, which the operator does not count as a crash (once in a row).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from typing import TYPE_CHECKING

import torch

from eep_contract.exitcodes import ExitCode
from eep_contract.reasons import RecoveryPhase, RecoveryResult
from eep_worker import expert_location as el
from eep_worker.agreement import AgreementTimeout, StoreAgreement
from eep_worker.events import Exit, Joining, Outbox, Recovered
from eep_worker.groups import GroupRegistry
from eep_worker.metrics import MetricsSink
from eep_worker.protocol import StepPlan
from eep_worker.recovery import Control, exchange_metadata, join, recover_survivor
from eep_worker.settings import Settings

if TYPE_CHECKING:  # the rank passes its Mooncake in
    from eep_worker.mooncake import Mooncake

__all__ = ["LIVENESS_TIMEOUT_S", "REGISTRATION_TIMEOUT", "Admission", "Joined", "registration_refused"]

log = logging.getLogger(__name__)
LIVENESS_TIMEOUT_S = 0.2
"""How long the leader waits for a joiner's pod to accept a connection before it sends a RECOVER plan."""
REGISTRATION_TIMEOUT = "timed out waiting for agent registration"
"""Mooncake's error text when a process's agent is not registered with the coordinator within its registration
wait (30 s, `agent_.waitUntilRegistered(std::chrono::seconds(30))` in mooncake-pg's
`src/mooncake_communicator.cpp`), raised by the group's creation as `RuntimeError: mooncakePgCommCreate
failed: operation timed out: timed out waiting for agent registration` (mooncake-transfer-engine
0.3.13.post1). Until then the agent retries a refused registration (`AgentHost::startAgentRegistration`); the
refusal's reason ("rank already registered and is Healthy; replacement must wait for the old process to leave
the healthy set.") goes to Mooncake's log on stderr only."""


def registration_refused(error: BaseException, *, rejoin: bool) -> bool:
    """Whether ``error``, raised while this rank created its groups, means the coordinator kept refusing this
    joiner's registration. Pure.

    Mooncake does not say why a registration wait ran out; for a joiner the reason is an earlier incarnation
    of its ranks still registered as healthy: the coordinator is in member 0's process, which this joiner
    has just reached (the rendezvous, the TCPStore), and measured on mooncake-cpu 0.3.13.post1 the refusal
    is the only reason seen. A rank of a fresh start (``rejoin`` False) has no earlier incarnation: never."""
    return rejoin and isinstance(error, RuntimeError) and REGISTRATION_TIMEOUT in str(error)


@dataclasses.dataclass(frozen=True)
class Joined:
    """What a joiner has once admitted: the metadata it received and where the group is."""

    metadata: el.ExpertLocationMetadata
    control: Control


class Admission:
    """One rank's part in admitting joiners; it talks to the others through ``agreement``'s TCPStore."""

    def __init__(
        self,
        settings: Settings,
        rank: int,
        *,
        mc: Mooncake,
        registry: GroupRegistry,
        agreement: StoreAgreement,
        sink: MetricsSink,
        outbox: Outbox,
        exit_rank: Exit,
    ) -> None:
        self.settings, self.rank = settings, rank
        self.mc, self.registry, self.agreement = mc, registry, agreement
        self.store = agreement.store
        self.sink, self.outbox, self._exit = sink, outbox, exit_rank
        self.join_timeout_s = settings.timeouts.join_timeout_s

    # ------------------------------------------------------------------ joiner

    def join(self, placement_cpu: el.ExpertLocationMetadata) -> Joined:
        """A joiner: publish its pod's address, block in `join_group` on every group until the survivors
        admit it, pass the admission barrier, receive the metadata. Ends the rank with
        `ExitCode.JOIN_FAILED` when that takes longer than the join timeout, what it received is not metadata,
        or the received placement is not ``placement_cpu``'s (the shard this rank built)."""
        self.outbox.put(Joining(self.rank))
        self.store.set(f"eep/joiner/{self.rank}", f"{self.settings.pod_ip}:{self.settings.http_port}")
        join(
            self.mc,
            self.registry,
            timeout_s=self.join_timeout_s,
            sink=self.sink,
            on_timeout=lambda: self._exit(ExitCode.JOIN_FAILED, "join did not complete in time"),
        )
        epoch, _, everyone = bytes(self.store.get(f"eep/admit/{self.rank}")).decode().partition(":")
        self._admitted(int(epoch), int(everyone), ExitCode.JOIN_FAILED)
        try:
            received, control = exchange_metadata(self.registry, None, None, sink=self.sink)
        except ValueError as e:
            # What a Mooncake broadcast that ended early on a stale flag delivers (docs/known-issues.md,
            # "Mooncake's collectives can lag a step"); the operator replaces this joiner again.
            self._exit(ExitCode.JOIN_FAILED, f"received no expert-location metadata: {e}")
        if not torch.equal(received.physical_to_logical_map.cpu(), placement_cpu.physical_to_logical_map):
            self._exit(ExitCode.JOIN_FAILED, "received expert placement differs from this rank's shard")
        return Joined(received, control)

    def _admitted(self, epoch: int, everyone: int, code: ExitCode) -> None:
        """The admission barrier of ``epoch`` for ``everyone`` ranks (module doc); ends the rank with ``code``
        when not every rank reaches it within the join timeout."""
        try:
            self.agreement.barrier(f"eep/admitted/{epoch}", everyone)
        except AgreementTimeout as e:
            reason = f"{e.arrived} of {everyone} ranks admitted at epoch {epoch} within the join timeout"
            self._exit(code, reason)

    # ------------------------------------------------------------------ survivors

    def admit(
        self,
        plan: StepPlan,
        metadata: el.ExpertLocationMetadata | None,
        metadata_cpu: el.ExpertLocationMetadata | None,
    ) -> None:
        """A survivor, at the RECOVER plan's step: admit `plan.joining` on every group, pass the admission
        barrier, then the metadata broadcast from `plan.source` (this rank's ``metadata`` when it is the
        source; what arrives must match ``metadata_cpu``'s placement). A failed recovery is logged and
        reported (the leader's `Recovered`); the joiners stay out and serving goes on degraded. Ends the rank
        with `ExitCode.STALLED` when not every rank reaches the admission barrier within the join timeout. A
        dedicated coordinator's rank 0 has no metadata (None): it relays the control message and checks
        nothing of the placement."""
        t0 = time.monotonic()
        log.info("rank %d epoch %d: recovering ranks %s", self.rank, plan.epoch, sorted(plan.joining))
        everyone = len(plan.live | plan.joining)
        for j in sorted(plan.joining):
            self.store.set(f"eep/admit/{j}", f"{plan.epoch}:{everyone}")
        outcome = recover_survivor(
            self.mc,
            self.registry,
            plan.joining,
            survivors=plan.live - plan.joining,
            agree=lambda name, voters, vote: self.agreement.vote(f"{plan.epoch}/{name}", voters, vote),
            epoch=plan.epoch,
            timeout_s=self.join_timeout_s,
            sink=self.sink,
        )
        ok = outcome.ok
        if ok:
            self._admitted(plan.epoch, everyone, ExitCode.STALLED)
            try:
                control = Control(plan.epoch, plan.step, plan.source) if self.rank == 0 else None
                received, _ = exchange_metadata(
                    self.registry,
                    metadata if self.rank == plan.source else None,
                    control,
                    sink=self.sink,
                )
                if metadata_cpu is not None and not torch.equal(
                    received.physical_to_logical_map.cpu(), metadata_cpu.physical_to_logical_map
                ):
                    raise ValueError("received expert placement differs from this rank's")
            except (RuntimeError, ValueError) as e:
                ok = False
                log.error("rank %d epoch %d: metadata broadcast failed: %s", self.rank, plan.epoch, e)
        total = time.monotonic() - t0
        self.sink.phase(RecoveryPhase.TOTAL, total)
        self.sink.recovery(RecoveryResult.SUCCEEDED if ok else RecoveryResult.FAILED)
        log.info(
            "rank %d epoch %d: recovery %s in %.3fs %s",
            self.rank,
            plan.epoch,
            "succeeded" if ok else "failed",
            total,
            outcome.reason,
        )
        if self.rank == 0:
            self.outbox.put(Recovered(plan.epoch, ok, total, outcome.reason))

    # ------------------------------------------------------------------ leader

    def joiners_ready(self, joining: frozenset[int]) -> bool:
        """Whether every joining rank waits in the world group's first `join_group` (Mooncake's peer state)
        and its pod accepts a connection on the address it published."""
        world = self.registry.world
        if not self.mc.peer_ready(world.pgs()[0], world.spec.locals_of(sorted(joining))):
            return False
        return all(self._alive(r) for r in sorted(joining))

    def _alive(self, rank: int) -> bool:
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
