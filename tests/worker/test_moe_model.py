"""The sharded MoE forward on simulated ranks equals the float64 reference for any covering set of live ranks.

Each simulated rank runs the real `ShardedMoEModel.forward` in its own thread; their `combine` is a
barrier-based sum over the live ranks' partial outputs, i.e. exactly what all_reduce(SUM) returns.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

torch = pytest.importorskip("torch")

from eep_worker.expert_location import ExpertLocationMetadata, build_placement, rebalance  # noqa: E402
from eep_worker.moe import (  # noqa: E402
    Combine,
    ModelConfig,
    ReferenceMoEModel,
    ShardedMoEModel,
    compare,
    tolerance_for,
)


class _SimulatedAllReduce:
    """all_reduce(SUM) across threads: every live rank contributes, every rank gets the same sum."""

    def __init__(self, ranks: Sequence[int]) -> None:
        self._ranks = list(ranks)
        self._parts: dict[int, torch.Tensor] = {}
        self._barrier = threading.Barrier(len(self._ranks), timeout=30)
        self.calls = 0

    def for_rank(self, rank: int) -> Combine:
        def combine(partial: torch.Tensor) -> torch.Tensor:
            self._parts[rank] = partial
            self._barrier.wait()
            total = torch.zeros_like(partial)
            for r in self._ranks:  # same order on every rank, like a deterministic reduction
                total = total + self._parts[r]
            if rank == self._ranks[0]:
                self.calls += 1
            self._barrier.wait()  # nobody overwrites a part before everyone has summed
            return total

        return combine


def _serve(
    shards: dict[int, ShardedMoEModel], live: Sequence[int], tokens: torch.Tensor, dispatch: torch.Tensor
) -> dict[int, torch.Tensor]:
    reduce = _SimulatedAllReduce(live)
    outputs: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def run(rank: int) -> None:
        try:
            outputs[rank] = shards[rank].forward(tokens, dispatch, reduce.for_rank(rank))
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(rank,)) for rank in live]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert reduce.calls == shards[live[0]].config.num_layers
    return outputs


def _tokens(config: ModelConfig, count: int = 256, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (count,), generator=torch.Generator().manual_seed(seed))


def _shards(config: ModelConfig, meta: ExpertLocationMetadata) -> dict[int, ShardedMoEModel]:
    return {rank: ShardedMoEModel.build(config, meta, rank) for rank in range(meta.world_size)}


@pytest.mark.parametrize(
    ("world", "per_member", "per_rank", "experts"),
    [(2, 1, 4, 4), (3, 1, 4, 6), (4, 2, 3, 6), (4, 1, 4, 8), (6, 2, 2, 7), (8, 2, 2, 10)],
)
def test_sharded_forward_matches_reference_with_any_single_nonzero_member_dead(
    world: int, per_member: int, per_rank: int, experts: int
) -> None:
    config = ModelConfig(num_layers=3, hidden_size=32, ffn_size=64, num_experts=experts, top_k=2, seed=world)
    meta = build_placement(config.num_layers, experts, world, per_member, per_rank)
    shards = _shards(config, meta)
    tokens = _tokens(config)
    expected = ReferenceMoEModel(config).run(tokens)
    tolerance = tolerance_for(config)
    for dead_member in [None, *range(1, world // per_member)]:
        active = torch.ones(world, dtype=torch.int32)
        if dead_member is not None:
            active[dead_member * per_member : (dead_member + 1) * per_member] = 0
        live = [rank for rank in range(world) if active[rank]]
        outputs = _serve(shards, live, tokens, rebalance(meta, active))
        for rank in live:
            assert outputs[rank].dtype == torch.float32
            check = compare(outputs[rank], expected, tolerance)
            assert check.ok, (dead_member, rank, check)
            assert len(check.ambiguous_tokens) < len(tokens) // 20
        for rank in live[1:]:
            assert torch.equal(outputs[rank], outputs[live[0]]), "ranks disagree"


def test_stale_dispatch_map_after_a_loss_gives_wrong_answers() -> None:
    """Negative control: the check above can fail. Dropping a rank without rebalancing loses its tokens."""
    config = ModelConfig(num_layers=2, hidden_size=32, ffn_size=64, num_experts=8)
    meta = build_placement(config.num_layers, 8, 4, 1, 4)
    shards = _shards(config, meta)
    tokens = _tokens(config)
    outputs = _serve(shards, [0, 1, 2], tokens, meta.logical_to_rank_dispatch_physical_map)
    check = compare(outputs[0], ReferenceMoEModel(config).run(tokens), tolerance_for(config))
    assert not check.ok
    assert check.max_abs_error > 1e-2


def test_float64_serving_matches_to_float64_rounding() -> None:
    config = ModelConfig(num_layers=2, hidden_size=32, ffn_size=64, num_experts=6, dtype=torch.float64)
    meta = build_placement(config.num_layers, 6, 3, 1, 4)
    tokens = _tokens(config, 64)
    outputs = _serve(_shards(config, meta), [0, 1, 2], tokens, meta.logical_to_rank_dispatch_physical_map)
    tolerance = tolerance_for(config)
    assert tolerance.atol < 1e-12
    check = compare(outputs[0], ReferenceMoEModel(config).run(tokens), tolerance)
    assert check.ok, check


def test_per_layer_api_composes_to_forward() -> None:
    config = ModelConfig(num_layers=2, hidden_size=16, ffn_size=32, num_experts=4)
    meta = build_placement(config.num_layers, 4, 1, 1, 4)  # one rank holds everything
    model = ShardedMoEModel.build(config, meta, 0)
    tokens = _tokens(config, 32)
    dispatch = meta.logical_to_rank_dispatch_physical_map
    hidden = model.embed(tokens)
    for layer in range(config.num_layers):
        hidden = hidden + model.layer_partial(layer, hidden, dispatch[layer])
    assert torch.equal(hidden, model.forward(tokens, dispatch, lambda t: t))


def test_replicas_hold_identical_weights_and_a_joiner_rebuilds_its_shard() -> None:
    config = ModelConfig(num_layers=2, num_experts=6)
    meta = build_placement(config.num_layers, 6, 3, 1, 4)
    shards = _shards(config, meta)
    seen: dict[tuple[int, int], torch.Tensor] = {}
    for rank, shard in shards.items():
        for layer in range(config.num_layers):
            for slot, logical in enumerate(shard.local_logical_ids[layer].tolist()):
                previous = seen.setdefault((layer, logical), shard.up[layer, slot])
                assert torch.equal(previous, shard.up[layer, slot]), (rank, layer, logical)
    rebuilt = ShardedMoEModel.build(config, meta.to_cpu(), 2)
    assert torch.equal(rebuilt.up, shards[2].up)
    assert torch.equal(rebuilt.down, shards[2].down)
    other_seed = ShardedMoEModel.build(ModelConfig(num_layers=2, num_experts=6, seed=1), meta, 2)
    assert not torch.equal(other_seed.up, shards[2].up)


def test_config_and_tolerance_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        ModelConfig(top_k=9, num_experts=8)
    with pytest.raises(ValueError):
        ModelConfig(dtype=torch.int32)
    with pytest.raises(ValueError, match="float32/float64"):
        tolerance_for(ModelConfig(dtype=torch.bfloat16))
    meta = build_placement(2, 8, 4, 1, 4)
    with pytest.raises(ValueError, match="layers"):
        ShardedMoEModel.build(ModelConfig(num_layers=3), meta, 0)


def test_compare_flags_an_error_just_above_tolerance() -> None:
    config = ModelConfig(num_layers=2, hidden_size=16, ffn_size=32, num_experts=4)
    tokens = _tokens(config, 16)
    expected = ReferenceMoEModel(config).run(tokens)
    tolerance = tolerance_for(config)
    served = expected.output.to(torch.float32)
    assert compare(served, expected, tolerance).ok
    bumped = expected.output.clone()
    bumped[3, 5] += 2 * (tolerance.atol + tolerance.rtol * abs(float(expected.output[3, 5])))
    check = compare(bumped, expected, tolerance)
    assert not check.ok or 3 in check.ambiguous_tokens
