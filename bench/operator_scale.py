"""Operator scale benchmark: many ElasticEPClusters on the local control plane with fake kubelets.

    .venv/bin/python bench/operator_scale.py [--clusters 50] [--members 16] [--failures 50] [--nodes 4]
        [--unrelated-pods 5000] [--kubeconfig PATH (reuse a running --fake cluster)]
        [--out bench/results/operator_scale.json]

Starts `eep-localcluster up --fake` (pods go Running+Ready at once; the pod annotation
`eep.local/fake-exit-code` terminates a container), one `eep-operator run` subprocess, creates the clusters,
waits until every one is Running, creates `--unrelated-pods` pods that are not ours in the same (watched)
namespace (scheduling-gated: they stay Pending and cost the scheduler and the fake nodes nothing; only a watch
that is not filtered by the API server sees them), restarts the operator (so it lists them at start, as after
an upgrade) and records its RSS once it is idle, then injects `--failures` container exits (one member at a
time per cluster, never member 0). One watcher in this process sees every pod of ours and every CR change, and
measures on one clock:

- detection: the container shows terminated -> the CR status shows that member Failed (with that pod's uid);
- reaction: the container shows terminated -> the replacement pod (join flag) exists.

Also the restarted operator's CPU seconds (whole life and failure phase), its RSS after start (VmRSS once it
is idle) and its peak RSS (VmHWM). Targets (issues 4 and 13): p99 detection <= 1 s, p99 reaction <= backoff
+ 1 s, peak RSS <= 250 MB, whatever the number of unrelated pods.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from eep_contract.v1alpha1 import GROUP, MANAGED_BY_VALUE, PLURAL, VERSION, Annotations, Labels
from eep_localcluster.processnode import FAKE_EXIT_ANNOTATION
from eep_testkit import crs
from eep_testkit.pump import Pump
from eep_testkit.wait import wait_until

# The kubernetes client's annotations do not cover what is used here (raw dicts, untyped watch); one Any-typed
# handle keeps mypy --strict quiet, as in eep_demo.cluster.
k8s: Any = kubernetes
REPO = Path(__file__).resolve().parent.parent
NS = "bench"
BACKOFF_S = 1.0


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))], 4)


def proc_stats(pid: int, field: str = "VmHWM") -> tuple[float, int]:
    """(CPU seconds user+system, `field` of /proc/PID/status in bytes: VmHWM peak RSS, VmRSS RSS now) of a
    live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    mem = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            mem = int(line.split()[1]) * 1024
    return cpu, mem


def wait_idle(pid: int, timeout: float, cpu_per_s: float = 0.05, calm_s: float = 3.0) -> float:
    """Wait until the process used less than `cpu_per_s` CPU seconds per second for `calm_s` seconds (it has
    listed and reconciled what it found) or `timeout` passed; returns the seconds waited."""
    t0 = time.monotonic()
    last, calm = proc_stats(pid)[0], 0.0
    while time.monotonic() - t0 < timeout and calm < calm_s:
        time.sleep(0.5)
        cpu = proc_stats(pid)[0]
        calm = calm + 0.5 if cpu - last < cpu_per_s * 0.5 else 0.0
        last = cpu
    return time.monotonic() - t0


def unrelated_pod(i: int) -> dict[str, Any]:
    """A pod that is not ours (no managed-by label), of an ordinary size: labels, env, resources. Its
    scheduling gate keeps it Pending: nothing runs it, the scheduler skips it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"other-{i:05d}",
            "labels": {"app": f"other-{i % 50}", "tier": "batch", Labels.MANAGED_BY: "someone"},
            "annotations": {"example.com/owner": "team-a", "example.com/build": f"{i:08x}"},
        },
        "spec": {
            "schedulingGates": [{"name": "example.com/never"}],
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "main",
                    "image": "registry.example.com/team-a/batch-job:1.2.3",
                    "command": ["/bin/job", "--shard", str(i), "--config", "/etc/job/config.yaml"],
                    "env": [{"name": f"JOB_SETTING_{k}", "value": f"value-{k}-{i}"} for k in range(6)],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "128Mi"},
                        "limits": {"memory": "256Mi"},
                    },
                    "ports": [{"containerPort": 8080, "name": "http"}],
                }
            ],
        },
    }


def create_unrelated(core: Any, n: int) -> None:
    """Create `n` unrelated pods in the benchmark's namespace (8 requests at a time)."""

    def one(i: int) -> None:
        try:
            core.create_namespaced_pod(NS, unrelated_pod(i), _preload_content=False).data  # noqa: B018
        except k8s.client.exceptions.ApiException as e:
            if e.status != 409:
                raise

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))


class Watcher:
    """Timestamps, on this process's monotonic clock, of what the benchmark measures."""

    def __init__(self, api: Any) -> None:
        self.core = k8s.client.CoreV1Api(api)
        self.custom = k8s.client.CustomObjectsApi(api)
        self.terminated: dict[str, float] = {}  # pod uid -> first seen terminated
        self.failed: dict[str, float] = {}  # pod uid -> first seen as lastExit of a Failed member
        self.created: dict[tuple[str, int], list[tuple[float, str]]] = {}  # (cluster, member) -> (t, uid)
        self.created_wall: dict[str, float] = {}  # replacement pod uid -> wall-clock time seen
        self.restart_due: dict[str, float] = {}  # failed pod uid -> the status's nextRestartTime (wall clock)
        self.lock = threading.Lock()
        # Each pump re-establishes its watch until stopped (a watch ends on timeout or when the cluster goes
        # down; any stream error: reconnect after 0.2 s).
        self.pumps = [Pump(self._pods_once, name="watch-pods"), Pump(self._crs_once, name="watch-crs")]

    @property
    def stopping(self) -> bool:
        return any(p.stopping.is_set() for p in self.pumps)

    def start(self) -> None:
        for pump in self.pumps:
            pump.start()

    def stop(self) -> None:
        for pump in self.pumps:
            pump.stopping.set()

    def _pods_once(self) -> None:
        w = k8s.watch.Watch()
        # Plain dicts: deserialising 800 pods into client models would make this watcher the busiest
        # process on a 2-core machine and delay the very timestamps it takes. Our pods only (the selector):
        # the unrelated ones would load this process as they load an operator that sees them.
        for ev in w.stream(
            self.core.list_namespaced_pod,
            NS,
            label_selector=f"{Labels.MANAGED_BY}={MANAGED_BY_VALUE}",
            timeout_seconds=60,
            deserialize=False,
        ):
            self.saw_pod(ev["type"], ev["object"], time.monotonic(), time.time())
            if self.stopping:
                w.stop()

    def saw_pod(self, type_: str, pod: dict[str, Any], now: float, wall: float) -> None:
        """Record one pod event seen at `now` (monotonic) and `wall` (epoch seconds). Only the first sight of
        a replacement counts: a reconnected watch lists every pod again as ADDED."""
        meta = pod.get("metadata") or {}
        uid = meta.get("uid", "")
        labels = meta.get("labels") or {}
        ann = meta.get("annotations") or {}
        with self.lock:
            if type_ == "ADDED" and ann.get(Annotations.JOIN) == "true" and uid not in self.created_wall:
                key = (labels.get(Labels.CLUSTER, ""), int(labels.get(Labels.MEMBER, -1)))
                self.created.setdefault(key, []).append((now, uid))
                self.created_wall[uid] = wall
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                if "terminated" in (cs.get("state") or {}) and uid not in self.terminated:
                    self.terminated[uid] = now

    def _crs_once(self) -> None:
        w = k8s.watch.Watch()
        for ev in w.stream(
            self.custom.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, timeout_seconds=60
        ):
            now = time.monotonic()
            for m in (ev["object"].get("status") or {}).get("members", []):
                uid = (m.get("lastExit") or {}).get("podUid")
                if uid and m.get("state") in ("Failed", "Restarting", "Joining", "Healthy"):
                    with self.lock:
                        self.failed.setdefault(uid, now)
                if uid and m.get("state") == "Failed" and m.get("nextRestartTime"):
                    due = datetime.fromisoformat(m["nextRestartTime"].replace("Z", "+00:00")).timestamp()
                    with self.lock:
                        self.restart_due.setdefault(uid, due)
            if self.stopping:
                w.stop()


def cluster_body(name: str, members: int) -> dict[str, Any]:
    recovery = {
        "backoffInitialSeconds": BACKOFF_S,
        "backoffMaxSeconds": BACKOFF_S,
        "maxRestartsPerMember": 1000,
        "maxUnavailableMembers": 1,
        "rejoinTimeoutSeconds": 120,
    }
    return crs.cluster(name, namespace=NS, image="fake", nodes=members, ranks_per_node=1, recovery=recovery)


def all_running(custom: Any, n: int) -> int:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
    return (
        sum(1 for cr in items if (cr.get("status") or {}).get("phase") == "Running") if len(items) == n else 0
    )


def wait(pred: Callable[..., object], timeout: float, what: str) -> None:
    wait_until(pred, timeout, what, interval_s=0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/operator_scale.py")
    p.add_argument("--clusters", type=int, default=50)
    p.add_argument("--members", type=int, default=16)
    p.add_argument("--failures", type=int, default=50)
    p.add_argument("--nodes", type=int, default=4, help="fake nodes (250 pods each)")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between injected failures")
    p.add_argument(
        "--unrelated-pods", type=int, default=5000, help="pods not ours in the watched namespace (0: none)"
    )
    p.add_argument("--kubeconfig", help="reuse a running --fake local cluster")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "operator_scale.json"))
    a = p.parse_args(argv)
    venv_bin = Path(sys.executable).parent
    state = Path(tempfile.mkdtemp(prefix="eep-bench-"))
    started_cluster = a.kubeconfig is None
    kubeconfig = Path(a.kubeconfig) if a.kubeconfig else state / "kubeconfig"
    op: subprocess.Popen[bytes] | None = None
    watcher: Watcher | None = None
    result: dict[str, Any] = {
        "benchmark": "operator_scale",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        if started_cluster:
            subprocess.run(
                [
                    str(venv_bin / "eep-localcluster"),
                    "--state",
                    str(state),
                    "up",
                    "--fake",
                    "--nodes",
                    str(a.nodes),
                ],
                check=True,
            )
        api = k8s.config.new_client_from_config(config_file=str(kubeconfig))
        ext = k8s.client.ApiextensionsV1Api(api)
        for crd_file in sorted((REPO / "crds").glob("*.yaml")):
            body = yaml.safe_load(crd_file.read_text())
            try:
                ext.create_custom_resource_definition(body)
            except k8s.client.exceptions.ApiException as e:
                if e.status != 409:
                    raise
        wait(
            lambda: any(
                c.type == "Established" and c.status == "True"
                for c in (ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}").status.conditions or [])
            ),
            60,
            "CRD established",
        )
        core, custom = k8s.client.CoreV1Api(api), k8s.client.CustomObjectsApi(api)
        try:
            core.create_namespace({"metadata": {"name": NS}})
        except k8s.client.exceptions.ApiException as e:
            if e.status != 409:
                raise
        log = (state / "operator.log").open("ab")
        argv = [
            str(venv_bin / "eep-operator"), "run", "--namespace", NS, "--kubeconfig", str(kubeconfig),
            "--metrics-port", "0", "--health-port", "0", "--no-leader-election", "--resync-seconds", "30",
            "--log-level", "WARNING",
        ]  # fmt: skip
        op = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        watcher = Watcher(api)
        watcher.start()
        t0 = time.monotonic()
        for i in range(a.clusters):
            custom.create_namespaced_custom_object(
                GROUP, VERSION, NS, PLURAL, cluster_body(f"c{i:03d}", a.members)
            )
        wait(lambda: all_running(custom, a.clusters) == a.clusters, 900, "every cluster Running")
        startup_s = time.monotonic() - t0
        t1 = time.monotonic()
        create_unrelated(core, a.unrelated_pods)
        unrelated_s = time.monotonic() - t1
        # Restart: the new process lists the namespace's pods at start (what an upgrade or a failover does).
        op.terminate()
        op.wait(30)
        op = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        idle_s = wait_idle(op.pid, 120)
        _, rss_start = proc_stats(op.pid, "VmRSS")
        wait(
            lambda: all_running(custom, a.clusters) == a.clusters, 300, "every cluster Running after restart"
        )
        cpu0, _ = proc_stats(op.pid)
        rng = random.Random(4)
        injected: list[tuple[str, int, str, float]] = []
        busy: dict[str, float] = {}
        for k in range(a.failures):
            name = f"c{k % a.clusters:03d}"
            # One failure at a time per cluster: wait until its previous one is recovered.
            wait(lambda name=name: busy.get(name, 0) <= time.monotonic(), 120, "previous failure")
            wait(lambda name=name: all_running_one(custom, name), 120, f"{name} Running")
            member = rng.randrange(1, a.members)
            pod = core.read_namespaced_pod(f"{name}-{member}", NS)
            core.patch_namespaced_pod(
                f"{name}-{member}", NS, {"metadata": {"annotations": {FAKE_EXIT_ANNOTATION: "137"}}}
            )
            injected.append((name, member, pod.metadata.uid, time.monotonic()))
            busy[name] = time.monotonic() + BACKOFF_S + 2
            time.sleep(a.interval)
        wait(
            lambda: all(
                any(t > watcher.terminated.get(uid, float("inf")) for t, _ in watcher.created.get((c, m), []))
                for c, m, uid, _ in injected
            ),
            300,
            "every replacement created",
        )
        wait(lambda: all_running(custom, a.clusters) == a.clusters, 300, "every cluster Running again")
        cpu1, rss = proc_stats(op.pid)
        detection, reaction, after_backoff = [], [], []
        for c, m, uid, _ in injected:
            term = watcher.terminated.get(uid)
            if term is None:
                continue
            if uid in watcher.failed:
                detection.append(watcher.failed[uid] - term)
            after = [(t, u) for t, u in watcher.created.get((c, m), []) if t > term]
            if after:
                seen, first = min(after)
                reaction.append(seen - term)
                if uid in watcher.restart_due and first in watcher.created_wall:
                    after_backoff.append(watcher.created_wall[first] - watcher.restart_due[uid])
        watcher.stop()
        result.update(
            {
                "clusters": a.clusters,
                "members_per_cluster": a.members,
                "pods": a.clusters * a.members,
                "unrelated_pods": a.unrelated_pods,
                "unrelated_pods_create_seconds": round(unrelated_s, 2),
                "restart_to_idle_seconds": round(idle_s, 2),
                "failures_injected": len(injected),
                "failures_measured": len(detection),
                "backoff_seconds": BACKOFF_S,
                "startup_to_all_running_seconds": round(startup_s, 2),
                "detection_seconds": {
                    "p50": pct(detection, 50),
                    "p99": pct(detection, 99),
                    "max": pct(detection, 100),
                },
                "reaction_seconds": {
                    "p50": pct(reaction, 50),
                    "p99": pct(reaction, 99),
                    "max": pct(reaction, 100),
                },
                # The operator's own lateness: the replacement seen here minus the end of the backoff the
                # operator wrote (nextRestartTime); reaction = detection + backoff + this, roughly.
                "created_after_backoff_seconds": {
                    "p50": pct(after_backoff, 50),
                    "p99": pct(after_backoff, 99),
                    "max": pct(after_backoff, 100),
                },
                "operator_cpu_seconds_total": round(cpu1, 2),
                "operator_cpu_seconds_failure_phase": round(cpu1 - cpu0, 2),
                "operator_rss_after_start_mb": round(rss_start / 2**20, 1),
                "operator_peak_rss_mb": round(rss / 2**20, 1),
                "host_cpus": os.cpu_count(),
            }
        )
        d99, r99 = result["detection_seconds"]["p99"], result["reaction_seconds"]["p99"]
        result["targets"] = {
            "p99_detection_le_1s": d99 is not None and d99 <= 1.0,
            "p99_reaction_le_backoff_plus_1s": r99 is not None and r99 <= BACKOFF_S + 1.0,
            "peak_rss_le_250mb": result["operator_peak_rss_mb"] <= 250,
        }
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0
    finally:
        if watcher is not None:
            watcher.stop()
        if op is not None and op.poll() is None:
            op.terminate()
            try:
                op.wait(15)
            except subprocess.TimeoutExpired:
                op.kill()
        if started_cluster:
            subprocess.run([str(venv_bin / "eep-localcluster"), "--state", str(state), "down"], check=False)


def all_running_one(custom: Any, name: str) -> bool:
    cr = custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
    return bool((cr.get("status") or {}).get("phase") == "Running")


if __name__ == "__main__":
    sys.exit(main())
