"""MTTR benchmark: the same member failure under `recovery.mode: PerMember` and `GroupRestart`.

    .venv/bin/python bench/mttr.py [--delays 0,30] [--modes PerMember,GroupRestart] [--member 2]
    .venv/bin/python bench/mttr.py --modes PerMember,Dedicated --leader     # issue #19's row

On the local control plane (started here unless it runs; state `--state`), with the operator installed from
the chart, for each simulated weight-load time (every member start sleeps that long before exec'ing the
worker; see `eep_testkit.crs.from_example`) and each mode: apply the CPU example (4 members x 1 rank),
wait until Ready, run the checking client, SIGKILL member `--member`'s processes, follow until full capacity,
delete the cluster. Per run: seconds with no serving at all, seconds until full capacity, capacity lost
(rank-seconds), requests failed / wrong (definitions: `eep_demo.timeline`), and the recorded timeline
(`timeline`: status samples and client attempts, seconds since the kill; `eep_demo.picture.Recording`).
Writes bench/results/mttr.json, its picture (bench/results/mttr.png and .svg: PerMember against
GroupRestart side by side, `eep_demo.picture.draw_mttr`) and prints a table. Whatever it measures is what it
reports. `--draw` redraws the picture from an existing JSON without running anything.

Mode `Dedicated` is `PerMember` with `elasticEP.coordinator: Dedicated` (rank 0 alone in member 0's pod,
`nodes` serving members behind it). `--leader` kills the member whose loss today's layout cannot recover in
place instead of `--member`: member 0 (the leader, the coordinator: a whole-group restart) in the other
modes; with `Dedicated`, member 1 (rank 1, whose output answers every step: the nearest thing to a leader
among the serving members).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from eep_demo import scenario
from eep_demo.client import ClientSettings
from eep_demo.live import LiveView, LogView, View
from eep_demo.picture import Recording, draw_mttr
from eep_demo.scenario import StepFailed
from eep_localcluster.__main__ import tools_bin_dir
from eep_testkit import crs

OUT = Path(__file__).resolve().parent / "results" / "mttr.json"


def one_run(
    session: scenario.Session, mode: str, delay_s: float, member: int | None, nodes: int
) -> dict[str, Any]:
    """One mode at one weight-load time; ``member`` None: the leader's member (module doc, `--leader`)."""
    ctx = session.ctx
    name = f"mttr-{mode.lower()}-{int(delay_s)}"
    ctx.view.step(f"{mode}, weight-load time {delay_s:g} s: apply {name}")
    dedicated = mode == "Dedicated"
    cr = crs.from_example(name, mode="PerMember" if dedicated else mode, load_delay_s=delay_s, nodes=nodes)
    if dedicated:
        cr["spec"]["elasticEP"]["coordinator"] = "Dedicated"
        cr["spec"]["elasticEP"]["coordinatorRequests"] = {"cpu": "100m", "memory": "256Mi"}
    if member is None:
        member = 1 if dedicated else 0
    scenario.apply_cluster(ctx, cr)
    try:
        scenario.wait_ready(ctx, name, 300 + 2 * delay_s)
        result = scenario.run_failure(
            ctx,
            name,
            member=member,
            warmup_s=5,
            recovery_timeout_s=300 + 3 * delay_s,
            settle_s=3,
            drain_s=60 + delay_s,
            client_settings=ClientSettings(concurrency=2, pace_s=0.05),
            allow_zero=True,
        )
    finally:
        scenario.delete_cluster(ctx, name)
    m = result.metrics
    world = result.samples[-1].world_size if result.samples else 0
    full = m.full_s or 0.0
    return {
        "mode": mode,
        "load_delay_s": delay_s,
        "member_killed": result.member,
        "world_size": world,
        "detect_s": m.detect_s,
        "resume_s": m.resume_s,
        "full_s": m.full_s,
        "no_serving_s": m.no_serving_s,
        "longest_gap_s": m.longest_gap_s,
        "allowance_s": m.allowance_s,
        "capacity_lost_rank_s": m.capacity_lost_rank_s,
        "capacity_lost_fraction_of_recovery": (
            None
            if not (m.capacity_lost_rank_s and world and full)
            else m.capacity_lost_rank_s / (world * full)
        ),
        "requests": dataclass_dict(m.requests),
        "epoch_regressions": result.epoch_regressions,
        # A PerMember run whose join failed falls back to a whole-group restart; say so next to its numbers.
        "group_restart_seen": any(s.phase == "Restarting" for s in result.samples),
        "phases_seen": sorted({s.phase for s in result.samples}),
        "ok": result.ok(),
        "timeline": Recording(
            title=f"{mode}, weight-load time {delay_s:g} s",
            member=result.member,
            kill_t=result.kill_t,
            samples=tuple(result.samples),
            attempts=result.attempts,
            end_t=result.end_t,
        ).to_json(),
    }


def dataclass_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def table(runs: list[dict[str, Any]]) -> Table:
    t = Table(title="MTTR: one member SIGKILLed (the JSON's member_killed)", title_justify="left")
    for col in (
        "mode",
        "load s",
        "detect s",
        "resume s",
        "no serving s",
        "full capacity s",
        "capacity lost rank-s",
        "lost / (world x recovery)",
        "requests",
        "failed",
        "wrong",
        "group restart seen",
    ):
        t.add_column(col, justify="left" if col == "mode" else "right")

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)

    for r in runs:
        if "error" in r:
            t.add_row(r["mode"], f(r["load_delay_s"]), *(["-"] * 9), r["error"][:60])
            continue
        frac = r["capacity_lost_fraction_of_recovery"]
        t.add_row(
            r["mode"],
            f(r["load_delay_s"]),
            f(r["detect_s"]),
            f(r["resume_s"]),
            f(r["no_serving_s"]),
            f(r["full_s"]),
            f(r["capacity_lost_rank_s"]),
            "-" if frac is None else f"{frac:.2f}",
            str(r["requests"]["sent"]),
            str(r["requests"]["failed"]),
            str(r["requests"]["wrong"]),
            {True: "yes", False: "no"}.get(bool(r["group_restart_seen"]), "?")
            if "group_restart_seen" in r
            else "?",
        )
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/mttr.py", description=__doc__.split("\n")[0])
    p.add_argument("--state", default=".local/cluster")
    p.add_argument("--namespace", default="eep-mttr")
    p.add_argument("--delays", default="0,30", help="simulated weight-load seconds per member start")
    p.add_argument("--modes", default="PerMember,GroupRestart")
    p.add_argument("--member", type=int, default=2)
    p.add_argument(
        "--leader",
        action="store_true",
        help="kill the leader's member instead of --member: member 0, or member 1 with Dedicated",
    )
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--keep", action="store_true")
    p.add_argument("--plain", action="store_true")
    p.add_argument("--draw", action="store_true", help="only redraw the picture of --out's JSON")
    a = p.parse_args(argv)
    if a.draw:
        paths = draw_mttr(json.loads(Path(a.out).read_text()), Path(a.out))
        print("wrote " + " ".join(str(x) for x in paths))
        return 0
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    view: View = LogView() if a.plain or not console.is_terminal else LiveView(console)
    delays = [float(d) for d in a.delays.split(",") if d]
    modes = [m for m in a.modes.split(",") if m]
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    try:
        session = scenario.open_session(
            Path(a.state).resolve(), a.namespace, a.namespace, view, tools_bin_dir()
        )
    except StepFailed as exc:
        print(f"MTTR FAILED setting up: {exc}")
        return 1
    try:
        for delay in delays:
            for mode in modes:
                try:
                    runs.append(one_run(session, mode, delay, None if a.leader else a.member, a.nodes))
                except StepFailed as exc:
                    runs.append({"mode": mode, "load_delay_s": delay, "error": str(exc)[:4000], "ok": False})
    finally:
        view.close()
        scenario.close_session(session, a.keep)
    doc = {
        "benchmark": "mttr",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "cluster": "local control plane + process node; CPU example (examples/cpu-demo.yaml), mooncake-cpu",
        "settings": {
            "delays_s": delays,
            "modes": modes,
            "member_killed": "the leader's" if a.leader else a.member,
            "nodes": a.nodes,
        },
        "definitions": "eep_demo.timeline module docstring",
        "took_s": round(time.monotonic() - started, 1),
        "runs": runs,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    console.print(table(runs))
    console.print(f"wrote {out}")
    console.print("wrote " + " ".join(str(x) for x in draw_mttr(doc, out)))
    return 0 if all(r.get("ok") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
