"""Bounded chaos soak (`make soak`): random failures for a fixed time, invariants checked throughout.

    .venv/bin/python bench/soak.py [--minutes 5] [--seed N] [--state DIR]

Setup: local control plane (reused or started), the operator from the chart, the CPU example, the checking
client running the whole time. Then, at random moments (`--gap` seconds apart, uniformly), one of:
SIGKILL of a random non-zero member's processes (only when the cluster is at full capacity, so that the
soak exercises recoveries, not only the restart budget), SIGKILL of the operator's process group (the
Deployment's pod restarts it; its state lives in the CR status), a node agent stop and start (the node's pods
die with it: a lost node).

Invariants: the membership epoch never decreases (every status sample); no answer is wrong; no request is
lost (each is answered in the end; retries are allowed); at the end every member is Healthy, or the CR is
Failed with a reason in its Ready condition; after the CR is deleted no pod of it and no process of the
namespace's members is left. Writes bench/results/soak.json. Exit 1 when an invariant broke.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from eep_contract.v1alpha1 import Labels
from eep_demo import scenario
from eep_demo.client import ClientSettings
from eep_demo.cluster import find_pod_processes, kill_pod_processes
from eep_demo.live import LogView
from eep_demo.scenario import StepFailed
from eep_demo.timeline import RequestCounts, count_requests, epoch_regressions
from eep_localcluster.__main__ import tools_bin_dir
from eep_testkit import crs

OUT = Path(__file__).resolve().parent / "results" / "soak.json"
NAME = "soak"


def kill_operator(session: scenario.Session) -> str:
    """SIGKILL the operator container's process group (the pod's containerID is process://<pid>)."""
    for pod in scenario.operator_pods(session.ctx, session.release):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            cid = str(cs.get("containerID") or "")
            if cid.startswith("process://") and cs.get("state", {}).get("running"):
                pid = int(cid.removeprefix("process://"))
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
                    return f"killed operator pod {pod['metadata']['name']} (pgid {pid})"
    return "no running operator process found"


def node_bounce(state: Path, node: str, down_s: float) -> str:
    cli = [sys.executable, "-m", "eep_localcluster", "--state", str(state)]
    subprocess.run([*cli, "stop-node", node], capture_output=True, timeout=120, check=False)
    time.sleep(down_s)
    r = subprocess.run([*cli, "start-node", node], capture_output=True, text=True, timeout=180, check=False)
    return f"node {node} stopped for {down_s:.0f}s, restarted (rc {r.returncode})"


def final_state(cr: dict[str, Any] | None) -> tuple[bool, str]:
    """(acceptable, description): all members Healthy, or phase Failed with a reason. Pure."""
    st = (cr or {}).get("status") or {}
    members = st.get("members") or []
    if members and all(m.get("state") == "Healthy" for m in members) and st.get("phase") == "Running":
        return True, "every member Healthy"
    if st.get("phase") == "Failed":
        ready: dict[str, Any] = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
        reason = f"{ready.get('reason', '')}: {ready.get('message', '')}".strip(": ")
        return bool(ready.get("reason")), f"CR Failed ({reason or 'no reason given'})"
    return False, f"phase {st.get('phase')}, members {[m.get('state') for m in members]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.split("\n")[0])
    p.add_argument("--state", default=".local/cluster")
    p.add_argument("--namespace", default="eep-soak")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--gap", default="20,45", help="seconds between events: min,max")
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--settle", type=float, default=300.0, help="seconds to reach the final state at the end")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    console = Console()
    view = LogView()
    gap_min, gap_max = (float(x) for x in a.gap.split(","))
    state = Path(a.state).resolve()
    events: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        session = scenario.open_session(state, a.namespace, a.namespace, view, tools_bin_dir())
    except StepFailed as exc:
        print(f"SOAK FAILED setting up: {exc}")
        return 1
    ctx = session.ctx
    client = sampler = None
    final = ""
    counts: RequestCounts | None = None
    try:
        scenario.apply_cluster(ctx, crs.from_example(NAME))
        scenario.wait_ready(ctx, NAME, 300)
        client, sampler = scenario.start_load(ctx, NAME, ClientSettings(concurrency=2, pace_s=0.1), 0.5)
        start = time.monotonic()
        deadline = start + 60 * a.minutes
        view.step(f"soak for {a.minutes:g} min, seed {a.seed}")
        while time.monotonic() < deadline:
            wait_s = rng.uniform(gap_min, gap_max)
            scenario.follow(
                ctx, sampler=sampler, client=client, until=lambda: False, timeout_s=wait_s, note="soaking"
            )
            if time.monotonic() >= deadline:
                break
            action = rng.choices(["member", "operator", "node"], weights=[5, 3, 2])[0]
            cr = ctx.kube.get_cr(ctx.namespace, NAME) or {}
            full = sampler.samples[-1].full if sampler.samples else False
            if action == "member" and full:
                member = rng.randrange(1, int(cr["spec"]["nodes"]))
                killed = kill_pod_processes(ctx.namespace, f"{NAME}-{member}")
                what = f"SIGKILL member {member} ({len(killed)} processes)"
            elif action == "member":
                what = "skipped a member kill: not at full capacity"
            elif action == "operator":
                what = kill_operator(session)
            else:
                what = node_bounce(state, "eep-node-0", rng.uniform(5, 20))
            events.append({"t": round(time.monotonic() - start, 1), "action": action, "what": what})
            view.step(what)
        view.step("chaos over: waiting for the final state")

        def settled() -> bool:
            ok, _ = final_state(ctx.kube.get_cr(ctx.namespace, NAME))
            return ok

        scenario.follow(
            ctx, sampler=sampler, client=client, until=settled, timeout_s=a.settle, note="settling"
        )
        acceptable, final = final_state(ctx.kube.get_cr(ctx.namespace, NAME))
        if not acceptable:
            problems.append(f"final state: {final}")
        pods = ctx.kube.pods(ctx.namespace, f"{Labels.CLUSTER}={NAME}")
        per_member: dict[str, int] = {}
        for pod in pods:
            member = pod["metadata"].get("labels", {}).get(Labels.MEMBER, "?")
            per_member[member] = per_member.get(member, 0) + 1
        if any(n > 1 for n in per_member.values()):
            problems.append(f"more than one pod for a member at the end: {per_member}")
        client.stop(drain_s=120)
        sampler.stop()
        counts = count_requests(client.attempts, client.request_ids)
        regressions = epoch_regressions(sampler.snapshot())
        if regressions:
            problems.append(f"epoch decreased: {regressions[:5]}")
        if counts.wrong:
            wrong = [a_.detail for a_ in client.attempts if a_.result.value == "wrong"][:5]
            problems.append(f"{counts.wrong} wrong answers: {wrong}")
        if counts.failed:
            problems.append(f"{counts.failed} requests never answered")
        scenario.delete_cluster(ctx, NAME)
        leaked = {f"{NAME}-{i}": find_pod_processes(ctx.namespace, f"{NAME}-{i}") for i in range(16)}
        leaked = {k: v for k, v in leaked.items() if v}
        if leaked:
            problems.append(f"processes left after deleting the CR: {leaked}")
    except StepFailed as exc:
        problems.append(str(exc)[:4000])
        counts = count_requests(client.attempts, client.request_ids) if client else None
    finally:
        if client is not None:
            client.stop(0)
        if sampler is not None:
            sampler.stop()
        with contextlib.suppress(Exception):
            scenario.delete_cluster(ctx, NAME, timeout_s=60)
        scenario.close_session(session, keep=False)
    doc = {
        "benchmark": "soak",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": a.seed,
        "minutes": a.minutes,
        "events": events,
        "final_state": final,
        "requests": None if counts is None else counts.__dict__,
        "problems": problems,
        "ok": not problems,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    console.print_json(json.dumps(doc))
    print("SOAK OK" if not problems else f"SOAK FAILED: {problems}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
