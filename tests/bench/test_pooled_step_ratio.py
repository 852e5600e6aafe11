"""bench/pooled_step_ratio.py: pools the paired per-round ratios of several GPU runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import pooled_step_ratio  # noqa: E402


def _run(path: Path, plain: list[float], elastic: list[float]) -> Path:
    steady = {"rank0": {"step_times_s": {"plain": plain, "elastic": elastic}}}
    path.write_text(json.dumps({"started_at": "t", "steady_state": steady}))
    return path


def test_pools_every_runs_paired_ratios(tmp_path: Path) -> None:
    # Run a alone: median 1.0; run b alone: median 1.2; pooled (1.0, 1.0, 1.0, 1.2, 1.2): 1.0. A pool that
    # averaged the runs' medians would say 1.1.
    a = _run(tmp_path / "a.json", [1.0, 2.0, 4.0], [1.0, 2.0, 4.0])
    b = _run(tmp_path / "b.json", [1.0, 1.0], [1.2, 1.2])
    out = pooled_step_ratio.pooled([a, b])
    assert out["rounds"] == 5
    assert [r["step_time_ratio"] for r in out["runs"]] == [1.0, 1.2]
    assert out["step_time_ratio"] == 1.0
    low, high = out["step_time_ratio_ci95"]
    assert 1.0 <= low <= high <= 1.2


def test_writes_what_it_prints(tmp_path: Path) -> None:
    a = _run(tmp_path / "a.json", [1.0], [1.1])
    pooled_step_ratio.main([str(a), "--output", str(tmp_path / "p.json")])
    assert json.loads((tmp_path / "p.json").read_text())["step_time_ratio"] == 1.1
