"""One rank's shard of the reference expert-parallel MoE model.

Called by the worker's serving loop: at start-up (and by a joiner after it receives the expert-location
metadata) it builds `ShardedMoEModel.build(config, metadata, rank, device)`; each step it calls
`model.forward(token_ids, metadata.logical_to_rank_dispatch_physical_map, combine)` on every live rank with
the same token batch, where ``combine`` is an all-reduce (SUM) over the live process group. The result is
the same on every rank.

Per layer: ``x = rms_norm(h)``; router logits ``x @ W_r``; top-k logical experts with softmax weights over
the k chosen logits; the dispatch map turns each chosen logical expert into one physical replica; a rank
computes, for the tokens routed to the physical experts it owns, ``weight * down(silu(up(x)))`` and
``combine`` sums those partial outputs over the ranks; then the residual ``h + combined``. Replicas of one
logical expert hold identical weights, so which live replica computes a token does not change the answer.

The hot path has no host-device sync and static shapes: every local expert runs densely over all tokens
and a gate of zeros masks the tokens not routed to it (fine for a small reference model; a production
kernel would gather). Tokens are independent of each other (no attention), so each output row depends only
on its own token id.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from eep_worker.expert_location import ExpertLocationMetadata
from eep_worker.moe.config import ModelConfig, embedding_weight, expert_weights, rms_norm, router_weight

__all__ = ["Combine", "ShardedMoEModel"]

Combine = Callable[[torch.Tensor], torch.Tensor]
"""Sums a ``[tokens, hidden]`` partial output over the live ranks and returns the sum (out of place or in
place; the return value is used). The runtime passes an all-reduce(SUM) over the live process group."""


class ShardedMoEModel:
    """The weights rank ``rank`` holds (embedding and routers replicated, experts only for its own slots)."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        rank: int,
        local_logical_ids: torch.Tensor,
        num_physical_per_rank: int,
        device: torch.device | str = "cpu",
    ) -> None:
        """Prefer `build`. ``local_logical_ids`` is ``[L, num_physical_per_rank]``: the logical expert held by
        each of this rank's physical slots per layer (a row slice of ``physical_to_logical_map``)."""
        local = torch.as_tensor(local_logical_ids, dtype=torch.int64).to("cpu")
        if tuple(local.shape) != (config.num_layers, num_physical_per_rank):
            raise ValueError(
                f"local_logical_ids has shape {tuple(local.shape)}, expected "
                f"{(config.num_layers, num_physical_per_rank)}"
            )
        if local.numel() and not bool(((local >= 0) & (local < config.num_experts)).all()):
            raise ValueError(f"local_logical_ids out of range [0, {config.num_experts})")
        self.config = config
        self.rank = rank
        self.num_physical_per_rank = num_physical_per_rank
        self.device = torch.device(device)
        dtype = config.dtype
        self.embedding = embedding_weight(config).to(self.device, dtype)
        routers = [router_weight(config, layer) for layer in range(config.num_layers)]
        self.routers = torch.stack(routers).to(self.device, dtype)  # [L, hidden, E]
        ups: list[torch.Tensor] = []
        downs: list[torch.Tensor] = []
        for layer, logical_ids in enumerate(local.tolist()):
            pairs = [expert_weights(config, layer, logical) for logical in logical_ids]
            ups.append(torch.stack([up for up, _ in pairs]))
            downs.append(torch.stack([down for _, down in pairs]))
        self.up = torch.stack(ups).to(self.device, dtype)  # [L, P_r, hidden, ffn]
        self.down = torch.stack(downs).to(self.device, dtype)  # [L, P_r, ffn, hidden]
        self.local_logical_ids = local.to(self.device)
        first = rank * num_physical_per_rank
        self.local_physical_ids = torch.arange(first, first + num_physical_per_rank, device=self.device)

    @classmethod
    def build(
        cls,
        config: ModelConfig,
        metadata: ExpertLocationMetadata,
        rank: int,
        device: torch.device | str = "cpu",
    ) -> ShardedMoEModel:
        """Rank ``rank``'s shard for the placement in ``metadata`` (start-up or join time; host reads)."""
        if metadata.num_layers != config.num_layers or metadata.num_logical_experts != config.num_experts:
            raise ValueError(
                f"metadata has {metadata.num_layers} layers x {metadata.num_logical_experts} experts, model "
                f"{config.num_layers} x {config.num_experts}"
            )
        slots = metadata.local_physical_ids(rank)
        local = metadata.physical_to_logical_map.to("cpu")[:, slots.start : slots.stop]
        return cls(
            config,
            rank=rank,
            local_logical_ids=local,
            num_physical_per_rank=metadata.num_physical_per_rank,
            device=device,
        )

    # ------------------------------------------------------------ hot path: tensor ops only, no host sync

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """``[T]`` int64 token ids (in ``[0, vocab_size)``: the supervisor validates client input) ->
        ``[T, hidden]``."""
        return torch.nn.functional.embedding(token_ids.to(self.device), self.embedding)

    def route(self, layer: int, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(``[T, k]`` logical expert ids, ``[T, k]`` softmax weights over the chosen logits)."""
        logits = normed @ self.routers[layer]
        top_logits, top_ids = logits.topk(self.config.top_k, dim=-1)
        return top_ids, torch.softmax(top_logits, dim=-1)

    def layer_partial(self, layer: int, hidden: torch.Tensor, dispatch_row: torch.Tensor) -> torch.Tensor:
        """This rank's ``[T, hidden]`` contribution to layer ``layer`` (before `combine` and the residual).

        ``dispatch_row`` is ``[E]``: row ``layer`` of the dispatch map (physical replica per logical expert).
        """
        normed = rms_norm(hidden)
        top_ids, top_weights = self.route(layer, normed)
        physical = dispatch_row.to(self.device)[top_ids]  # [T, k]
        # gate[t, j]: weight of token t for local slot j; zero where the token is dispatched elsewhere.
        hits = physical.unsqueeze(-1) == self.local_physical_ids  # [T, k, P_r]
        gate = (top_weights.unsqueeze(-1) * hits.to(top_weights.dtype)).sum(dim=1)  # [T, P_r]
        inner = torch.nn.functional.silu(torch.einsum("th,jhf->tjf", normed, self.up[layer]))
        out = torch.einsum("tjf,jfh->tjh", inner, self.down[layer])  # [T, P_r, hidden]
        return torch.einsum("tj,tjh->th", gate, out)

    def layer(
        self, layer: int, hidden: torch.Tensor, dispatch_row: torch.Tensor, combine: Combine
    ) -> torch.Tensor:
        """One MoE layer: ``hidden + combine(layer_partial(...))``."""
        return hidden + combine(self.layer_partial(layer, hidden, dispatch_row))

    def forward(self, token_ids: torch.Tensor, dispatch_map: torch.Tensor, combine: Combine) -> torch.Tensor:
        """``[T]`` token ids -> ``[T, hidden]`` outputs in ``config.dtype``, identical on every live rank.

        ``dispatch_map`` is ``[L, E]`` (`ExpertLocationMetadata.logical_to_rank_dispatch_physical_map`, kept
        current by `rebalance`); every rank must pass the same map and the same tokens. ``combine`` is called
        once per layer, in layer order, on every rank (a collective).
        """
        with torch.no_grad():
            hidden = self.embed(token_ids)
            for layer in range(self.config.num_layers):
                hidden = self.layer(layer, hidden, dispatch_map[layer], combine)
            return hidden

    __call__ = forward
