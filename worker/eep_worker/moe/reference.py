"""Single-process float64 reference: the answer every served request is checked against.

Called by the test client / checker (host side, CPU): ``ReferenceMoEModel(config).run(token_ids)`` then
``compare(served_output, expected, tolerance_for(config))``. It computes the same function as
`model.ShardedMoEModel` with every logical expert local (no placement, no dispatch map, no combine), in
float64, and by a different route (a dense ``[T, E]`` gate scattered from the top-k choice, one expert at a
time), so it also cross-checks the sharded code path.

Tolerance (served float32 vs this float64): ``|served - expected| <= atol + rtol * |expected|`` elementwise
with ``atol = rtol = 32 * u * sqrt(max(hidden, ffn)) * num_layers``, ``u`` the served dtype's unit roundoff
(2**-24 for float32). Why: each layer's output is a sum of dot products of length <= max(hidden, ffn) over
unit-scale operands (RMS-normed inputs, 1/sqrt(fan-in) weights, softmax gates <= 1); rounding errors of a
length-n dot product grow like sqrt(n) * u in practice (n * u is the worst-case bound), the partial sums
over ranks add a few more roundings, and the residual stream carries each layer's error forward, so errors
add up over the layers. The factor 32 is headroom: the measured error is 20-70x below the bound for the
configs the unit tests use (1e-6 to 4e-6 against 2e-5 to 2.4e-4). For the default config (hidden 64,
ffn 128, 4 layers) the bound is about 8.6e-5. It assumes TF32 matmuls are off (PyTorch's default for
float32 matmul; on a GPU keep ``torch.backends.cuda.matmul.allow_tf32`` False).

Router near-ties: the top-k choice is discontinuous. If the k-th and (k+1)-th logits of a token differ by
less than the served dtype's error, the served model may legitimately choose another expert and its answer
differs by O(1). `run` reports each token's smallest such gap over the layers; tokens below
``Tolerance.tie_margin`` (= atol: a logit's error is of the order of the hidden state's, which is 20x+
below atol) are reported as ambiguous and not compared, never silently passed: with these random
weights, 0 to 0.7% of the tokens depending on the config (more layers, more chances).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from eep_worker.moe.config import ModelConfig, embedding_weight, expert_weights, rms_norm, router_weight

__all__ = ["ReferenceCheck", "ReferenceMoEModel", "ReferenceOutput", "Tolerance", "compare", "tolerance_for"]

_SAFETY = 32


@dataclasses.dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    tie_margin: float
    """Tokens whose float64 router margin is below this are ambiguous (see the module docstring)."""


def tolerance_for(config: ModelConfig) -> Tolerance:
    """The tolerance for outputs served in ``config.dtype``. Raises ValueError for dtypes below float32,
    whose rounding makes router flips common and a meaningful elementwise check impossible."""
    if config.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"the float64 reference check is defined for float32/float64 serving, not {config.dtype}"
        )
    unit_roundoff = torch.finfo(config.dtype).eps / 2
    bound = _SAFETY * unit_roundoff * math.sqrt(max(config.hidden_size, config.ffn_size)) * config.num_layers
    return Tolerance(rtol=bound, atol=bound, tie_margin=bound)


@dataclasses.dataclass(frozen=True)
class ReferenceOutput:
    output: torch.Tensor
    """``[T, hidden]`` float64."""
    router_margin: torch.Tensor
    """``[T]`` float64: least gap over layers between the k-th and (k+1)-th router logit (inf if k == E)."""


@dataclasses.dataclass(frozen=True)
class ReferenceCheck:
    ok: bool
    max_abs_error: float
    """Over the compared (non-ambiguous) tokens."""
    max_excess: float
    """Largest ``|err| - (atol + rtol * |expected|)``; <= 0 when ok."""
    ambiguous_tokens: tuple[int, ...]
    """Token positions skipped because of a router near-tie."""


class ReferenceMoEModel:
    """All logical experts of every layer, float64, CPU."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.embedding = embedding_weight(config)
        self.routers = [router_weight(config, layer) for layer in range(config.num_layers)]
        self.experts = [
            [expert_weights(config, layer, expert) for expert in range(config.num_experts)]
            for layer in range(config.num_layers)
        ]

    def run(self, token_ids: torch.Tensor | list[int]) -> ReferenceOutput:
        config = self.config
        ids = torch.as_tensor(token_ids, dtype=torch.int64).to("cpu")
        hidden = self.embedding[ids]
        margin = torch.full((ids.numel(),), math.inf, dtype=torch.float64)
        with torch.no_grad():
            for layer in range(config.num_layers):
                normed = rms_norm(hidden)
                logits = normed @ self.routers[layer]
                ranked = logits.sort(dim=-1, descending=True).values
                if config.top_k < config.num_experts:
                    gap = ranked[:, config.top_k - 1] - ranked[:, config.top_k]
                    margin = torch.minimum(margin, gap)
                top_logits, top_ids = logits.topk(config.top_k, dim=-1)
                gate = torch.zeros_like(logits).scatter(1, top_ids, torch.softmax(top_logits, dim=-1))
                update = torch.zeros_like(hidden)
                for expert, (up, down) in enumerate(self.experts[layer]):
                    update += gate[:, expert : expert + 1] * (torch.nn.functional.silu(normed @ up) @ down)
                hidden = hidden + update
        return ReferenceOutput(output=hidden, router_margin=margin)


def compare(served: torch.Tensor, expected: ReferenceOutput, tolerance: Tolerance) -> ReferenceCheck:
    """Check a served ``[T, hidden]`` output against the reference (host side; copies to CPU)."""
    got = served.detach().to("cpu", torch.float64)
    want = expected.output
    if got.shape != want.shape:
        raise ValueError(f"served output has shape {tuple(got.shape)}, reference {tuple(want.shape)}")
    ambiguous = expected.router_margin < tolerance.tie_margin
    keep = ~ambiguous
    error = (got - want).abs()
    excess = error - (tolerance.atol + tolerance.rtol * want.abs())
    compared_error = error[keep]
    compared_excess = excess[keep]
    max_error = float(compared_error.max()) if compared_error.numel() else 0.0
    max_excess = float(compared_excess.max()) if compared_excess.numel() else -math.inf
    finite = bool(torch.isfinite(got[keep]).all())
    return ReferenceCheck(
        ok=finite and max_excess <= 0,
        max_abs_error=max_error,
        max_excess=max_excess,
        ambiguous_tokens=tuple(int(i) for i in ambiguous.nonzero().flatten().tolist()),
    )
