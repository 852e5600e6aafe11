"""Expert-location metadata: where each logical expert's replicas live, and where each rank dispatches.

Shaped like SGLang's `ExpertLocationMetadata` (our own code, same tensor shapes), for ``L`` MoE layers,
``E`` logical experts, ``P = world_size * num_physical_per_rank`` physical expert slots and at most ``R``
replicas of one logical expert:

- ``physical_to_logical_map [L, P]``: the logical expert a physical slot holds. Rank ``r`` owns the slots
  ``r * num_physical_per_rank ... (r + 1) * num_physical_per_rank - 1``.
- ``logical_to_all_physical_map [L, E, R]``: every physical replica of a logical expert, ascending, padded
  with -1; ``logical_to_all_physical_map_num_valid [L, E]`` counts the real entries.
- ``logical_to_rank_dispatch_physical_map [L, E]``: the one replica tokens routed to a logical expert are
  sent to. Every rank of the reference model sees the whole batch, so this map must be identical on every
  rank (a rank-local preference would compute a token twice or not at all); `rebalance` guarantees that.
  -1 marks a logical expert with no live replica (see `uncovered_experts`).

Who calls what:
- At start-up every rank (joiners included) calls `build_placement(...)` with the sizes from its settings;
  the model shard is built from its ``physical_to_logical_map`` (`eep_worker.moe.ShardedMoEModel`).
- In the serving loop, when the active-ranks mirror changes, the runtime calls
  `rebalance(metadata, active_ranks, out=metadata.logical_to_rank_dispatch_physical_map)` on the device
  tensors: pure tensor ops, no host-device sync, safe to enqueue in the hot path (and under CUDA graphs,
  since ``out`` keeps the tensor's address). Before trusting degraded service it checks
  `uncovered_experts(metadata_cpu, active_ranks_cpu)` on the CPU copies (host-side, cheap).
- Recovery broadcasts the metadata from a healthy rank to a joiner: the sender calls `pack(metadata)` and
  broadcasts `header` (``HEADER_NUMEL`` int64) then `body`; the joiner receives the header, sizes its body
  buffer with `MetadataLayout.from_header`, receives it and calls `unpack(header, body, device)`; every
  rank then refreshes its CPU copy with `metadata.to_cpu()`.

Everything here depends only on torch. Integer tensors are int64 throughout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

__all__ = [
    "HEADER_NUMEL",
    "ExpertLocationMetadata",
    "MetadataLayout",
    "PackedMetadata",
    "PlacementError",
    "build_placement",
    "coverage",
    "pack",
    "rebalance",
    "uncovered_experts",
    "unpack",
]

_INDEX = torch.int64
_MAGIC = 0x45455031  # "EEP1": rejects a buffer that is not packed metadata (e.g. a mismatched broadcast)
_VERSION = 1
HEADER_NUMEL = 8
"""Packed header length (int64): magic, version, L, E, R, P, num_physical_per_rank, ranks_per_member."""


class PlacementError(ValueError):
    """The requested sizes cannot place replicas that survive the loss of any one non-zero member."""


@dataclasses.dataclass(frozen=True)
class ExpertLocationMetadata:
    """Expert placement and dispatch for all MoE layers; see the module docstring for the shapes.

    Frozen so the runtime swaps whole objects; the tensors themselves may be updated in place
    (`rebalance(..., out=...)`, a broadcast into `pack` buffers) where a stable address matters.
    """

    physical_to_logical_map: torch.Tensor
    logical_to_all_physical_map: torch.Tensor
    logical_to_all_physical_map_num_valid: torch.Tensor
    logical_to_rank_dispatch_physical_map: torch.Tensor
    num_physical_per_rank: int
    ranks_per_member: int

    def __post_init__(self) -> None:
        p2l, l2all = self.physical_to_logical_map, self.logical_to_all_physical_map
        if p2l.dim() != 2 or l2all.dim() != 3:
            raise ValueError(
                f"bad ranks: physical_to_logical {tuple(p2l.shape)}, all_physical {tuple(l2all.shape)}"
            )
        layers, physical = p2l.shape
        expected = {
            "logical_to_all_physical_map": (layers, l2all.shape[1], l2all.shape[2]),
            "logical_to_all_physical_map_num_valid": (layers, l2all.shape[1]),
            "logical_to_rank_dispatch_physical_map": (layers, l2all.shape[1]),
        }
        for name, shape in expected.items():
            actual = tuple(getattr(self, name).shape)
            if actual != shape:
                raise ValueError(f"{name} has shape {actual}, expected {shape}")
        if self.num_physical_per_rank < 1 or physical % self.num_physical_per_rank:
            raise ValueError(
                f"{physical} physical slots do not split into ranks of {self.num_physical_per_rank}"
            )
        if self.ranks_per_member < 1 or self.world_size % self.ranks_per_member:
            raise ValueError(f"world size {self.world_size} is not a multiple of {self.ranks_per_member}")

    @property
    def num_layers(self) -> int:
        return int(self.physical_to_logical_map.shape[0])

    @property
    def num_physical_experts(self) -> int:
        return int(self.physical_to_logical_map.shape[1])

    @property
    def num_logical_experts(self) -> int:
        return int(self.logical_to_all_physical_map.shape[1])

    @property
    def max_replicas(self) -> int:
        return int(self.logical_to_all_physical_map.shape[2])

    @property
    def world_size(self) -> int:
        return self.num_physical_experts // self.num_physical_per_rank

    @property
    def device(self) -> torch.device:
        return self.physical_to_logical_map.device

    def local_physical_ids(self, rank: int) -> range:
        """The physical slots rank ``rank`` owns."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside world of {self.world_size}")
        return range(rank * self.num_physical_per_rank, (rank + 1) * self.num_physical_per_rank)

    def to(self, device: torch.device | str) -> ExpertLocationMetadata:
        """A copy on ``device`` (the same object's tensors when already there)."""
        return dataclasses.replace(
            self,
            physical_to_logical_map=self.physical_to_logical_map.to(device),
            logical_to_all_physical_map=self.logical_to_all_physical_map.to(device),
            logical_to_all_physical_map_num_valid=self.logical_to_all_physical_map_num_valid.to(device),
            logical_to_rank_dispatch_physical_map=self.logical_to_rank_dispatch_physical_map.to(device),
        )

    def to_cpu(self) -> ExpertLocationMetadata:
        """An independent CPU copy (cloned even when already on CPU), for host-side checks and logging."""
        return dataclasses.replace(
            self,
            physical_to_logical_map=self.physical_to_logical_map.to("cpu", copy=True),
            logical_to_all_physical_map=self.logical_to_all_physical_map.to("cpu", copy=True),
            logical_to_all_physical_map_num_valid=self.logical_to_all_physical_map_num_valid.to(
                "cpu", copy=True
            ),
            logical_to_rank_dispatch_physical_map=self.logical_to_rank_dispatch_physical_map.to(
                "cpu", copy=True
            ),
        )

    def with_dispatch_map(self, dispatch_map: torch.Tensor) -> ExpertLocationMetadata:
        return dataclasses.replace(self, logical_to_rank_dispatch_physical_map=dispatch_map)


# ---------------------------------------------------------------- placement (host side, start-up only)


def _member_copies(
    num_logical: int, num_members: int, slots_per_member: int, *, every_member: bool = False
) -> list[list[int]]:
    """Which logical experts each member holds (``slots_per_member`` each), safe against one non-zero loss
    (with ``every_member``: against the loss of any one member, member 0 included: no expert is anchored).

    An expert is safe when it has a copy on member 0 (losing member 0 is a group restart, not in-place
    recovery) or copies on two distinct members. We anchor as few experts as possible on member 0 alone
    (``anchored``) and give every other expert two copies on distinct members, greedily on the members
    with the most free slots (ties: the partner shared least so far, then the lowest index), then fill
    the free slots with extra replicas of the experts that have the fewest. Trying every ``anchored``
    count makes the search exhaustive over these shapes, so failing all of them means no valid placement
    exists.
    """
    total = num_members * slots_per_member
    if num_members == 1:
        anchored_range = range(num_logical, num_logical + 1)  # nothing to survive: one copy each
    elif every_member:
        anchored_range = range(0, 1 if 2 * num_logical <= total else 0)
    else:
        anchored_range = range(max(0, 2 * num_logical - total), min(slots_per_member, num_logical) + 1)
    for anchored in anchored_range:
        paired = num_logical - anchored
        members: list[list[int]] = [[] for _ in range(num_members)]
        # Pairs take the low ids, anchored the high ones, so layouts stay easy to read.
        members[0].extend(range(paired, num_logical))
        free = [slots_per_member - len(m) for m in members]
        # How often two members share an expert: spreading partners spreads a lost member's load.
        partners = [[0] * num_members for _ in range(num_members)]
        ok = True
        for expert in range(paired):
            first = min(range(num_members), key=lambda m: (-free[m], m))
            others = [m for m in range(num_members) if m != first]
            second = min(others, key=lambda m, f=first: (-free[m], partners[f][m], m))  # type: ignore[misc]
            if free[second] <= 0:
                ok = False
                break
            for m in (first, second):
                members[m].append(expert)
                free[m] -= 1
            partners[first][second] += 1
            partners[second][first] += 1
        if not ok:
            continue
        copies = [0] * num_logical
        for held in members:
            for expert in held:
                copies[expert] += 1
        for m, held in enumerate(members):
            while free[m] > 0:
                expert = _fewest_copies(held, copies)
                held.append(expert)
                copies[expert] += 1
                free[m] -= 1
        return members
    if every_member:
        raise PlacementError(
            f"cannot place {num_logical} logical experts on {num_members} members x {slots_per_member} slots "
            "so that losing any one member leaves every expert a live replica: every expert needs copies on "
            f"two distinct members, so at most {total // 2} experts fit; add physical slots per rank or "
            "members"
        )
    raise PlacementError(
        f"cannot place {num_logical} logical experts on {num_members} members x {slots_per_member} slots so "
        "that losing any one non-zero member leaves every expert a live replica: experts not on member 0 "
        "need copies on two distinct members, so at most "
        f"{slots_per_member + (total - slots_per_member) // 2 if num_members > 2 else slots_per_member} "
        "experts fit; add physical slots per rank or members"
    )


def _fewest_copies(held: list[int], copies: list[int]) -> int:
    """The expert to add to a member: fewest copies on that member, then fewest overall, then lowest id."""
    return min(range(len(copies)), key=lambda e: (held.count(e), copies[e], e))


def build_placement(
    num_layers: int,
    num_logical_experts: int,
    world_size: int,
    ranks_per_member: int,
    num_physical_per_rank: int,
    *,
    device: torch.device | str = "cpu",
    every_member: bool = False,
) -> ExpertLocationMetadata:
    """Deterministic placement with redundant replicas, plus the all-ranks-live dispatch map.

    Every rank computes the same result from the same sizes. Losing all ranks of any one member other than
    member 0 (with ``every_member``, any one member: a dedicated coordinator's serving ranks, where member 0
    dies in place too) leaves every logical expert at least one live replica. Layer ``l`` relabels the base
    layout by ``(logical + l) mod E`` so different layers load different ranks. Raises `PlacementError` when
    the sizes cannot give that guarantee, `ValueError` for sizes that make no sense.
    """
    if min(num_layers, num_logical_experts, world_size, ranks_per_member, num_physical_per_rank) < 1:
        raise ValueError("all sizes must be >= 1")
    if world_size % ranks_per_member:
        raise ValueError(f"world size {world_size} is not a multiple of ranks_per_member {ranks_per_member}")
    num_members = world_size // ranks_per_member
    slots_per_member = ranks_per_member * num_physical_per_rank
    if num_logical_experts > world_size * num_physical_per_rank:
        raise PlacementError(
            f"{num_logical_experts} logical experts do not fit "
            f"{world_size * num_physical_per_rank} physical slots"
        )
    members = _member_copies(num_logical_experts, num_members, slots_per_member, every_member=every_member)

    base = [0] * (world_size * num_physical_per_rank)
    for m, held in enumerate(members):
        # Consecutive experts of a member go to different ranks of it.
        for i, expert in enumerate(held):
            rank = m * ranks_per_member + i % ranks_per_member
            base[rank * num_physical_per_rank + i // ranks_per_member] = expert
    base_t = torch.tensor(base, dtype=_INDEX)
    layer_shift = torch.arange(num_layers, dtype=_INDEX).unsqueeze(1)
    p2l = (base_t.unsqueeze(0) + layer_shift) % num_logical_experts
    l2all, num_valid = _invert(p2l, num_logical_experts)
    meta = ExpertLocationMetadata(
        physical_to_logical_map=p2l,
        logical_to_all_physical_map=l2all,
        logical_to_all_physical_map_num_valid=num_valid,
        logical_to_rank_dispatch_physical_map=torch.full((num_layers, num_logical_experts), -1, dtype=_INDEX),
        num_physical_per_rank=num_physical_per_rank,
        ranks_per_member=ranks_per_member,
    ).to(device)
    all_live = torch.ones(world_size, dtype=torch.int32, device=meta.device)
    return meta.with_dispatch_map(rebalance(meta, all_live))


def _invert(p2l: torch.Tensor, num_logical: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[L, P]`` physical-to-logical -> (``[L, E, R]`` ascending, padded with -1; ``[L, E]`` counts)."""
    layers = p2l.shape[0]
    per_expert = [
        [[p for p, e in enumerate(row) if e == expert] for expert in range(num_logical)]
        for row in p2l.tolist()
    ]
    width = max(len(ps) for layer in per_expert for ps in layer)
    out = torch.full((layers, num_logical, width), -1, dtype=_INDEX)
    for layer, experts in enumerate(per_expert):
        for expert, ps in enumerate(experts):
            out[layer, expert, : len(ps)] = torch.tensor(ps, dtype=_INDEX)
    return out, (out >= 0).sum(dim=2)


# ---------------------------------------------------------------- dispatch (device side, no host sync)


def coverage(metadata: ExpertLocationMetadata, active_ranks: torch.Tensor) -> torch.Tensor:
    """``[L, E]`` bool: the logical expert has a replica on an active rank. Tensor ops only, no sync.

    ``active_ranks`` is ``[world_size]`` (nonzero = active), like Mooncake's active-ranks tensor.
    """
    return _live_replicas(metadata, active_ranks)[1].any(dim=2)


def _live_replicas(
    metadata: ExpertLocationMetadata, active_ranks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    l2all = metadata.logical_to_all_physical_map
    active = active_ranks.to(device=l2all.device) != 0
    ranks = torch.div(l2all.clamp(min=0), metadata.num_physical_per_rank, rounding_mode="floor")
    return ranks, (l2all >= 0) & active[ranks]


def rebalance(
    metadata: ExpertLocationMetadata, active_ranks: torch.Tensor, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Dispatch map ``[L, E]`` that sends every logical expert to a replica on an active rank.

    Greedy and load-balanced: logical experts are taken in id order and each goes to the live replica whose
    rank has the fewest experts dispatched so far in that layer, ties to the lowest physical id. Integer
    tensor ops only, so the result is bit-identical on every rank, and there is no host-device sync (no
    ``.item()``, no data-dependent Python branch): the loop runs over the static expert count, about ten
    small kernels per expert, so it suits a membership change rather than every step. Experts with no live
    replica get -1. With ``out`` the result is written in place (stable address for CUDA graphs).
    """
    l2all = metadata.logical_to_all_physical_map
    layers, num_logical, width = l2all.shape
    ranks, live = _live_replicas(metadata, active_ranks)
    load = torch.zeros(layers, metadata.world_size, dtype=_INDEX, device=l2all.device)
    replica_index = torch.arange(width, dtype=_INDEX, device=l2all.device).expand(layers, width)
    # Beyond any reachable cost (load <= E, so load * width + index < this): a dead or padded replica
    # is never picked over a live one.
    unusable = (num_logical + 1) * width
    result = torch.empty(layers, num_logical, dtype=_INDEX, device=l2all.device)
    for expert in range(num_logical):
        expert_ranks = ranks[:, expert, :]
        expert_live = live[:, expert, :]
        cost = torch.where(expert_live, load.gather(1, expert_ranks) * width + replica_index, unusable)
        choice = cost.argmin(dim=1, keepdim=True)
        any_live = expert_live.any(dim=1, keepdim=True)
        chosen = l2all[:, expert, :].gather(1, choice)
        result[:, expert : expert + 1] = torch.where(any_live, chosen, -1)
        load.scatter_add_(1, expert_ranks.gather(1, choice), any_live.to(_INDEX))
    if out is None:
        return result
    return out.copy_(result)


def uncovered_experts(
    metadata: ExpertLocationMetadata, active_ranks: Sequence[int] | torch.Tensor
) -> list[tuple[int, int]]:
    """(layer, logical expert) pairs with no live replica. Host-side: use CPU copies, off the hot path."""
    active = torch.as_tensor(active_ranks, dtype=torch.int32)
    covered = coverage(metadata.to("cpu"), active)
    return [(int(layer), int(expert)) for layer, expert in (~covered).nonzero().tolist()]


# ---------------------------------------------------------------- broadcast packing


@dataclasses.dataclass(frozen=True)
class MetadataLayout:
    """The sizes a packed body needs; a joiner reads them from the broadcast header."""

    num_layers: int
    num_logical_experts: int
    max_replicas: int
    num_physical_experts: int
    num_physical_per_rank: int
    ranks_per_member: int

    @property
    def body_numel(self) -> int:
        layers, logical = self.num_layers, self.num_logical_experts
        return (
            layers * self.num_physical_experts + layers * logical * self.max_replicas + 2 * layers * logical
        )

    def header(self, device: torch.device | str = "cpu") -> torch.Tensor:
        values = [
            _MAGIC,
            _VERSION,
            self.num_layers,
            self.num_logical_experts,
            self.max_replicas,
            self.num_physical_experts,
            self.num_physical_per_rank,
            self.ranks_per_member,
        ]
        return torch.tensor(values, dtype=_INDEX, device=device)

    @classmethod
    def of(cls, metadata: ExpertLocationMetadata) -> MetadataLayout:
        return cls(
            num_layers=metadata.num_layers,
            num_logical_experts=metadata.num_logical_experts,
            max_replicas=metadata.max_replicas,
            num_physical_experts=metadata.num_physical_experts,
            num_physical_per_rank=metadata.num_physical_per_rank,
            ranks_per_member=metadata.ranks_per_member,
        )

    @classmethod
    def from_header(cls, header: torch.Tensor) -> MetadataLayout:
        """Parse a received header. Reads it on the host (a sync; join time only). Raises ValueError."""
        values = [int(v) for v in header.to("cpu").tolist()]
        if len(values) != HEADER_NUMEL or values[0] != _MAGIC:
            raise ValueError(f"not an expert-location header: {values[:HEADER_NUMEL]}")
        if values[1] != _VERSION:
            raise ValueError(f"expert-location header version {values[1]}, this worker reads {_VERSION}")
        if min(values[2:]) < 1:
            raise ValueError(f"expert-location header has a non-positive size: {values}")
        return cls(*values[2:])


@dataclasses.dataclass(frozen=True)
class PackedMetadata:
    """Two int64 tensors to broadcast in this order: ``header`` (HEADER_NUMEL) then ``body``."""

    header: torch.Tensor
    body: torch.Tensor


def pack(metadata: ExpertLocationMetadata) -> PackedMetadata:
    """Flatten the metadata for a broadcast; the tensors are on the metadata's device."""
    layout = MetadataLayout.of(metadata)
    body = torch.cat(
        [
            metadata.physical_to_logical_map.reshape(-1),
            metadata.logical_to_all_physical_map.reshape(-1),
            metadata.logical_to_all_physical_map_num_valid.reshape(-1),
            metadata.logical_to_rank_dispatch_physical_map.reshape(-1),
        ]
    ).to(_INDEX)
    return PackedMetadata(header=layout.header(metadata.device), body=body)


def unpack(
    header: torch.Tensor, body: torch.Tensor, device: torch.device | str | None = None
) -> ExpertLocationMetadata:
    """Inverse of `pack`. Reads the header on the host (join time only). ValueError on a size mismatch."""
    layout = MetadataLayout.from_header(header)
    if body.numel() != layout.body_numel:
        raise ValueError(f"expert-location body has {body.numel()} elements, header says {layout.body_numel}")
    layers, logical, width = layout.num_layers, layout.num_logical_experts, layout.max_replicas
    sizes = [
        layers * layout.num_physical_experts,
        layers * logical * width,
        layers * logical,
        layers * logical,
    ]
    p2l, l2all, num_valid, dispatch = torch.split(body.to(device=device or body.device, dtype=_INDEX), sizes)
    return ExpertLocationMetadata(
        physical_to_logical_map=p2l.reshape(layers, layout.num_physical_experts).clone(),
        logical_to_all_physical_map=l2all.reshape(layers, logical, width).clone(),
        logical_to_all_physical_map_num_valid=num_valid.reshape(layers, logical).clone(),
        logical_to_rank_dispatch_physical_map=dispatch.reshape(layers, logical).clone(),
        num_physical_per_rank=layout.num_physical_per_rank,
        ranks_per_member=layout.ranks_per_member,
    )
