"""The step plan and the leader's decisions. Pure: no torch, no I/O, no clock (``now`` is passed in).

Who calls it: the rank runtime. Every step, global rank 0 (the leader, `leader.py`) builds a `StepPlan`;
the step executor (`execution.py`) encodes it into a fixed-size int64 vector (`encode_into`) and broadcasts
it on the world group; every other rank's executor decodes and checks its header (`decode_header`; the
tokens go to the device as they arrived) and executes exactly what it says. Followers never decide anything
on their own: survivors can disagree about whether a step succeeded (one may finish a collective with a dead
rank's data while another fails in it), so only the leader's view counts, and it reaches every rank inside
the plan.

Fixed sequence per step, on every rank whatever it saw: one plan broadcast, then, for a `BATCH` plan, one
combine all-reduce per model layer over ``max_batch`` padded token rows; for a `RECOVER` plan, the recovery
sequence (`recovery.recover_survivor`); for a `FENCE` plan, no collective at all until Mooncake's new view
(without the `failed` ranks) has arrived on this rank. Shapes never depend on data, so a rank that received a
bad plan issues the collectives of a `BATCH` plan, contributing NaN so that the step is re-run, never answered
(`execution.StepExecutor.poison`); it stays in step only when the plan it could not read was a BATCH plan.

Plan vector (int64):
``[MAGIC, epoch, step, kind, n_tokens, live_mask, joining_mask, source, failed_mask, tokens...]``.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
from collections.abc import Sequence
from enum import IntEnum
from typing import NamedTuple, Protocol

__all__ = [
    "HEADER",
    "MAGIC",
    "JoinDecision",
    "Kind",
    "LeaderView",
    "PlanError",
    "Request",
    "Snapshot",
    "StepPlan",
    "broadcast_source",
    "decide_membership",
    "decode",
    "decode_header",
    "encode",
    "encode_into",
    "mask",
    "unmask",
]

MAGIC = 0x45455050  # "EEPP": rejects a buffer that is not a plan
HEADER = 9
COUNT = 4
"""Index of the header's token count: that many slots after the header hold the batch's tokens."""
MAX_RANKS = 62
"""Ranks are carried as bits of one int64."""


class Kind(IntEnum):
    BATCH = 1
    """Run the forward over the plan's tokens (possibly none: an idle step still runs its collectives)."""
    RECOVER = 2
    """Admit `joining` on every group in registry order, then broadcast the metadata from `source`."""
    FENCE = 3
    """Issue no collective until this rank's groups show the `failed` ranks inactive (Mooncake's new view)."""


_KINDS = {int(kind): kind for kind in Kind}


class PlanError(ValueError):
    """A received plan vector that must not be acted on."""


class StepPlan(NamedTuple):
    """One step's instructions. A named tuple, not a frozen dataclass: just as immutable, and built in a sixth
    of the time (0.5 vs 3 us here); the leader builds one and every follower decodes one on each step's
    critical path."""

    epoch: int
    step: int
    kind: Kind
    tokens: tuple[int, ...]
    live: frozenset[int]
    """Ranks the dispatch map is built for in this step (the leader's view)."""
    joining: frozenset[int] = frozenset()
    source: int = -1
    """RECOVER: the healthy, non-joining rank that broadcasts the expert-location metadata."""
    failed: frozenset[int] = frozenset()
    """FENCE: the ranks the leader saw fail, which Mooncake's coordinator is about to deactivate."""


@dataclasses.dataclass(frozen=True)
class Request:
    """A client request as the supervisor hands it to the leader rank."""

    request_id: str
    tokens: list[int]


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A membership snapshot as the leader uses it (sources convert the contract model into this)."""

    epoch: int
    active_ranks: frozenset[int]
    joining_ranks: frozenset[int]


@functools.lru_cache(maxsize=256)
def mask(ranks: frozenset[int]) -> int:
    # Cached like `unmask`: the leader encodes three masks per step.
    if any(not 0 <= r < MAX_RANKS for r in ranks):
        raise ValueError(f"ranks must be in [0, {MAX_RANKS})")
    return sum(1 << r for r in ranks)


@functools.lru_cache(maxsize=256)
def unmask(bits: int) -> frozenset[int]:
    # Cached: three masks per step on every rank, and they change only when the membership does.
    ranks = []
    while bits > 0:
        low = bits & -bits
        ranks.append(low.bit_length() - 1)
        bits ^= low
    return frozenset(ranks)


class IntBuffer(Protocol):
    """A writable, C-contiguous int64 vector that exposes its memory through the buffer protocol (the numpy
    view of the rank's pinned plan buffer): `encode_into` packs into it with `struct`. (`__buffer__` is not
    part of this protocol: numpy's stubs declare it only for Python 3.12 and later.)"""

    def __len__(self) -> int: ...
    def __setitem__(self, index: slice, value: Sequence[int] | int, /) -> None: ...


@functools.cache  # n_tokens <= the plan's capacity: a handful of entries
def _layout(n_tokens: int) -> struct.Struct:
    # One C call writes the header and the tokens, in about half the time of numpy's slice assignments from
    # Python ints (bench/plan_protocol.py): the leader does it on every step's critical path.
    return struct.Struct(f"={HEADER + n_tokens}q")


def _header(plan: StepPlan) -> tuple[int, ...]:
    return (
        MAGIC,
        plan.epoch,
        plan.step,
        int(plan.kind),
        len(plan.tokens),
        mask(plan.live),
        mask(plan.joining),
        plan.source,
        mask(plan.failed),
    )


def encode(plan: StepPlan, max_tokens: int) -> list[int]:
    """The plan as exactly ``HEADER + max_tokens`` ints (tokens padded with 0). Raises ValueError."""
    if len(plan.tokens) > max_tokens:
        raise ValueError(f"{len(plan.tokens)} tokens exceed the plan's {max_tokens} slots")
    return [*_header(plan), *plan.tokens, *([0] * (max_tokens - len(plan.tokens)))]


def encode_into(plan: StepPlan, out: IntBuffer) -> None:
    """Write what `encode` returns into ``out`` (``HEADER + max_tokens`` long) without building a list: the
    leader does this every step, on the path every rank waits for. Raises ValueError."""
    n, capacity = len(plan.tokens), len(out) - HEADER
    if n > capacity:
        raise ValueError(f"{n} tokens exceed the plan's {capacity} slots")
    _layout(n).pack_into(out, 0, *_header(plan), *plan.tokens)  # type: ignore[arg-type]  # see IntBuffer
    if n < capacity:
        out[HEADER + n :] = 0


def decode(values: Sequence[int], *, world_size: int, min_epoch: int, after_step: int) -> StepPlan:
    """Check and decode a received plan vector. Raises PlanError when it is not a plan, or an older one
    (epoch below ``min_epoch``, step not after ``after_step``), or names ranks outside the world."""
    plan = decode_header(
        values[:HEADER],
        capacity=len(values) - HEADER,
        world_size=world_size,
        min_epoch=min_epoch,
        after_step=after_step,
    )
    n = int(values[COUNT])
    return plan._replace(tokens=tuple(map(int, values[HEADER : HEADER + n])))


@functools.lru_cache(maxsize=256)
def _membership_fields(  # noqa: PLR0917 - positional: the cheapest cache key
    kind_value: int, live_bits: int, joining_bits: int, source: int, failed_bits: int, world_size: int
) -> tuple[Kind, frozenset[int], frozenset[int], frozenset[int]]:
    """The checks of a header's kind and rank fields. Raises PlanError (which the cache does not keep)."""
    kind = _KINDS[kind_value]
    outside = ~((1 << world_size) - 1)
    if (
        live_bits <= 0
        or joining_bits < 0
        or failed_bits < 0
        or (live_bits | joining_bits | failed_bits) & outside
    ):
        raise PlanError("rank masks outside the world")
    live, joining, failed = unmask(live_bits), unmask(joining_bits), unmask(failed_bits)
    if kind is Kind.RECOVER and (not joining or source not in live - joining):
        raise PlanError(f"recover plan with joining {sorted(joining)} and source {source}")
    if (kind is Kind.FENCE) != bool(failed) or 0 in failed:
        raise PlanError(f"{kind.name} plan with failed ranks {sorted(failed)}")
    return kind, live, joining, failed


def decode_header(
    header: Sequence[int], *, capacity: int, world_size: int, min_epoch: int, after_step: int
) -> StepPlan:
    """`decode` of the first `HEADER` ints alone, for a vector with ``capacity`` token slots: the same checks,
    and a StepPlan without its tokens (``tokens=()``). Followers use it: they read the tokens on the device,
    from the buffer the plan arrived in, so converting them to Python ints would only delay the step."""
    # Written for speed (every follower runs it on the step's critical path): the fields that change with the
    # step are checked here, those that change only with the membership once per distinct value (cached).
    if len(header) < HEADER or header[0] != MAGIC:
        raise PlanError("bad magic")
    _, epoch, step, kind_value, n, live_bits, joining_bits, source, failed_bits = map(int, header[:HEADER])
    if kind_value not in _KINDS:
        raise PlanError(f"unknown kind {kind_value}")
    if epoch < min_epoch:
        raise PlanError(f"stale epoch {epoch} < {min_epoch}")
    if step <= after_step:
        raise PlanError(f"stale step {step} <= {after_step}")
    if not 0 <= n <= capacity:
        raise PlanError(f"token count {n} outside [0, {capacity}]")
    kind, live, joining, failed = _membership_fields(
        kind_value, live_bits, joining_bits, source, failed_bits, world_size
    )
    return StepPlan(epoch, step, kind, (), live, joining, source, failed)


def broadcast_source(live: frozenset[int], joining: frozenset[int], epoch: int) -> int:
    """The rank that broadcasts the expert-location metadata: healthy (live), not joining, rotating with the
    epoch so no fixed rank is special. Every rank computes the same. Raises ValueError if there is none."""
    healthy = sorted(live - joining)
    if not healthy:
        raise ValueError("no healthy rank to broadcast from")
    return healthy[epoch % len(healthy)]


@dataclasses.dataclass(frozen=True)
class LeaderView:
    """What the leader knows when it builds a plan."""

    epoch: int
    """Epoch of the last plan it sent."""
    live: frozenset[int]
    """Active ranks in its world group's CPU mirror."""
    pending_since: float | None = None
    """`now` when it first saw the current snapshot's joining ranks (None: no join pending)."""


@dataclasses.dataclass(frozen=True)
class JoinDecision:
    epoch: int
    """Epoch the next plan carries."""
    recover: frozenset[int]
    """Ranks to admit in the next plan (empty: a BATCH plan)."""
    pending_since: float | None
    gave_up: frozenset[int] = frozenset()
    """Joining ranks not ready within the join timeout: the epoch is adopted without them."""


def decide_membership(
    view: LeaderView,
    snapshot: Snapshot | None,
    *,
    ready: bool,
    now: float,
    join_timeout_s: float,
) -> JoinDecision:
    """Leader, pure: what the next plan carries given the newest snapshot.

    A snapshot newer than the leader's epoch with joining ranks that are not live starts a pending join;
    the leader keeps serving (BATCH plans at its old epoch) until ``ready`` (every joining rank waits in
    its first ``join_group``, seen with ``get_peer_state``), then sends one RECOVER plan at the new epoch.
    If they are not ready within ``join_timeout_s`` it adopts the epoch without them (degraded; the
    operator bumps the epoch to try again). A snapshot without joining ranks is adopted at once; one that
    is not newer is ignored (fencing)."""
    if snapshot is None or snapshot.epoch <= view.epoch:
        return JoinDecision(view.epoch, frozenset(), None)
    admit = snapshot.joining_ranks - view.live
    if not admit:
        return JoinDecision(snapshot.epoch, frozenset(), None)
    since = now if view.pending_since is None else view.pending_since
    if ready:
        return JoinDecision(snapshot.epoch, admit, None)
    if now - since >= join_timeout_s:
        return JoinDecision(snapshot.epoch, frozenset(), None, gave_up=admit)
    return JoinDecision(view.epoch, frozenset(), since)
