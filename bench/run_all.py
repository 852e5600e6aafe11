"""`make bench`: run the CPU benchmarks that exist, one after the other, and collect their JSON.

    .venv/bin/python bench/run_all.py [--only NAME,...] [-- extra args are not passed]

Each benchmark is a script under bench/ that writes bench/results/<name>.json: cpu_recovery (worker recovery
on mooncake-cpu: cpu_recovery.py, or gpu_recovery.py --dry-run), kill_probe.py (a member killed at a random
moment, 10 times: how many runs left the survivors hung), operator_scale.py (operator at scale), mttr.py
(per-member vs group restart).
A script that is not there yet is reported as missing, not faked. Writes bench/results/all.json with each
script's exit code, duration and result document, and exits non-zero if any script failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
# name -> the JSON it writes and the command lines that produce it (the first whose script exists runs).
# The worker's CPU recovery twin is bench/cpu_recovery.py if it exists, else the GPU script's CPU mode.
BENCHMARKS: tuple[tuple[str, str, tuple[tuple[str, ...], ...]], ...] = (
    (
        "cpu_recovery",
        "cpu_recovery.json",
        (
            ("cpu_recovery.py",),
            ("gpu_recovery.py", "--dry-run", "--output", str(RESULTS / "cpu_recovery.json")),
        ),
    ),
    # Issue #14: a kill at a random moment, 10 times; how many left the survivors hung (target: none).
    ("kill_probe", "kill_probe.json", (("kill_probe.py", "--runs", "10"),)),
    ("operator_scale", "operator_scale.json", (("operator_scale.py",),)),
    ("mttr", "mttr.json", (("mttr.py", "--plain"),)),
)


def run_one(
    name: str,
    out_name: str,
    commands: tuple[tuple[str, ...], ...],
    timeout_s: float,
    extra: dict[str, list[str]],
) -> dict[str, Any]:
    command = next((c for c in commands if (BENCH / c[0]).exists()), None)
    if command is None:
        return {"status": "missing", "scripts": [c[0] for c in commands]}
    script = BENCH / command[0]
    out = RESULTS / out_name
    before = out.stat().st_mtime if out.exists() else None
    started = time.monotonic()
    print(f"==> {' '.join(command)}", flush=True)
    try:
        argv = [sys.executable, str(script), *command[1:], *(extra.get(name) or [])]
        rc = subprocess.run(argv, timeout=timeout_s, check=False).returncode
    except subprocess.TimeoutExpired:
        rc = None
    took = round(time.monotonic() - started, 1)
    fresh = out.exists() and out.stat().st_mtime != before
    result: Any = json.loads(out.read_text()) if fresh else None
    status = "timeout" if rc is None else "ok" if rc == 0 and fresh else "failed"
    return {
        "status": status,
        "command": list(command),
        "exit_code": rc,
        "took_s": took,
        "result_file": out_name if fresh else None,
        "result": result,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run_all.py", description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="comma-separated names (default: all)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per benchmark")
    p.add_argument("--state", default=".local/cluster", help="local cluster state directory (mttr.py)")
    a = p.parse_args(argv)
    only = {n for n in a.only.split(",") if n}
    RESULTS.mkdir(parents=True, exist_ok=True)
    collected = {}
    for name, out_name, commands in BENCHMARKS:
        if only and name not in only:
            continue
        collected[name] = run_one(name, out_name, commands, a.timeout, {"mttr": ["--state", a.state]})
        print(f"    {name}: {collected[name]['status']}", flush=True)
    doc = {"time": datetime.now(UTC).isoformat(timespec="seconds"), "benchmarks": collected}
    (RESULTS / "all.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {RESULTS / 'all.json'}")
    return 0 if all(b["status"] in ("ok", "missing") for b in collected.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
