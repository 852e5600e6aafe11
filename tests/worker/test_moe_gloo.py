"""The combine contract across real processes: 3 ranks, torch.distributed gloo, all_reduce(SUM) as combine.

Step 1: all three ranks serve. Step 2: rank 2 stops taking part (as if its member died); ranks 0 and 1
rebalance to the replicas they hold and combine over a process group of the live ranks only. Every live
rank's output must equal the float64 reference. (Mooncake's own groups are the runtime's business; this
test pins down what the model expects from whatever `combine` it is given.)
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
mp = pytest.importorskip("torch.multiprocessing")

from eep_worker.expert_location import build_placement, rebalance  # noqa: E402
from eep_worker.moe import Combine, ModelConfig, ReferenceMoEModel, ShardedMoEModel, compare, tolerance_for  # noqa: E402

WORLD = 3
CONFIG = ModelConfig(num_layers=3, hidden_size=32, ffn_size=64, num_experts=6, seed=7)
TOKENS = list(range(0, 1000, 7))


def _rank_main(rank: int, store_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # three processes on a small machine
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store_file}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        metadata = build_placement(CONFIG.num_layers, CONFIG.num_experts, WORLD, 1, 4)
        model = ShardedMoEModel.build(CONFIG, metadata, rank)
        tokens = torch.tensor(TOKENS)

        def combine_over(group: dist.ProcessGroup | None) -> Combine:
            def combine(partial: torch.Tensor) -> torch.Tensor:
                total = partial.clone()
                dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
                return total

            return combine

        full = model.forward(tokens, metadata.logical_to_rank_dispatch_physical_map, combine_over(None))
        torch.save(full, os.path.join(out_dir, f"full-{rank}.pt"))
        # Every rank must call new_group, members or not.
        survivors = dist.new_group(ranks=[0, 1])
        if rank in (0, 1):
            active = torch.tensor([1, 1, 0], dtype=torch.int32)
            dispatch = rebalance(metadata, active)
            degraded = model.forward(tokens, dispatch, combine_over(survivors))
            torch.save(degraded, os.path.join(out_dir, f"degraded-{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_combine_is_an_all_reduce_across_real_processes(tmp_path: Path) -> None:
    mp.spawn(_rank_main, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    expected = ReferenceMoEModel(CONFIG).run(TOKENS)
    tolerance = tolerance_for(CONFIG)
    outputs = {path.stem: torch.load(path) for path in tmp_path.glob("*.pt")}
    assert sorted(outputs) == ["degraded-0", "degraded-1", "full-0", "full-1", "full-2"]
    for name, output in outputs.items():
        check = compare(output, expected, tolerance)
        assert check.ok, (name, check)
    assert torch.equal(outputs["full-0"], outputs["full-2"])
    assert torch.equal(outputs["degraded-0"], outputs["degraded-1"])
