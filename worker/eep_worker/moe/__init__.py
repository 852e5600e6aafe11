"""The reference expert-parallel MoE model served by the worker, and its float64 reference.

Public API (the serving loop and the test client use only these names):
- `ModelConfig`: sizes, seed, served dtype (the supervisor validates client input against the contract's
  `InferRequest` and `VOCAB_SIZE` before it reaches a rank).
- `ShardedMoEModel.build(config, metadata, rank, device)`; `model.forward(token_ids, dispatch_map, combine)`
  (per layer: `model.layer(...)` / `model.layer_partial(...)`); `Combine` is the injected all-reduce.
- `ReferenceMoEModel(config).run(token_ids)`, `compare(served, expected, tolerance_for(config))`.

The expert placement and dispatch map come from `eep_worker.expert_location`. Depends on torch only.
"""

from eep_worker.moe.config import ModelConfig
from eep_worker.moe.model import Combine, ShardedMoEModel
from eep_worker.moe.reference import (
    ReferenceCheck,
    ReferenceMoEModel,
    ReferenceOutput,
    Tolerance,
    compare,
    tolerance_for,
)

__all__ = [
    "Combine",
    "ModelConfig",
    "ReferenceCheck",
    "ReferenceMoEModel",
    "ReferenceOutput",
    "ShardedMoEModel",
    "Tolerance",
    "compare",
    "tolerance_for",
]
