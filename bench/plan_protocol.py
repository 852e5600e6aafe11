#!/usr/bin/env python3
"""Host time of the step plan's encode (leader) and header decode (followers), against the ways they were done
before 8d8a3d9, side by side in one process; prints and writes one JSON result.

    .venv/bin/python bench/plan_protocol.py --output bench/results/plan_protocol.json

- encode: `protocol.encode_into` (one `struct` call) against numpy slice assignments from Python ints (the
  header, the tokens, the zero padding: what it did before).
- decode: `protocol.decode_header` (kind and rank fields checked once per distinct value, cached) against the
  same checks run on every call (the cache bypassed: what it did before).
The toy model's plan: 64 token slots, full batch, world of 2. Both run on every rank's critical path per step.
"""

from __future__ import annotations

import argparse
import json
import platform
import timeit
from pathlib import Path
from typing import Any

import numpy as np

from eep_worker import protocol as P


def numpy_encode_into(plan: P.StepPlan, out: Any) -> None:
    n = len(plan.tokens)
    out[: P.HEADER] = P._header(plan)
    out[P.HEADER : P.HEADER + n] = plan.tokens
    out[P.HEADER + n :] = 0


def measure(slots: int = 64, world: int = 2, number: int = 20000, repeats: int = 9) -> dict[str, Any]:
    plan = P.StepPlan(1, 5, P.Kind.BATCH, tuple(range(7, 7 + slots)), frozenset(range(world)))
    buf = np.zeros(P.HEADER + slots, dtype=np.int64)
    P.encode_into(plan, buf)
    header = buf[: P.HEADER].tolist()
    # The old way: the cache bypassed by putting the unwrapped function in its place for one decode. This
    # measures a private detail of `protocol` on purpose (what the cache saves); the runtime never swaps it.
    uncached: Any = P._membership_fields.__wrapped__

    def decode_uncached() -> None:
        saved = P._membership_fields
        P._membership_fields = uncached
        try:
            P.decode_header(header, capacity=slots, world_size=world, min_epoch=0, after_step=0)
        finally:
            P._membership_fields = saved

    def swap_only() -> None:  # what decode_uncached adds besides the decode: subtracted below
        saved = P._membership_fields
        P._membership_fields = uncached
        P._membership_fields = saved

    variants = {
        "encode_struct": lambda: P.encode_into(plan, buf),
        "encode_numpy": lambda: numpy_encode_into(plan, buf),
        "decode_cached": lambda: P.decode_header(
            header, capacity=slots, world_size=world, min_epoch=0, after_step=0
        ),
        "decode_uncached": decode_uncached,
        "swap_only": swap_only,
    }
    best = {name: float("inf") for name in variants}
    for _ in range(repeats):  # interleaved: a load change hits every variant alike
        for name, fn in variants.items():
            best[name] = min(best[name], timeit.timeit(fn, number=number) / number)
    us = {name: t * 1e6 for name, t in best.items()}
    us["decode_uncached"] -= us.pop("swap_only")
    return {
        "us_per_call_best_of_repeats": {k: round(v, 3) for k, v in us.items()},
        "encode_numpy_over_struct": us["encode_numpy"] / us["encode_struct"],
        "decode_uncached_over_cached": us["decode_uncached"] / us["decode_cached"],
        "slots": slots,
        "world": world,
        "calls_per_repeat": number,
        "repeats": repeats,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path)
    ap.add_argument("--number", type=int, default=20000)
    a = ap.parse_args(argv)
    text = json.dumps(measure(number=a.number), indent=1)
    print(text)
    if a.output:
        a.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
