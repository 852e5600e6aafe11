"""The reference MoE model's configuration and its seeded weights.

Every weight is a pure function of ``(seed, what, layer, index)``, generated in float64 on the CPU with its
own `torch.Generator`: any rank builds exactly its shard, a joiner rebuilds its own without a transfer, and
the float64 reference (`reference.py`) uses the very same numbers. Served weights are these values rounded
to `ModelConfig.dtype`. Called by `model.py` and `reference.py` only.
"""

from __future__ import annotations

import dataclasses
import enum
import math

import torch

__all__ = [
    "ModelConfig",
    "embedding_weight",
    "expert_weights",
    "rms_norm",
    "router_weight",
]

_RMS_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes of the reference MoE model; all ranks (and the reference) must use the same values."""

    num_layers: int = 4
    """MoE layers (each: RMS norm, router, top-k experts, residual)."""
    hidden_size: int = 64
    """Width of the residual stream and of each token's output vector."""
    ffn_size: int = 128
    """Inner width of one expert MLP."""
    num_experts: int = 8
    """Logical experts per layer (E)."""
    top_k: int = 2
    """Experts each token is routed to per layer."""
    vocab_size: int = 1024
    """Token ids accepted: ``0 <= id < vocab_size``."""
    seed: int = 0
    """Seeds every weight; see the module docstring."""
    dtype: torch.dtype = torch.float32
    """Dtype the sharded model serves in (the reference is always float64)."""

    def __post_init__(self) -> None:
        sizes = (
            self.num_layers,
            self.hidden_size,
            self.ffn_size,
            self.num_experts,
            self.top_k,
            self.vocab_size,
        )
        if min(sizes) < 1:
            raise ValueError(f"model sizes must be >= 1: {self}")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k {self.top_k} exceeds num_experts {self.num_experts}")
        if not self.dtype.is_floating_point:
            raise ValueError(f"dtype must be floating point, got {self.dtype}")


class _Kind(enum.IntEnum):
    """Separates the random streams of the different weight kinds."""

    EMBEDDING = 1
    ROUTER = 2
    EXPERT = 3


def _generator(config: ModelConfig, kind: _Kind, layer: int, index: int) -> torch.Generator:
    # A fixed polynomial mix (Python's hash of ints is stable too, but this states the contract explicitly).
    mixed = config.seed
    for part in (int(kind), layer, index):
        mixed = (mixed * 1_000_003 + part + 1) % (2**63 - 1)
    return torch.Generator(device="cpu").manual_seed(mixed)


def embedding_weight(config: ModelConfig) -> torch.Tensor:
    """``[vocab, hidden]`` float64 on CPU, unit variance."""
    gen = _generator(config, _Kind.EMBEDDING, 0, 0)
    return torch.randn(config.vocab_size, config.hidden_size, generator=gen, dtype=torch.float64)


def router_weight(config: ModelConfig, layer: int) -> torch.Tensor:
    """``[hidden, E]`` float64 on CPU; logits of a unit-RMS input have unit variance."""
    gen = _generator(config, _Kind.ROUTER, layer, 0)
    weight = torch.randn(config.hidden_size, config.num_experts, generator=gen, dtype=torch.float64)
    return weight / math.sqrt(config.hidden_size)


def expert_weights(config: ModelConfig, layer: int, logical_expert: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(up [hidden, ffn], down [ffn, hidden])`` float64 on CPU for one logical expert of one layer."""
    gen = _generator(config, _Kind.EXPERT, layer, logical_expert)
    up = torch.randn(config.hidden_size, config.ffn_size, generator=gen, dtype=torch.float64)
    down = torch.randn(config.ffn_size, config.hidden_size, generator=gen, dtype=torch.float64)
    return up / math.sqrt(config.hidden_size), down / math.sqrt(config.ffn_size)


def rms_norm(hidden: torch.Tensor) -> torch.Tensor:
    """Weightless RMS norm over the last dimension (keeps every layer's input at unit scale)."""
    return hidden * torch.rsqrt(hidden.pow(2).mean(dim=-1, keepdim=True) + _RMS_EPS)
