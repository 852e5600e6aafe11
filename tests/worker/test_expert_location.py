"""Expert-location metadata: placement survives any one non-zero member loss, rebalance, packing."""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")

from eep_worker.expert_location import (  # noqa: E402
    HEADER_NUMEL,
    ExpertLocationMetadata,
    MetadataLayout,
    PlacementError,
    build_placement,
    coverage,
    pack,
    rebalance,
    uncovered_experts,
    unpack,
)


def _feasible(experts: int, world: int, per_member: int, per_rank: int) -> bool:
    """Closed form, independent of the placement code: an expert is safe with a copy on member 0 or copies
    on two distinct non-zero members, so member 0 covers its slots and the others cover half of theirs."""
    members, slots = world // per_member, per_member * per_rank
    if experts > world * per_rank:
        return False
    if members == 1:
        return True
    return experts <= slots + ((members - 1) * slots // 2 if members >= 3 else 0)


def _active_without_member(world: int, per_member: int, member: int | None) -> torch.Tensor:
    active = torch.ones(world, dtype=torch.int32)
    if member is not None:
        active[member * per_member : (member + 1) * per_member] = 0
    return active


def _check_structure(meta: ExpertLocationMetadata) -> None:
    p2l, l2all, valid = (
        meta.physical_to_logical_map,
        meta.logical_to_all_physical_map,
        meta.logical_to_all_physical_map_num_valid,
    )
    for layer in range(meta.num_layers):
        for expert in range(meta.num_logical_experts):
            replicas = [p for p in l2all[layer, expert].tolist() if p >= 0]
            assert replicas == sorted(replicas)
            assert replicas == [p for p in range(meta.num_physical_experts) if p2l[layer, p] == expert]
            assert int(valid[layer, expert]) == len(replicas) >= 1
            assert (l2all[layer, expert, len(replicas) :] == -1).all()


def _check_dispatch(meta: ExpertLocationMetadata, dispatch: torch.Tensor, active: torch.Tensor) -> None:
    """Every expert goes to a replica of itself on a live rank."""
    assert (dispatch >= 0).all()
    logical = meta.physical_to_logical_map.gather(1, dispatch)
    assert torch.equal(logical, torch.arange(meta.num_logical_experts).expand_as(logical))
    assert (active[dispatch // meta.num_physical_per_rank] != 0).all()


SIZES = [
    (world, per_member, per_rank, experts)
    for world, per_member, per_rank in itertools.product(range(2, 9), (1, 2), (1, 2, 3, 4))
    if world % per_member == 0
    for experts in sorted({2, per_rank * per_member, world * per_rank // 2 + 1, world * per_rank})
]


@pytest.mark.parametrize(("world", "per_member", "per_rank", "experts"), SIZES)
def test_placement_survives_any_single_nonzero_member_loss(
    world: int, per_member: int, per_rank: int, experts: int
) -> None:
    if not _feasible(experts, world, per_member, per_rank):
        with pytest.raises(PlacementError, match=r"cannot place|do not fit"):
            build_placement(3, experts, world, per_member, per_rank)
        return
    meta = build_placement(3, experts, world, per_member, per_rank)
    assert meta.world_size == world
    assert meta.physical_to_logical_map.shape == (3, world * per_rank)
    _check_structure(meta)
    for member in [None, *range(1, world // per_member)]:
        active = _active_without_member(world, per_member, member)
        assert bool(coverage(meta, active).all()), f"member {member} lost leaves an expert uncovered"
        assert uncovered_experts(meta, active) == []
        dispatch = rebalance(meta, active)
        _check_dispatch(meta, dispatch, active)
        # Balanced: no live rank gets more than one expert above an even share, per layer.
        live = int(active.sum())
        for layer in range(meta.num_layers):
            ranks = dispatch[layer] // per_rank
            load = torch.bincount(ranks, minlength=world)
            assert int(load.max()) <= -(-experts // live) + 1, (member, load.tolist())


def test_initial_dispatch_is_the_all_live_rebalance() -> None:
    meta = build_placement(4, 16, 8, 2, 4)
    all_live = torch.ones(8, dtype=torch.int32)
    assert torch.equal(meta.logical_to_rank_dispatch_physical_map, rebalance(meta, all_live))
    _check_dispatch(meta, meta.logical_to_rank_dispatch_physical_map, all_live)


def test_rebalance_is_deterministic_and_identical_across_independent_builds() -> None:
    active = _active_without_member(8, 2, 2)
    first = rebalance(build_placement(4, 16, 8, 2, 4), active)
    for _ in range(3):
        assert torch.equal(rebalance(build_placement(4, 16, 8, 2, 4), active.clone()), first)


def test_rebalance_marks_uncovered_experts_and_lists_them() -> None:
    # 4 experts on 3 x 2 slots: two of them can only sit on member 0, so losing member 0 uncovers them.
    meta = build_placement(2, 4, 3, 1, 2)
    active = torch.tensor([0, 1, 1], dtype=torch.int32)
    dispatch = rebalance(meta, active)
    missing = uncovered_experts(meta, active)
    assert missing, "member 0 held experts alone; they must be reported"
    for layer, expert in missing:
        assert int(dispatch[layer, expert]) == -1
    covered = coverage(meta, active)
    assert not bool(covered.all())
    assert ((dispatch == -1) == ~covered).all()
    live = dispatch[dispatch >= 0]
    assert (live // meta.num_physical_per_rank >= 1).all()


def test_rebalance_out_writes_in_place() -> None:
    meta = build_placement(2, 8, 4, 1, 4)
    target = meta.logical_to_rank_dispatch_physical_map
    address = target.data_ptr()
    active = _active_without_member(4, 1, 3)
    result = rebalance(meta, active, out=target)
    assert result.data_ptr() == address
    _check_dispatch(meta, target, active)


def test_layers_differ_but_stay_valid() -> None:
    meta = build_placement(3, 6, 3, 1, 4)
    assert not torch.equal(meta.physical_to_logical_map[0], meta.physical_to_logical_map[1])
    _check_structure(meta)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((0, 4, 2, 1, 2), ValueError),
        ((2, 4, 3, 2, 2), ValueError),  # world not a multiple of ranks_per_member
        ((2, 9, 2, 1, 4), PlacementError),  # more experts than slots
        ((2, 5, 2, 1, 4), PlacementError),  # two members: every expert must sit on member 0 (4 slots)
    ],
)
def test_impossible_or_bad_sizes_raise(args: tuple[int, int, int, int, int], error: type[Exception]) -> None:
    with pytest.raises(error):
        build_placement(*args)


def test_pack_unpack_round_trip_after_rebalance() -> None:
    meta = build_placement(3, 12, 6, 2, 4)
    meta = meta.with_dispatch_map(rebalance(meta, _active_without_member(6, 2, 1)))
    packed = pack(meta)
    assert packed.header.numel() == HEADER_NUMEL
    assert packed.header.dtype == packed.body.dtype == torch.int64
    # The joiner's side: size its buffer from the header alone, then receive the body into it.
    layout = MetadataLayout.from_header(packed.header.clone())
    buffer = torch.empty(layout.body_numel, dtype=torch.int64)
    buffer.copy_(packed.body)
    back = unpack(packed.header, buffer)
    for name in (
        "physical_to_logical_map",
        "logical_to_all_physical_map",
        "logical_to_all_physical_map_num_valid",
        "logical_to_rank_dispatch_physical_map",
    ):
        assert torch.equal(getattr(back, name), getattr(meta, name)), name
    assert (back.num_physical_per_rank, back.ranks_per_member) == (4, 2)
    buffer.zero_()  # unpack must not alias the receive buffer
    assert torch.equal(back.physical_to_logical_map, meta.physical_to_logical_map)


def test_unpack_rejects_garbage() -> None:
    meta = build_placement(2, 4, 2, 1, 4)
    packed = pack(meta)
    bad_magic = packed.header.clone()
    bad_magic[0] = 7
    with pytest.raises(ValueError, match="not an expert-location header"):
        unpack(bad_magic, packed.body)
    with pytest.raises(ValueError, match="elements"):
        unpack(packed.header, packed.body[:-1])
    bad_version = packed.header.clone()
    bad_version[1] = 99
    with pytest.raises(ValueError, match="version"):
        unpack(bad_version, packed.body)


def test_to_cpu_is_an_independent_copy() -> None:
    meta = build_placement(2, 4, 2, 1, 4)
    copy = meta.to_cpu()
    copy.logical_to_rank_dispatch_physical_map.fill_(-1)
    assert (meta.logical_to_rank_dispatch_physical_map >= 0).all()
    assert copy.device.type == "cpu"


def test_metadata_rejects_inconsistent_shapes() -> None:
    meta = build_placement(2, 4, 2, 1, 4)
    with pytest.raises(ValueError, match="shape"):
        meta.with_dispatch_map(torch.zeros(3, 4, dtype=torch.int64))
