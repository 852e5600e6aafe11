#!/usr/bin/env python3
"""Kill a member at a random moment, many times, on mooncake-cpu; count how often the survivors hung.
Writes bench/results/kill_probe.json.

    .venv/bin/python bench/kill_probe.py [--runs 10] [--layers 16] [--collective-timeout-s 0.25]

Each run starts fresh pods (`eep_testkit.pods`, 3 members of one rank), streams checked requests to member 0,
SIGKILLs member 2 after a random delay (so the kill lands anywhere in the step: the plan broadcast, any
layer's combine, the leader's idle wait) and waits for the survivors' answers. The hazard this probes
(docs/known-issues.md, "survivors hung after a mid-stream kill"): when Mooncake's new view lands before every
survivor parked at the step fence, the survivors wait on different buffer slots forever; the step watchdog
then ends them with exit code 6. The configured window is short (`--reconcile-window-s`, default 1 s) so the
worker's own sizing (`eep_contract.pause`) is what keeps the view after the fence.

A run is `ok` (answers from the survivors, every answer right), `hung` (no answer from the survivors within
the implied pause plus `--hang-after-s`, or a survivor exited) or `error` (a wrong or failed request). Per
run: detection (kill -> the leader's first untrusted step), fence (kill -> the last survivor passed its
fence) and resume (kill -> the first answer from the survivors), against the bounds the settings imply.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from eep_contract.env import TuningEnv
from eep_contract.pause import recovery_pause
from eep_testkit.client import CheckingClient
from eep_testkit.logs import logged_at as log_lines_at
from eep_testkit.pods import LocalPods, Pod
from eep_testkit.stream import Stream
from eep_testkit.wait import WaitTimeout

REPO = Path(__file__).resolve().parent.parent


def logged_at(pod: Pod, text: str, after: float) -> list[float]:
    """Wall times of the pod's log lines that contain `text`, at or after `after`."""
    return log_lines_at(pod.logs(), text, after)


def one_run(a: argparse.Namespace, workdir: Path, rng: random.Random, hang_after_s: float) -> dict[str, Any]:
    pods = LocalPods(
        workdir,
        3,
        1,
        collective_timeout_s=a.collective_timeout_s,
        reconcile_window_s=a.reconcile_window_s,
        join_timeout_s=30.0,
        tuning=TuningEnv(layers=a.layers),
    )
    stream: Stream | None = None
    row: dict[str, Any] = {"outcome": "error"}
    try:
        pods.start_all()
        stream = Stream(CheckingClient(pods.pods[0]), timeout_s=hang_after_s + 30)
        stream.start()
        stream.first_after(0, [0, 1, 2], 60)
        delay = rng.uniform(0.0, a.max_delay_s)
        time.sleep(delay)
        t_kill = time.time()
        pods.kill(2)
        pods.write_membership([0, 1], [])
        row["kill_delay_s"] = round(delay, 3)
        try:
            t_resume = stream.first_after(t_kill, [0, 1], hang_after_s)
        except WaitTimeout:
            row["outcome"] = "hung"
            row["exit_codes"] = [pods.pods[m].exited() for m in (0, 1)]
            return row
        stream.first_after(t_resume + 0.2, [0, 1], 30)
        stream.stop(30)
        exits = [pods.pods[m].exited() for m in (0, 1)]
        fenced = [logged_at(pods.pods[m], "fence passed after", t_kill) for m in (0, 1)]
        untrusted = logged_at(pods.pods[0], "not trusted", t_kill)
        row.update(
            resume_s=round(t_resume - t_kill, 3),
            detection_s=round(untrusted[0] - t_kill, 3) if untrusted else None,
            fence_s=round(max(f[0] for f in fenced) - t_kill, 3) if all(fenced) else None,
            errors=stream.errors[:3],
            exit_codes=exits,
        )
        row["outcome"] = "hung" if any(e is not None for e in exits) else "error" if stream.errors else "ok"
        return row
    finally:
        if stream is not None:
            stream.stop(30)
        pods.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--collective-timeout-s", type=float, default=0.25)
    p.add_argument(
        "--reconcile-window-s", type=float, default=1.0, help="configured; the worker raises it as needed"
    )
    p.add_argument("--max-delay-s", type=float, default=2.0, help="the kill comes 0..this after serving")
    p.add_argument(
        "--hang-after-s",
        type=float,
        default=45.0,
        help="no answer from the survivors this long past the implied pause: hung (the watchdog ends a hung "
        "survivor after 30 s)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=str(REPO / "bench" / "results" / "kill_probe.json"))
    a = p.parse_args(argv)
    implied = recovery_pause(
        layers=a.layers, collective_timeout_s=a.collective_timeout_s, reconcile_window_s=a.reconcile_window_s
    )
    hang_after_s = implied.pause_s + a.hang_after_s
    out: dict[str, Any] = {
        "ok": False,
        "error": None,
        "backend": "mooncake-cpu",
        "settings": {k: v for k, v in vars(a).items() if k != "output"},
        "implied": dataclasses.asdict(implied),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    rows: list[dict[str, Any]] = []
    out["rounds"] = rows
    rng = random.Random(a.seed)
    tmp = Path(tempfile.mkdtemp(prefix="eep-kill-probe-"))
    t0 = time.time()
    try:
        for i in range(a.runs):
            workdir = tmp / f"run-{i}"
            workdir.mkdir()
            try:
                row = one_run(a, workdir, rng, hang_after_s)
            except Exception as e:  # a run that could not even start counts as an error, not a hang
                row = {"outcome": "error", "error": f"{type(e).__name__}: {e}"[:1000]}
            row["run"] = i
            if row["outcome"] == "ok":
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                row["logs"] = str(workdir)
            rows.append(row)
            print(json.dumps(row), flush=True)
    except BaseException as e:
        out["error"] = f"{type(e).__name__}: {e}"[:2000]
        out["traceback"] = traceback.format_exc()[-3000:]
    outcomes = [r["outcome"] for r in rows]
    out.update(
        runs=len(rows),
        ok_runs=outcomes.count("ok"),
        hung=outcomes.count("hung"),
        errors=outcomes.count("error"),
        wall_s=round(time.time() - t0, 1),
    )
    out["ok"] = out["error"] is None and out["ok_runs"] == a.runs
    if out["ok"]:
        shutil.rmtree(tmp, ignore_errors=True)
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    Path(a.output).write_text(json.dumps(out, indent=2) + "\n")
    summary = {k: out[k] for k in ("ok", "runs", "ok_runs", "hung", "errors", "wall_s")}
    print(json.dumps({**summary, "implied_pause_s": round(implied.pause_s, 3)}))
    print(f"wrote {a.output}")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
