"""The float64 reference check: is a served answer the reference MoE model's answer?

The served model's settings come from member 0's `GET /v1/model` (`eep_contract.wire.MODEL_PATH`), so the
reference is built from what is actually served. The numbers come from `eep_worker.moe` (the single-process
float64 model and its tolerance for the served dtype).

Who uses it: `eep_testkit.client` (every answer of the worker tests and bench/cpu_recovery.py), the demo's
load client (`eep_demo.client`, also under bench/mttr.py and bench/soak.py); bench/gpu_recovery.py checks the
rows its rank processes answer with `check_rows`.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from eep_contract.wire import MODEL_PATH, InferReply
from eep_testkit.http_client import get_json
from eep_worker.moe import ModelConfig, ReferenceMoEModel, ReferenceOutput, compare, tolerance_for

__all__ = ["ReferenceChecker", "Verdict", "fetch_model_config", "model_config_from_wire"]


def model_config_from_wire(obj: dict[str, Any]) -> ModelConfig:
    """`GET /v1/model`'s `config` object -> ModelConfig (absent fields take ModelConfig's defaults).
    Raises ValueError for unknown fields or dtypes. Pure."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(obj) - fields
    if unknown:
        raise ValueError(f"unknown model config fields: {sorted(unknown)}")
    kwargs = dict(obj)
    if "dtype" in kwargs:
        name = str(kwargs["dtype"]).removeprefix("torch.")
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {kwargs['dtype']!r}")
        kwargs["dtype"] = dtype
    return ModelConfig(**kwargs)


def fetch_model_config(base_url: str, timeout_s: float = 10.0) -> ModelConfig:
    """The served model's config from `base_url` (member 0). Raises OSError (no answer) or ValueError (not a
    model description)."""
    doc = get_json(base_url, MODEL_PATH, timeout_s)
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ValueError(f"GET {MODEL_PATH}: no config object in {doc!r:.200}")
    return model_config_from_wire(doc["config"])


class Verdict(NamedTuple):
    ok: bool
    detail: str
    """Why not, for a wrong answer; for a right one, `epoch=N degraded=B` when the reply was given."""


class ReferenceChecker:
    """The float64 reference of one served config. `prompts()` precomputes a pool of answers (the reference
    costs a few ms per prompt; a load client on a small machine should not pay that per request); any other
    token list is computed when checked. Thread-safe."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.tolerance = tolerance_for(config)
        self._model = ReferenceMoEModel(config)
        self._pool: dict[tuple[int, ...], ReferenceOutput] = {}
        self._lock = threading.Lock()

    def prompts(self, n: int = 32, max_tokens: int = 8, seed: int = 1) -> list[tuple[int, ...]]:
        """`n` seeded token lists of 1..`max_tokens` ids, their reference answers computed now."""
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            tokens = tuple(rng.randrange(self.config.vocab_size) for _ in range(rng.randint(1, max_tokens)))
            self.expected(tokens, keep=True)
            out.append(tokens)
        return out

    def expected(self, tokens: Sequence[int], keep: bool = False) -> ReferenceOutput:
        """The reference answer (kept for next time when `keep`)."""
        key = tuple(tokens)
        with self._lock:
            found = self._pool.get(key)
        if found is not None:
            return found
        with self._lock:  # one model at a time: its modules are shared
            out = self._model.run(list(key))
            if keep:
                self._pool[key] = out
        return out

    def check_rows(self, tokens: Sequence[int], rows: Any) -> Verdict:
        """Served output rows (`[len(tokens)][hidden]` numbers) against the reference."""
        try:
            served = torch.tensor(rows, dtype=torch.float64)
            result = compare(served, self.expected(tokens), self.tolerance)
        except (ValueError, TypeError, RuntimeError) as exc:
            return Verdict(False, f"unusable output: {exc}")
        if not result.ok:
            return Verdict(False, f"max_abs_error={result.max_abs_error:.3g} excess={result.max_excess:.3g}")
        return Verdict(True, "")

    def check(self, tokens: Sequence[int], reply: InferReply) -> Verdict:
        """A reply of `POST /v1/infer` for `tokens`."""
        tag = f"epoch={reply.epoch} degraded={reply.degraded}"
        ok, detail = self.check_rows(tokens, reply.output)
        return Verdict(ok, tag if ok else f"{tag} {detail}")
