"""The demo's steps, shared by `python -m eep_demo`, tests/e2e/test_demo.py and bench/mttr.py, bench/soak.py.

    ensure_cluster -> install_operator (helm) -> apply_cluster (the CPU example) -> wait_ready
    -> run_failure (client + status sampler running, SIGKILL one non-zero member, follow until full capacity)
    -> alert_cycle (a real Prometheus sees the rank-failure alert fire and resolve) -> teardown

Each step raises `StepFailed` with what it saw when it does not reach its goal in time. I/O goes through
`eep_demo.cluster` and the test kit (`eep_testkit`: the checking client's reference, Prometheus, membership
readers, pumps); the metrics are `eep_demo.timeline`'s pure functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from eep_contract.v1alpha1 import Labels
from eep_demo.client import ClientSettings, LoadClient
from eep_demo.cluster import Kube, PodEndpoint, StatusSampler, find_pod_processes, kill_pod_processes
from eep_demo.live import View
from eep_demo.timeline import Attempt, RecoveryMetrics, StatusSample, epoch_regressions, recovery_metrics
from eep_localcluster.progress import EXPECTED, Expected, Reporter, run_step
from eep_testkit.http_client import HTTPError
from eep_testkit.membership import at_full_capacity
from eep_testkit.prometheus import Prometheus
from eep_testkit.pump import Pump
from eep_testkit.reference import ReferenceChecker, fetch_model_config
from eep_testkit.tools import Tools

__all__ = [
    "REPO",
    "AlertResult",
    "AlertWatcher",
    "DemoContext",
    "FailureResult",
    "Session",
    "StepFailed",
    "alert_cycle",
    "apply_cluster",
    "close_session",
    "delete_cluster",
    "ensure_cluster",
    "install_operator",
    "open_session",
    "operator_metrics_target",
    "run_failure",
    "uninstall_operator",
    "wait_ready",
]

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "elasticep-rules.yaml"


class StepFailed(RuntimeError):
    """A step did not reach its goal; the message says what was seen."""


@dataclasses.dataclass
class DemoContext:
    kube: Kube
    tools: Tools
    namespace: str
    view: View
    state: Path


# ------------------------------------------------------------------ cluster and operator


def ensure_cluster(state: Path, say: Callable[[str], None]) -> bool:
    """Start the local control plane and one process node unless they run; True when started here."""
    cli = [sys.executable, "-m", "eep_localcluster", "--state", str(state)]
    st = subprocess.run([*cli, "status"], capture_output=True, text=True, timeout=60, check=False)
    if st.returncode == 0 and "agent eep-node-0" in st.stdout and "stopped" not in st.stdout:
        say(f"reusing the local control plane in {state}")
        return False
    say(f"starting the local control plane in {state}")
    tty = sys.stdout.isatty()
    reporter = Reporter(sys.stdout, tty=tty, width=shutil.get_terminal_size().columns if tty else None)
    step = "demo: start the local control plane"
    rc, out = run_step([*cli, "up"], reporter, step, expected=EXPECTED[step], echo=False, timeout_s=300)
    if rc != 0:
        raise StepFailed(f"eep-localcluster up failed:\n{out[-6000:]}")
    return True


@contextlib.contextmanager
def ticking(view: View, note: str, bound_s: float, every_s: float = 1.0) -> Iterator[None]:
    """While the body blocks (a subprocess that waits), redraw the view's progress line every `every_s`
    seconds from a thread, with the elapsed time against `bound_s`."""
    done = threading.Event()

    def tick() -> None:
        while not done.wait(every_s):
            with contextlib.suppress(Exception):
                view.update(None, None, note, bound_s=bound_s)

    thread = threading.Thread(target=tick, name="view-ticker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(every_s + 5)


def install_operator(ctx: DemoContext, release: str, extra_sets: tuple[str, ...] = ()) -> None:
    """`helm upgrade --install` the chart into the namespace; its Deployment runs `eep-operator run` as a
    process on the process node. Waits for the Deployment to be available."""
    try:
        with ticking(ctx.view, "helm: waiting until the operator is available", 180):
            ctx.tools.install_chart(
                release, ctx.namespace, "watch.mode=namespaces", *extra_sets, wait_s=180, upgrade=True
            )
    except RuntimeError as exc:
        logs = operator_logs(ctx, release)
        raise StepFailed(f"{exc}\noperator logs:\n{logs}") from exc


def operator_pods(ctx: DemoContext, release: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator"
    return ctx.kube.pods(ctx.namespace, selector)


def operator_logs(ctx: DemoContext, release: str, lines: int = 40) -> str:
    out = []
    for pod in operator_pods(ctx, release):
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            out.append(
                ctx.tools.run(
                    "kubectl", ["logs", "-n", ctx.namespace, pod["metadata"]["name"], f"--tail={lines}"], 30
                )
            )
    return "\n".join(out)


def operator_metrics_target(ctx: DemoContext, release: str, port: int = 9090) -> str:
    for pod in operator_pods(ctx, release):
        ip = (pod.get("status") or {}).get("podIP")
        if ip and (pod.get("status") or {}).get("phase") == "Running":
            return f"{ip}:{port}"
    raise StepFailed(f"no running operator pod of release {release} in {ctx.namespace}")


def uninstall_operator(ctx: DemoContext, release: str) -> None:
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        ctx.tools.run("helm", ["uninstall", release, "-n", ctx.namespace, "--wait", "--timeout=120s"], 150)


# ------------------------------------------------------------------ the ElasticEPCluster


def apply_cluster(ctx: DemoContext, cr: dict[str, Any]) -> None:
    ctx.tools.apply(ctx.namespace, cr)


def describe(ctx: DemoContext, name: str) -> str:
    parts = []
    for args in (
        ["get", "eep,pods", "-n", ctx.namespace, "-o", "wide"],
        ["get", "events", "-n", ctx.namespace],
    ):
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            parts.append(ctx.tools.run("kubectl", args, 30)[-4000:])
    return "\n".join(parts)


def wait_ready(
    ctx: DemoContext,
    name: str,
    timeout_s: float,
    note: str = "waiting until Ready",
    expected: Expected | None = EXPECTED["demo: wait until Ready"],
) -> None:
    """Until phase Running with every rank active and member 0's pod Running. `expected`: how long the
    demo's cluster took (shown beside the elapsed time); None for another cluster."""
    deadline = time.monotonic() + timeout_s
    cr: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            cr = ctx.kube.get_cr(ctx.namespace, name)
        ctx.view.update(cr, None, note, bound_s=timeout_s, expected=expected)
        with contextlib.suppress(ValueError):
            if at_full_capacity(cr):
                return
        time.sleep(0.5)
    raise StepFailed(f"{name} not Ready after {timeout_s:.0f}s\n{describe(ctx, name)}")


def delete_cluster(ctx: DemoContext, name: str, timeout_s: float = 120) -> None:
    """Delete the CR and wait until its pods are gone (the garbage collector follows the ownerReferences)."""
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        ctx.tools.run(
            "kubectl", ["delete", "eep", name, "-n", ctx.namespace, "--ignore-not-found", "--wait"], 120
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not ctx.kube.pods(ctx.namespace, f"{Labels.CLUSTER}={name}"):
            return
        time.sleep(0.5)
    raise StepFailed(f"pods of {name} still there {timeout_s:.0f}s after deleting it\n{describe(ctx, name)}")


# ------------------------------------------------------------------ the failure


@dataclasses.dataclass(frozen=True)
class FailureResult:
    member: int
    killed_pids: dict[int, int]
    metrics: RecoveryMetrics
    samples: list[StatusSample]
    epoch_regressions: list[tuple[float, int, int]]
    wrong_details: list[str]
    kill_t: float
    attempts: tuple[Attempt, ...] = ()
    """Every client attempt (the recorded timeline `eep_demo.picture` draws)."""
    end_t: float | None = None
    """When the client stopped sending (monotonic seconds, the clock of `kill_t`)."""

    def ok(self) -> bool:
        r = self.metrics.requests
        return (
            self.metrics.full_s is not None
            and r.failed == 0
            and r.wrong == 0
            and not self.epoch_regressions
            and r.ok > 0
        )


def start_load(
    ctx: DemoContext, name: str, client_settings: ClientSettings, sample_interval_s: float
) -> tuple[LoadClient, StatusSampler]:
    """Status sampler and client, started; the client's reference comes from member 0's GET /v1/model."""
    cr = ctx.kube.get_cr(ctx.namespace, name)
    if cr is None:
        raise StepFailed(f"{name} does not exist")
    port = int(((cr.get("spec") or {}).get("engine") or {}).get("port", 30000))
    endpoint = PodEndpoint(ctx.kube, ctx.namespace, f"{name}-0", port)
    url = endpoint.url()
    if url is None:
        raise StepFailed(f"member 0 of {name} has no running pod with an IP\n{describe(ctx, name)}")
    try:
        config = fetch_model_config(url)
    except (OSError, ValueError) as exc:
        raise StepFailed(f"cannot read the served model's config from {url}/v1/model: {exc}") from exc
    checker = ReferenceChecker(config)
    sampler = StatusSampler(ctx.kube, ctx.namespace, name, sample_interval_s)
    sampler.start()
    client = LoadClient(endpoint, checker, client_settings)
    client.start()
    return client, sampler


def pick_member(members: int, member: int | None, rng: random.Random, *, allow_zero: bool = False) -> int:
    """``member``, or one of members 1.. at random; raises StepFailed for one out of range, and for member 0
    unless ``allow_zero`` (its loss is a whole-group restart where it serves: the MTTR benchmark measures
    that on purpose)."""
    if member is not None:
        if not (0 if allow_zero else 1) <= member < members:
            raise StepFailed(f"member {member} is not a non-zero member of {members}")
        return member
    return rng.randrange(1, members)


def follow(
    ctx: DemoContext,
    *,
    sampler: StatusSampler,
    client: LoadClient | None,
    until: Callable[[], bool],
    timeout_s: float,
    note: str,
    expected: Expected | None = None,
) -> bool:
    """Redraw the view every 0.25 s until `until()` or the timeout; True when reached."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counters = client.snapshot() if client else None
        ctx.view.update(sampler.latest, counters, note, bound_s=timeout_s, expected=expected)
        if until():
            return True
        time.sleep(0.25)
    return False


def run_failure(
    ctx: DemoContext,
    name: str,
    *,
    member: int | None = None,
    warmup_s: float = 5.0,
    recovery_timeout_s: float = 240.0,
    settle_s: float = 5.0,
    drain_s: float = 60.0,
    client_settings: ClientSettings | None = None,
    sample_interval_s: float = 0.2,
    seed: int | None = None,
    on_kill: Callable[[float], None] | None = None,
    allow_zero: bool = False,
) -> FailureResult:
    """Load on, SIGKILL the pod processes of one non-zero member (member 0 too with ``allow_zero``), follow
    until full capacity, settle, stop."""
    cr = ctx.kube.get_cr(ctx.namespace, name) or {}
    spec = cr.get("spec") or {}
    # Member pods: `nodes`, and member 0 alone in front of them with a dedicated coordinator.
    dedicated = (spec.get("elasticEP") or {}).get("coordinator") == "Dedicated"
    members = int(spec.get("nodes", 0)) + int(dedicated)
    ranks_per_member = int(spec.get("ranksPerNode", 8))
    chosen = pick_member(members, member, random.Random(seed), allow_zero=allow_zero)
    client, sampler = start_load(ctx, name, client_settings or ClientSettings(), sample_interval_s)
    try:
        ctx.view.step(
            f"client running: every answer checked against the float64 reference ({warmup_s:.0f}s warm-up)"
        )
        follow(ctx, sampler=sampler, client=client, until=lambda: False, timeout_s=warmup_s, note="warm-up")
        if client.snapshot()["ok"] == 0:
            raise StepFailed(f"no correct answer during the warm-up: {client.last_error()}")
        pod = f"{name}-{chosen}"
        if not find_pod_processes(ctx.namespace, pod):
            raise StepFailed(f"no process of pod {ctx.namespace}/{pod} found in /proc")
        ctx.view.step(f"SIGKILL the processes of member {chosen} (pod {pod})")
        kill_t = time.monotonic()
        killed = kill_pod_processes(ctx.namespace, pod)
        if on_kill is not None:
            on_kill(kill_t)

        def full_again() -> bool:
            samples = [s for s in sampler.snapshot() if s.t > kill_t]
            left = any(not s.full for s in samples)
            return left and bool(samples) and samples[-1].full

        reached = follow(
            ctx,
            sampler=sampler,
            client=client,
            until=full_again,
            timeout_s=recovery_timeout_s,
            note=f"recovering member {chosen}",
            expected=EXPECTED["demo: recovery to full capacity"],
        )
        settle = settle_s if reached else 0
        follow(
            ctx,
            sampler=sampler,
            client=client,
            until=lambda: False,
            timeout_s=settle,
            note="at full capacity",
        )
        end_t = client.stop(drain_s)
    finally:
        client.stop(0)
        sampler.stop()
    samples = sampler.snapshot()
    metrics = recovery_metrics(
        client.attempts,
        request_ids=client.request_ids,
        samples=samples,
        kill_t=kill_t,
        member=chosen,
        killed_ranks=ranks_per_member,
        end_t=end_t,
    )
    wrong = [f"{a.request_id}: {a.detail}" for a in client.attempts if a.result.value == "wrong"]
    result = FailureResult(
        chosen,
        killed,
        metrics,
        samples,
        epoch_regressions(samples),
        wrong[:10],
        kill_t,
        attempts=tuple(client.attempts),
        end_t=end_t,
    )
    if not reached:
        raise StepFailed(
            f"member {chosen} not back to full capacity {recovery_timeout_s:.0f}s after the kill "
            f"(metrics so far: {metrics.as_dict()})\n{describe(ctx, name)}"
        )
    return result


# ------------------------------------------------------------------ alerting


@dataclasses.dataclass(frozen=True)
class AlertResult:
    alert: str
    fired_after_s: float | None
    resolved_after_s: float | None
    window: str | None
    labels: dict[str, str]
    failures_counter: float

    def ok(self) -> bool:
        return self.fired_after_s is not None and self.resolved_after_s is not None


def start_prometheus(ctx: DemoContext, release: str, workdir: Path, window: str | None) -> Prometheus:
    prom = Prometheus(workdir, RULES, window)
    prom.start(operator_metrics_target(ctx, release))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, HTTPError, RuntimeError, KeyError, ValueError):
            if prom.target_up():
                return prom
        time.sleep(0.5)
    prom.stop()
    raise StepFailed(f"prometheus cannot scrape the operator at {operator_metrics_target(ctx, release)}")


class AlertWatcher:
    """Polls Prometheus every second from the kill on (a thread), so a short firing period is not missed while
    the demo follows the recovery: records when the alert first fired for this cluster, when it resolved
    afterwards, and the largest rank-failure count Prometheus saw."""

    def __init__(
        self, prom: Prometheus, namespace: str, name: str, since_t: float, alert: str = "ElasticEPRankFailed"
    ) -> None:
        self.prom, self.alert, self.since_t = prom, alert, since_t
        self.labels = {"namespace": namespace, "cluster": name}
        self.fired_after_s: float | None = None
        self.resolved_after_s: float | None = None
        self.fired_labels: dict[str, str] = {}
        self.state = "inactive"
        self.max_failures = 0.0
        # A failed poll (Prometheus busy, a transient error) is a missed sample: the pump carries on.
        self._pump = Pump(self._poll, name="alert-watcher", interval_s=1.0, error_backoff_s=1.0)

    def start(self) -> None:
        self._pump.start()

    def stop(self) -> None:
        self._pump.stop(10)

    def _poll(self) -> None:
        if self.resolved_after_s is not None:
            self._pump.stopping.set()
            return
        sel = ",".join(f'{k}="{v}"' for k, v in self.labels.items())
        state = self.prom.alert(self.alert, **self.labels)
        self.state = state.state
        now = time.monotonic() - self.since_t
        if state.state == "firing" and self.fired_after_s is None:
            self.fired_after_s, self.fired_labels = now, state.labels
        elif state.state == "inactive" and self.fired_after_s is not None:
            self.resolved_after_s = now
        for r in self.prom.query(f"sum(elasticep_rank_failures_total{{{sel}}})"):
            self.max_failures = max(self.max_failures, float(r["value"][1]))

    def result(self) -> AlertResult:
        return AlertResult(
            self.alert,
            self.fired_after_s,
            self.resolved_after_s,
            self.prom.window,
            self.fired_labels,
            self.max_failures,
        )


def alert_cycle(ctx: DemoContext, watcher: AlertWatcher, name: str, *, timeout_s: float) -> AlertResult:
    """Wait (showing progress) until the watcher saw the alert fire and resolve, or the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and watcher.resolved_after_s is None:
        phase = "fired, waiting for it to resolve" if watcher.fired_after_s is not None else "not fired yet"
        with contextlib.suppress(Exception):
            ctx.view.update(
                ctx.kube.get_cr(ctx.namespace, name),
                None,
                f"alert {watcher.alert}: {phase}",
                bound_s=timeout_s,
                expected=EXPECTED["demo: alert fires and resolves"],
            )
        time.sleep(1.0)
    watcher.stop()
    return watcher.result()


# ------------------------------------------------------------------ benches: set up once, tear down


@dataclasses.dataclass
class Session:
    """What `open_session` started, so `close_session` removes exactly that."""

    ctx: DemoContext
    release: str
    cluster_started: bool
    namespace_created: bool


def open_session(state: Path, namespace: str, release: str, view: View, tools_bin: Path) -> Session:
    """Local cluster (reused when running), namespace, operator chart installed. For the benchmarks."""
    started = ensure_cluster(state, view.step)
    kube = Kube(state / "kubeconfig")
    ctx = DemoContext(kube, Tools(tools_bin, state / "kubeconfig"), namespace, view, state)
    created = kube.ensure_namespace(namespace)
    session = Session(ctx, release, started, created)
    view.step(f"helm install the operator chart (release {release} in namespace {namespace})")
    try:
        install_operator(ctx, release)
    except BaseException:
        close_session(session, keep=False)
        raise
    return session


def close_session(session: Session, keep: bool) -> None:
    ctx = session.ctx
    if not keep:
        uninstall_operator(ctx, session.release)
        if session.namespace_created:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                ctx.tools.run("kubectl", ["delete", "namespace", ctx.namespace, "--wait=false"], 60)
    ctx.kube.close()
    if session.cluster_started and not keep:
        subprocess.run(
            [sys.executable, "-m", "eep_localcluster", "--state", str(ctx.state), "down"],
            capture_output=True,
            timeout=300,
            check=False,
        )
