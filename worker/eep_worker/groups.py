"""Process-group registry: the world group and the model's subgroups, each as a device group and a CPU group.

Who calls it: the rank process (`rank.py`) creates the registry once at start-up; `recovery.py` (survivors'
`recover_ranks`, joiners' `join_group`) and the fence iterate `member_groups()` on every rank, survivors and
joiners alike; the hot path uses `world` alone. The layout (`group_specs`) is pure.

Layout. Besides the world group, one "column" group per local rank index: the ranks with the same position in
every member (like one GPU of each node). Every column contains a rank of member 0, which never dies in place,
so each column keeps a survivor whichever other member is lost and can be recovered with `recover_ranks`.
There are no per-member groups: Mooncake cannot re-create a group whose every rank was replaced, so a member
group would be lost with its member (docs/known-issues.md). With one rank per member a column is the world,
so the layout is the world alone.

With a dedicated coordinator (`eep_contract.env.Coordinator.DEDICATED`) rank 0 serves nothing: the world
(every rank, a CPU group only, rank 0 has no GPU) carries the plans, the answers and the recovery's control
messages, and a `serving` group of ranks 1..N (device and CPU) carries the combines (no columns: rank 0
does not know the serving members' size). Every serving member can then die in place: the serving group keeps
a survivor as long as one other serving member lives.

Subgroups are optional (`Settings.subgroups`): `auto` builds columns on GPUs (backend `mooncake`, where the
benchmark measures them) and none on mooncake-cpu, where idle column groups led Mooncake's coordinator to
deactivate a survivor instead of the dead member's ranks (docs/known-issues.md).

Order. Groups are created and kept in `group_specs` order: the world first, then subgroups sorted by their
unique name; torch names groups by creation count, so every process must create them in this same order
(joiners included). `member_groups()` yields them in that order, leaving out those this rank is not in.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:  # the registry is handed a Mooncake; importing this module needs no Mooncake
    from eep_worker.mooncake import Mooncake

__all__ = ["SERVING", "WORLD", "Group", "GroupRegistry", "GroupSpec", "group_specs"]

WORLD = "world"
SERVING = "serving"
CPU_BACKEND = "mooncake-cpu"


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    """A group's unique name and its global ranks (ascending)."""

    name: str
    ranks: tuple[int, ...]

    def locals_of(self, global_ranks: Sequence[int]) -> list[int]:
        """Group-local ranks of the members among `global_ranks`, ascending."""
        return sorted(self.ranks.index(r) for r in global_ranks if r in self.ranks)


def group_specs(
    world_size: int, ranks_per_member: int, *, subgroups: bool = True, dedicated: bool = False
) -> list[GroupSpec]:
    """The world, then the `serving` group of ranks 1..N when rank 0 is a ``dedicated`` coordinator, and (with
    `subgroups`) one column group per local rank index of the serving members (none when a member has one
    rank); subgroups sorted by name. Pure. Raises ValueError when the serving ranks are not whole members."""
    first = 1 if dedicated else 0
    serving = world_size - first
    if serving < 1 or ranks_per_member < 1 or serving % ranks_per_member:
        raise ValueError(f"{serving} serving ranks are not a multiple of ranks per member {ranks_per_member}")
    specs = [GroupSpec(WORLD, tuple(range(world_size)))]
    if dedicated:
        specs.append(GroupSpec(SERVING, tuple(range(first, world_size))))
    if subgroups and ranks_per_member > 1:
        for column in range(ranks_per_member):
            ranks = tuple(range(first + column, world_size, ranks_per_member))
            specs.append(GroupSpec(f"column-{column:03d}", ranks))
    return [specs[0], *sorted(specs[1:], key=lambda s: s.name)]


@dataclasses.dataclass
class Group:
    """One logical group on this rank. `device`/`cpu` are None where this rank is not a member.

    The mirrors are the groups' active-ranks tensors that Mooncake allocates (group-local order, 1 = active)
    and updates in place when it deactivates or admits a rank. The CPU mirror is read on the host for free.
    """

    spec: GroupSpec
    device: dist.ProcessGroup | None
    cpu: dist.ProcessGroup | None
    device_mirror: torch.Tensor
    cpu_mirror: torch.Tensor

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_member(self) -> bool:
        return self.cpu is not None

    def pgs(self) -> list[dist.ProcessGroup]:
        """Device group then CPU group (one object when both are the same backend on CPU)."""
        pgs = [pg for pg in (self.device, self.cpu) if pg is not None]
        return pgs[:1] if len(pgs) == 2 and pgs[0] is pgs[1] else pgs


class GroupRegistry:
    """Owns every process group of this rank; iterates them in one deterministic order on every rank."""

    def __init__(self, groups: list[Group], rank: int) -> None:
        self._groups = groups
        self.rank = rank

    @classmethod
    def create(
        cls,
        mc: Mooncake,
        *,
        backend: str,
        store: Any,
        # torch.distributed.Store (a TCPStore); torch does not export the name to type checkers
        rank: int,
        specs: Sequence[GroupSpec],
        is_extension: Callable[[GroupSpec], bool],
        device_scope: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
        device: torch.device | None = None,
    ) -> GroupRegistry:
        """Create every group in `specs` order (the world first). Joiners pass `is_extension` True. Device
        groups (backend `mooncake`) are created within ``device_scope()`` (`Mooncake.device_group_timeout`:
        their collectives' timeout is fixed at creation). Where `specs` has a `serving` group (a dedicated
        coordinator) the world is a CPU group only, for rank 0 too: its `device` is its CPU group. ``device``:
        where this rank's device mirrors live (default: the current CUDA device on backend `mooncake`; a
        dedicated coordinator's rank 0, which has no GPU, passes the CPU)."""
        if not specs or specs[0].name != WORLD:
            raise ValueError("the first group must be the world")
        if device is None:
            device = (
                torch.device("cuda", torch.cuda.current_device())
                if backend == "mooncake"
                else torch.device("cpu")
            )
        world = specs[0]
        cpu_world = any(spec.name == SERVING for spec in specs)
        groups: list[Group] = []
        for spec in specs:
            ext = is_extension(spec)
            options = mc.options(len(spec.ranks), ext)
            on = CPU_BACKEND if spec is world and cpu_world else backend
            with device_scope() if on != CPU_BACKEND else contextlib.nullcontext():
                if spec is world:
                    dist.init_process_group(
                        backend=on,
                        store=store,
                        rank=rank,
                        world_size=len(world.ranks),
                        pg_options=options,
                    )
                    dev_pg: dist.ProcessGroup | None = dist.group.WORLD
                else:
                    dev_pg = _member_or_none(
                        dist.new_group(list(spec.ranks), backend=backend, pg_options=options)
                    )
            if on == CPU_BACKEND:
                # On mooncake-cpu one group serves both roles: two groups of the same ranks only double the
                # recovery work, and could hang after a failure (docs/known-issues.md).
                cpu_pg = dev_pg
            else:
                cpu_pg = _member_or_none(
                    dist.new_group(
                        list(spec.ranks), backend=CPU_BACKEND, pg_options=mc.options(len(spec.ranks), ext)
                    )
                )
            groups.append(
                Group(
                    spec,
                    dev_pg,
                    cpu_pg,
                    _mirror(mc, dev_pg, len(spec.ranks), device if on == backend else torch.device("cpu")),
                    _mirror(mc, cpu_pg, len(spec.ranks), torch.device("cpu")),
                )
            )
        return cls(groups, rank)

    def member_groups(self) -> Iterator[Group]:
        """The groups this rank is a member of, in creation order (the world first, then subgroups by name):
        the order of recovery and join on every rank."""
        return (g for g in self._groups if g.is_member)

    @property
    def world(self) -> Group:
        return self._groups[0]

    @property
    def serving(self) -> Group:
        """The group of the serving ranks, which carries the combines: `SERVING` with a dedicated coordinator,
        else the world."""
        return next((g for g in self._groups if g.name == SERVING), self._groups[0])


def _mirror(mc: Mooncake, pg: dist.ProcessGroup | None, size: int, device: torch.device) -> torch.Tensor:
    # Where this rank is not a member there is no mirror to read; all-active keeps `live_ranks` meaningful.
    return mc.active_ranks(pg) if pg is not None else torch.ones(size, dtype=torch.int32, device=device)


def _member_or_none(pg: object) -> dist.ProcessGroup | None:
    # torch returns GroupMember.NON_GROUP_MEMBER to ranks outside the group.
    return pg if isinstance(pg, dist.ProcessGroup) else None
