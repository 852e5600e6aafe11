#!/usr/bin/env python3
"""The step-time ratio over several runs of `gpu_recovery.py` (same code, same kind of machine): the median of
every run's paired per-round ratios (elastic / plain, rank 0) pooled, with a bootstrap 95 % interval.

    .venv/bin/python bench/pooled_step_ratio.py bench/results/gpu_steady_toy.json \\
        bench/results/gpu_recovery.json --output bench/results/gpu_steady_toy_pooled.json

One run's interval is about +-0.7 % wide on H200s, as wide as the effect near the 1.01 target; pooling runs
narrows it without changing the estimator (`eep_testkit.stats.bootstrap_median_ci`, the one gpu_recovery.py
uses).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from eep_testkit.stats import bootstrap_median_ci


def pooled(paths: list[Path], rank: str = "rank0") -> dict[str, Any]:
    ratios: list[float] = []
    runs = []
    for path in paths:
        result = json.loads(path.read_text())
        times = result["steady_state"][rank]["step_times_s"]
        paired = [e / p for e, p in zip(times["elastic"], times["plain"], strict=True)]
        runs.append(
            {
                "file": path.name,
                "started_at": result.get("started_at"),
                "rounds": len(paired),
                "step_time_ratio": statistics.median(paired),
            }
        )
        ratios += paired
    return {
        "rank": rank,
        "runs": runs,
        "rounds": len(ratios),
        "step_time_ratio": statistics.median(ratios),
        "step_time_ratio_ci95": bootstrap_median_ci(ratios),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=Path, help="gpu_recovery.py JSON results")
    ap.add_argument("--output", type=Path, help="where to write the pooled result (JSON)")
    a = ap.parse_args(argv)
    out = pooled(a.results)
    text = json.dumps(out, indent=1)
    print(text)
    if a.output:
        a.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
