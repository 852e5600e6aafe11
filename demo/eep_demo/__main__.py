"""`python -m eep_demo` (`make demo`): the whole loop on the local control plane, then a summary.

Reads the environment here only: `KEEP=1` keeps what it started (cluster, operator, CR, Prometheus stops
anyway), `STATE` the local cluster's state directory (the Makefile's default `.local/cluster`). The last line
is machine-readable: `DEMO OK detect_s=... resume_s=... full_s=... requests=... failed=0 wrong=0`, or
`DEMO FAILED <step>: <what was seen>` with exit code 1. Before it, the paths of the recovery's picture
(`--picture`: .png and .svg, `eep_demo.picture`) and of the recorded timeline it was drawn from (.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from eep_demo import scenario
from eep_demo.client import ClientSettings
from eep_demo.cluster import Kube
from eep_demo.live import LiveView, LogView, View
from eep_demo.picture import Recording, draw_recovery
from eep_demo.scenario import AlertResult, DemoContext, FailureResult, StepFailed
from eep_localcluster.__main__ import tools_bin_dir
from eep_testkit import crs
from eep_testkit.prometheus import Prometheus
from eep_testkit.tools import Tools


def parse_args(argv: Sequence[str], env: dict[str, str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eep_demo", description=__doc__.split("\n")[0])
    p.add_argument(
        "--state", default=env.get("STATE", ".local/cluster"), help="local cluster state directory"
    )
    p.add_argument("--namespace", default="eep-demo")
    p.add_argument("--release", default="eep-demo", help="Helm release name")
    p.add_argument("--name", default="cpu-demo", help="ElasticEPCluster name")
    p.add_argument("--member", type=int, default=None, help="member to kill (default: a random non-zero one)")
    p.add_argument("--warmup", type=float, default=8.0, help="seconds of load before the kill")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--recovery-timeout", type=float, default=240.0)
    p.add_argument(
        "--alert-window",
        default="40s",
        help="look-back window the rules' 5m/10m become, so the alert resolves during the demo; "
        "'none' loads the rules file unchanged (resolving then takes 5 minutes)",
    )
    p.add_argument("--alert-timeout", type=float, default=180.0)
    p.add_argument("--no-prometheus", action="store_true")
    p.add_argument("--keep", action="store_true", default=env.get("KEEP", "") not in ("", "0"))
    p.add_argument("--plain", action="store_true", help="log lines instead of the live table")
    p.add_argument(
        "--picture",
        default=".local/demo/recovery",
        help="where the recovery's timeline goes: PATH.png, PATH.svg and the recorded timeline PATH.json",
    )
    return p.parse_args(list(argv))


def summary_table(failure: FailureResult, alert: AlertResult | None, took_s: float) -> Table:
    m = failure.metrics
    r = m.requests

    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} s"

    t = Table(title="recovery summary", title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("member killed", f"{failure.member} (SIGKILL of {len(failure.killed_pids)} process(es))")
    t.add_row("detected (member Failed in status)", s(m.detect_s))
    t.add_row("serving resumed (first correct answer to a request sent after the kill)", s(m.resume_s))
    t.add_row("full capacity (every member Healthy, every rank active)", s(m.full_s))
    t.add_row(
        "no serving at all",
        f"{m.no_serving_s:.1f} s (longest gap between answers {m.longest_gap_s:.1f} s, "
        f"normal spacing allowance {m.allowance_s:.2f} s)",
    )
    t.add_row(
        "capacity lost", "-" if m.capacity_lost_rank_s is None else f"{m.capacity_lost_rank_s:.1f} rank-s"
    )
    t.add_row("requests sent / answered ok", f"{r.sent} / {r.ok} ({r.retries} unanswered attempts retried)")
    t.add_row("requests failed", str(r.failed))
    t.add_row("wrong answers", str(r.wrong))
    t.add_row(
        "epoch monotonic", "yes" if not failure.epoch_regressions else f"NO: {failure.epoch_regressions}"
    )
    if alert is not None:
        window = f" (rule windows shortened to {alert.window})" if alert.window else ""
        t.add_row(
            f"alert {alert.alert}",
            f"fired {s(alert.fired_after_s)} and resolved {s(alert.resolved_after_s)}"
            f" after the kill{window}; elasticep_rank_failures_total = {alert.failures_counter:g}",
        )
    t.add_row("demo took", f"{took_s:.0f} s")
    return t


def ok_line(failure: FailureResult) -> str:
    m = failure.metrics

    def f(v: float | None) -> str:
        return "nan" if v is None else f"{v:.2f}"

    return (
        f"DEMO OK detect_s={f(m.detect_s)} resume_s={f(m.resume_s)} full_s={f(m.full_s)} "
        f"requests={m.requests.sent} failed={m.requests.failed} wrong={m.requests.wrong}"
    )


def write_picture(failure: FailureResult, name: str, out: Path) -> list[Path]:
    """The recorded timeline as `out`.json and its picture as `out`.png/.svg; returns the paths (picture
    first). Raises OSError when they cannot be written."""
    m = failure.metrics
    full = "not reached" if m.full_s is None else f"full capacity after {m.full_s:.1f} s"
    rec = Recording(
        title=f"{name}: member {failure.member} SIGKILLed under load ({full})",
        member=failure.member,
        kill_t=failure.kill_t,
        samples=tuple(failure.samples),
        attempts=failure.attempts,
        end_t=failure.end_t,
    )
    paths = draw_recovery(rec, out)
    data = out.with_suffix(".json")
    data.write_text(json.dumps(rec.to_json()) + "\n")
    return [*paths, data]


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv, dict(os.environ))
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log file: no wrapping of the summary at 80 columns
    view: View = LogView() if a.plain or not console.is_terminal else LiveView(console)
    state = Path(a.state).resolve()
    started = time.monotonic()
    step = "bring up the local control plane"
    cluster_started = ns_created = installed = applied = False
    prom: Prometheus | None = None
    workdir = Path(tempfile.mkdtemp(prefix="eep-demo-"))
    ctx: DemoContext | None = None
    failure: FailureResult | None = None
    alert: AlertResult | None = None
    pictures: list[Path] = []
    error = ""
    try:
        view.step(step)
        cluster_started = scenario.ensure_cluster(state, view.step)
        kube = Kube(state / "kubeconfig")
        ctx = DemoContext(kube, Tools(tools_bin_dir(), state / "kubeconfig"), a.namespace, view, state)
        ns_created = kube.ensure_namespace(a.namespace)

        step = "helm install the operator chart"
        view.step(f"{step} (release {a.release} in namespace {a.namespace})")
        installed = True
        scenario.install_operator(ctx, a.release)

        if not a.no_prometheus:
            step = "start Prometheus"
            window = None if a.alert_window == "none" else a.alert_window
            view.step(f"{step}: scraping the operator, rules from deploy/prometheus/elasticep-rules.yaml")
            prom = scenario.start_prometheus(ctx, a.release, workdir / "prometheus", window)

        step = "apply the CPU example"
        view.step(f"{step}: ElasticEPCluster {a.name} (4 members x 1 rank, eep-worker on mooncake-cpu)")
        applied = True
        scenario.apply_cluster(ctx, crs.from_example(a.name))
        step = "wait until Ready"
        scenario.wait_ready(ctx, a.name, a.ready_timeout)

        step = "kill a member and recover"
        watchers: list[scenario.AlertWatcher] = []

        def watch_alert(kill_t: float) -> None:
            if prom is not None:
                watchers.append(scenario.AlertWatcher(prom, a.namespace, a.name, kill_t))
                watchers[0].start()

        failure = scenario.run_failure(
            ctx,
            a.name,
            member=a.member,
            warmup_s=a.warmup,
            recovery_timeout_s=a.recovery_timeout,
            client_settings=ClientSettings(concurrency=2, pace_s=0.05),
            on_kill=watch_alert,
        )
        if watchers:
            step = "alert fires and resolves"
            view.step(f"{step}: ElasticEPRankFailed for {a.namespace}/{a.name}, via Prometheus' API")
            alert = scenario.alert_cycle(ctx, watchers[0], a.name, timeout_s=a.alert_timeout)
        view.close()
        console.print(summary_table(failure, alert, time.monotonic() - started))
        try:
            pictures = write_picture(failure, a.name, Path(a.picture).resolve())
        except (OSError, ValueError) as exc:
            console.print(f"picture not written: {exc}", markup=False)
        step = "check every answer"
        if failure.metrics.requests.wrong:
            error = f"wrong answers: {failure.wrong_details}"
        elif failure.metrics.requests.failed:
            error = f"{failure.metrics.requests.failed} request(s) never answered"
        elif failure.epoch_regressions:
            error = f"epoch went backwards: {failure.epoch_regressions}"
        elif alert is not None and not alert.ok():
            error = f"alert did not fire and resolve: {alert}"
            step = "alert fires and resolves"
    except StepFailed as exc:
        error = str(exc)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        view.close()
        if prom is not None:
            prom.stop()
        if ctx is not None and not a.keep:
            console.print("==> tearing down what the demo started (KEEP=1 keeps it)")
            if applied:
                with contextlib.suppress(Exception):
                    scenario.delete_cluster(ctx, a.name)
            if installed:
                scenario.uninstall_operator(ctx, a.release)
            if ns_created:
                with contextlib.suppress(Exception):
                    ctx.tools.run("kubectl", ["delete", "namespace", a.namespace, "--wait=false"], 60)
        if ctx is not None:
            ctx.kube.close()
        if cluster_started and not a.keep:
            subprocess.run(
                [sys.executable, "-m", "eep_localcluster", "--state", str(state), "down"],
                capture_output=True,
                timeout=300,
                check=False,
            )
        shutil.rmtree(workdir, ignore_errors=True)
    if pictures:
        console.print(
            f"picture of the recovery: {pictures[0]} (and {pictures[1].name}, from {pictures[2].name})",
            markup=False,
        )
    if error or failure is None:
        print(f"DEMO FAILED {step}: {error}", flush=True)
        return 1
    if a.keep:
        console.print(
            f"kept: `eep-localcluster --state {state} env`, then "
            f"`eep-operator status {a.name} -n {a.namespace} --watch`",
            markup=False,
        )
    print(ok_line(failure), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
