"""End to end: every query of the Grafana dashboard returns series from a real Prometheus (Debian's) that
scrapes the chart's operator and the real workers (`eep-worker` on `mooncake-cpu`) on the local control plane
through a recovery: member 1 is deleted, the operator replaces it, the replacement joins.

Grafana itself cannot run here (no package registry this machine reaches ships a Grafana server), so the
test does what Grafana would: it substitutes the template variables with concrete values and sends each
panel's, annotation's and variable's expression as a range query over the time of the test.

The workers are scraped as the Prometheus operator's PodMonitor would (docs/install.md, "Dashboard"): port
`http`, labels `namespace` and `pod`. Debian's Prometheus is built without Kubernetes service discovery, so
the test writes the member pods into a file_sd file and rewrites it as pods are replaced. The alert rules
are loaded with their windows scaled down (as in tests/alerts/) so ALERTS has series for the annotation.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from eep_contract.v1alpha1 import Labels
from eep_testkit.membership import at_full_capacity
from eep_testkit.ports import free_port
from eep_testkit.prometheus import Prometheus

from .board import ROOT, load, queries, substitute

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CHART = ROOT / "charts" / "elastic-ep-operator"
RULES = ROOT / "deploy" / "prometheus" / "elasticep-rules.yaml"
CLUSTER = "demo"


def workers_file(prom: Prometheus) -> Path:
    """The file_sd file the workers' scrape job reads (`set_workers` writes it)."""
    return prom.workdir / "workers.json"


def workers_job(prom: Prometheus) -> dict[str, Any]:
    """The scrape job of the workers: whatever `set_workers` last wrote, re-read every second."""
    return {
        "job_name": "elastic-ep-workers",
        "file_sd_configs": [{"files": [str(workers_file(prom))], "refresh_interval": "1s"}],
    }


def set_workers(prom: Prometheus, targets: list[dict[str, Any]]) -> None:
    tmp = workers_file(prom).with_suffix(".tmp")
    tmp.write_text(json.dumps(targets))
    tmp.replace(workers_file(prom))  # atomic: Prometheus never reads half a file


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus missing: run `make tools`")
    started: list[Prometheus] = []

    def start(operator: str) -> Prometheus:
        """Debian's prometheus: the operator as a static target, the workers from a file_sd file, the alert
        rules with their windows scaled to 20 s; scrapes and evaluates every second."""
        prom = Prometheus(tmp_path / "prometheus", RULES, "20s")
        prom.workdir.mkdir(parents=True, exist_ok=True)
        set_workers(prom, [])
        started.append(prom)
        prom.start(operator, extra_jobs=[workers_job(prom)])
        return prom

    yield start
    for prom in started:
        prom.stop()


def finite(series: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(v)) for s in series for _, v in s["values"])


def test_every_dashboard_query_returns_series_through_a_recovery(  # noqa: PLR0917 - pytest fixtures
    local_cluster: Any,
    namespace: str,
    kubectl: Callable[..., str],
    wait_for: Callable[..., Any],
    prometheus_for: Callable[[str], Prometheus],
    tmp_path: Path,
) -> None:
    ns = namespace
    tools = local_cluster.tools
    metrics_port, health_port = free_port(), free_port()
    sets = [
        "watch.mode=namespaces",
        f"operator.metricsPort={metrics_port}",
        f"operator.healthPort={health_port}",
    ]
    install = ["install", ns, str(CHART), "-n", ns, "--force-conflicts"]
    tools.run("helm", [*install, *(f"--set={s}" for s in sets)], timeout_s=120)
    try:
        cr = yaml.safe_load((ROOT / "examples" / "cpu-demo.yaml").read_text())
        cr["metadata"] = {"name": CLUSTER}
        cr["spec"]["nodes"] = 2
        cr["spec"].setdefault("template", {}).setdefault("spec", {})["serviceAccountName"] = (
            "elastic-ep-worker"
        )
        port = int(cr["spec"]["engine"]["port"])
        (tmp_path / "cr.json").write_text(json.dumps(cr))
        kubectl("apply", "-n", ns, "-f", str(tmp_path / "cr.json"))

        def cluster() -> dict[str, Any]:
            return dict(json.loads(kubectl("get", "eep", CLUSTER, "-n", ns, "-o", "json")))

        def describe() -> str:
            return kubectl("get", "eep,pods", "-n", ns, "-o", "wide", check=False) + "\n" + prom_tail()

        prom: Prometheus | None = None

        def prom_tail() -> str:
            return prom.tail() if prom else ""

        def refresh_workers() -> None:
            """The member pods as scrape targets, labelled like a PodMonitor labels them."""
            assert prom is not None
            pods = json.loads(
                kubectl("get", "pods", "-n", ns, "-l", f"{Labels.CLUSTER}={CLUSTER}", "-o", "json")
            )["items"]
            set_workers(
                prom,
                [
                    {
                        "targets": [f"{p['status']['podIP']}:{port}"],
                        "labels": {"namespace": ns, "pod": p["metadata"]["name"]},
                    }
                    for p in pods
                    if p.get("status", {}).get("podIP") and p["status"].get("phase") == "Running"
                ],
            )

        def running() -> bool:
            if prom is not None:
                refresh_workers()
            return at_full_capacity(cluster())

        wait_for(running, 180, describe)
        pod_ip = kubectl(
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            "app.kubernetes.io/component=operator",
            "-o",
            "jsonpath={.items[0].status.podIP}",
        ).strip()
        prom = prometheus_for(f"{pod_ip}:{metrics_port}")
        refresh_workers()
        labels = f'namespace="{ns}", cluster="{CLUSTER}"'
        wait_for(lambda: prom.query(f"elasticep_world_size{{{labels}}} == 2"), 60, describe)
        workers = f'elasticep_worker_steps_total{{namespace="{ns}", pod=~"{CLUSTER}-[0-9]+"}}'
        wait_for(lambda: len(prom.query(workers)) == 2, 60, describe)
        start = time.time() - 5

        # Kill member 1 (member 0 would be a whole-group restart) and let the operator bring it back.
        kubectl("delete", "pod", f"{CLUSTER}-1", "-n", ns, "--grace-period=0", "--wait=false")
        wait_for(lambda: prom.query(f"elasticep_rank_failures_total{{{labels}}}"), 60, describe)
        wait_for(lambda: not running(), 60, describe)
        # 300 s, not the 180 s of tests/alerts: once, at a load average of 8 on 2 cores, the first replacement
        # did not join and a second one was needed.
        wait_for(running, 300, describe)
        done = f"elasticep_recovery_duration_seconds_count{{{labels}}} >= 1"
        joined = f'elasticep_worker_recovery_phase_seconds_count{{namespace="{ns}", phase="join"}}'

        def scraped_the_recovery() -> bool:
            refresh_workers()
            return bool(prom.query(done)) and bool(prom.query(joined))

        wait_for(scraped_the_recovery, 90, describe)
        time.sleep(3)  # a few more scrapes of the recovered state
        end = time.time()

        span = math.ceil(end - start)
        values = {
            "namespace": ns,
            "cluster": CLUSTER,
            "__rate_interval": "4s",  # Grafana's minimum: 4 x the scrape interval
            "__interval": "2s",
            "__range": f"{span}s",
            "__range_s": str(span),
        }
        empty, answers = [], {}
        for q in queries(load()):
            expr = substitute(q.expr, values)
            result = prom.query_range(expr, start, end)
            answers[q.where] = result
            if not result or not finite(result):
                empty.append(f"{q.where}: {expr}")
        assert not empty, "queries without data:\n" + "\n".join(empty) + "\n" + describe()

        # The panels show what happened, not just something.
        phases = {s["metric"].get("phase") for s in answers["panel 'Worker recovery phases p50' A"]}
        assert {"join", "total", "wait_peer", "recover_ranks", "broadcast"} <= phases, phases
        failures = answers["panel 'Rank failures by reason' A"]
        assert any(s["metric"].get("reason") == "PodDeleted" for s in failures), failures
        assert max(float(v) for s in failures for _, v in s["values"]) >= 1
        alerts = {s["metric"].get("alertname") for s in answers["annotation 'Firing alerts'"]}
        assert "ElasticEPRankFailed" in alerts, alerts
        phase_codes = {float(v) for s in answers["panel 'Phase' A"] for _, v in s["values"]}
        assert {2.0, 3.0} <= phase_codes, phase_codes  # Running and Degraded (the mapping in the generator)
    finally:
        tools.run("helm", ["uninstall", ns, "-n", ns], timeout_s=120, check=False)
