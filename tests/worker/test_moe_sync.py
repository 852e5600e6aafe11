"""The hot path (`rebalance`, `coverage`, `ShardedMoEModel.forward`) has no host-device sync.

`torch.cuda.set_sync_debug_mode` needs a GPU, so on CPU we use two detectors:

1. The meta device. Meta tensors have shapes but no data, so anything that reads a value on the host fails
   there: ``.item()``, ``bool()``/``int()``/``if tensor``, ``.tolist()``, ``.cpu()``, ``.numpy()``, and
   ops whose output shape depends on data (``nonzero``, ``masked_select``, ``unique``). Those are exactly
   the operations that force a CUDA host sync. Running the hot path end to end on meta proves it uses
   none of them, whatever Python code it goes through.
2. A dispatch mode on real CPU tensors that records every aten op and rejects the sync ones
   (``_local_scalar_dense`` is what ``item``/``bool``/``int`` lower to).

Each detector has a negative control showing it catches a deliberate sync.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from eep_worker.expert_location import build_placement, coverage, rebalance  # noqa: E402
from eep_worker.moe import ModelConfig, ShardedMoEModel  # noqa: E402

_SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "item"}

CONFIG = ModelConfig(num_layers=2, hidden_size=16, ffn_size=32, num_experts=8)


class _RecordOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.add(func._schema.name.split("::")[-1])
        return func(*args, **(kwargs or {}))


def _meta_setup() -> tuple[Any, ShardedMoEModel, torch.Tensor, torch.Tensor]:
    placement = build_placement(CONFIG.num_layers, 8, 4, 2, 4)
    on_meta = placement.to("meta")
    model = ShardedMoEModel.build(CONFIG, placement, rank=2, device="meta")
    tokens = torch.zeros(64, dtype=torch.int64, device="meta")
    active = torch.ones(4, dtype=torch.int32, device="meta")
    return on_meta, model, tokens, active


def test_rebalance_and_forward_run_on_meta_tensors() -> None:
    metadata, model, tokens, active = _meta_setup()
    dispatch = rebalance(metadata, active, out=metadata.logical_to_rank_dispatch_physical_map)
    covered = coverage(metadata, active)
    assert dispatch.device.type == covered.device.type == "meta"
    combined: list[torch.Tensor] = []

    def combine(partial: torch.Tensor) -> torch.Tensor:
        combined.append(partial)
        return partial

    out = model.forward(tokens, dispatch, combine)
    assert out.device.type == "meta"
    assert out.shape == (64, CONFIG.hidden_size)
    assert len(combined) == CONFIG.num_layers
    assert all(p.shape == (64, CONFIG.hidden_size) for p in combined)


class _SyncingModel(ShardedMoEModel):
    """Negative control: a data-dependent branch in the router, as a careless edit would add."""

    def route(self, layer: int, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids, weights = super().route(layer, normed)
        if (weights < 0).any():  # host reads a device value: a sync on GPU
            raise AssertionError("unreachable")
        return ids, weights


@pytest.mark.parametrize(
    "sync",
    [
        lambda t: t.sum().item(),
        lambda t: t.tolist(),
        lambda t: t.cpu(),
        lambda t: t.nonzero(),
        lambda t: bool(t.any()),
    ],
    ids=["item", "tolist", "cpu", "nonzero", "bool"],
)
def test_meta_detector_catches_host_reads(sync: Any) -> None:
    with pytest.raises((RuntimeError, NotImplementedError)):
        sync(torch.ones(4, device="meta"))


def test_meta_detector_catches_a_sync_in_the_forward() -> None:
    placement = build_placement(CONFIG.num_layers, 8, 4, 2, 4)
    model = _SyncingModel.build(CONFIG, placement, rank=0, device="meta")
    tokens = torch.zeros(8, dtype=torch.int64, device="meta")
    with pytest.raises(RuntimeError, match="meta"):
        model.forward(tokens, placement.to("meta").logical_to_rank_dispatch_physical_map, lambda t: t)


def test_no_sync_ops_dispatched_on_cpu() -> None:
    placement = build_placement(CONFIG.num_layers, 8, 4, 2, 4)
    model = ShardedMoEModel.build(CONFIG, placement, rank=1)
    tokens = torch.arange(32)
    active = torch.tensor([1, 1, 0, 0], dtype=torch.int32)
    with _RecordOps() as recorder:
        dispatch = rebalance(placement, active)
        coverage(placement, active)
        model.forward(tokens, dispatch, lambda t: t)
    assert "topk" in recorder.ops  # the recorder sees the forward's ops
    assert not recorder.ops & _SYNC_OPS, recorder.ops & _SYNC_OPS


def test_op_recorder_catches_item() -> None:
    with _RecordOps() as recorder:
        torch.ones(3).sum().item()
    assert "_local_scalar_dense" in recorder.ops
