"""End to end: a real Prometheus (Debian's) scrapes the operator that the chart runs on the local control
plane; a member is killed; the query API shows the failure counter move and ElasticEPRankFailed fire, then
resolve.

The alert's 5-minute window would make the test wait 5 minutes for the resolve, so the rules are loaded with
their windows scaled down (`[5m]`/`offset 5m` -> 20s); the expressions are otherwise the shipped ones.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "elasticep-rules.yaml"
CHART = ROOT / "charts" / "elastic-ep-operator"
WINDOW = "20s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=5) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return list(body["data"]["result"])


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    """Start a Prometheus that scrapes one target every second, with the scaled rules; stopped afterwards."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus missing: run `make tools`")
    procs: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> Prometheus:
        rules = RULES.read_text().replace("[5m]", f"[{WINDOW}]").replace("offset 5m", f"offset {WINDOW}")
        (tmp_path / "rules.yaml").write_text(rules)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "rules.yaml")],
            "scrape_configs": [
                {"job_name": "elastic-ep-operator", "static_configs": [{"targets": [target]}]}
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    binary,
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        prom = Prometheus(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                prom.query("up")
                return prom
            except OSError:
                time.sleep(0.5)
        raise AssertionError((tmp_path / "prometheus.log").read_text())

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_rank_failure_moves_the_counter_and_fires_then_resolves_the_alert(  # noqa: PLR0917 - pytest fixtures
    local_cluster: Any,
    namespace: str,
    kubectl: Callable[..., str],
    wait_for: Callable[..., Any],
    prometheus_for: Callable[[str], Prometheus],
    tmp_path: Path,
) -> None:
    ns = namespace
    # hack/install-tools.sh puts helm next to kubectl.
    helm_cmd = [
        str(Path(local_cluster.kubectl_path).parent / "helm"),
        f"--kubeconfig={local_cluster.kubeconfig}",
    ]
    # Pods of the process node share the host's ports: free ones keep parallel clusters from colliding.
    metrics_port, health_port = free_port(), free_port()
    sets = [
        "watch.mode=namespaces",
        f"operator.metricsPort={metrics_port}",
        f"operator.healthPort={health_port}",
    ]
    install = [*helm_cmd, "install", ns, str(CHART), "-n", ns, "--force-conflicts"]
    subprocess.run([*install, *(f"--set={s}" for s in sets)], check=True, capture_output=True, timeout=120)
    try:
        cr = yaml.safe_load((ROOT / "examples" / "cpu-demo.yaml").read_text())
        cr["metadata"] = {"name": "demo"}
        cr["spec"]["nodes"] = 2
        cr["spec"].setdefault("template", {})["serviceAccountName"] = "elastic-ep-worker"
        (tmp_path / "cr.json").write_text(json.dumps(cr))
        kubectl("apply", "-n", ns, "-f", str(tmp_path / "cr.json"))

        def cluster() -> dict[str, Any]:
            return dict(json.loads(kubectl("get", "eep", "demo", "-n", ns, "-o", "json")))

        def running() -> bool:
            status = cluster().get("status", {})
            return status.get("phase") == "Running" and len(status["membership"]["activeRanks"]) == 2

        def describe() -> str:
            return kubectl("get", "eep,pods", "-n", ns, "-o", "wide", check=False)

        wait_for(running, 180, describe)
        selector = "app.kubernetes.io/component=operator"
        pod_ip = kubectl(
            "get", "pods", "-n", ns, "-l", selector, "-o", "jsonpath={.items[0].status.podIP}"
        ).strip()
        prom = prometheus_for(f"{pod_ip}:{metrics_port}")
        labels = f'namespace="{ns}",cluster="demo"'
        wait_for(lambda: prom.query(f"elasticep_world_size{{{labels}}} == 2"), 60, describe)
        assert not prom.query(f'ALERTS{{alertname="ElasticEPRankFailed",{labels}}}')

        # Kill member 1 (member 0 would be a whole-group restart).
        kubectl("delete", "pod", "demo-1", "-n", ns, "--grace-period=0", "--wait=false")
        moved = wait_for(
            lambda: prom.query(f"sum(elasticep_rank_failures_total{{{labels}}}) >= 1"), 60, describe
        )
        assert float(moved[0]["value"][1]) >= 1
        firing = f'ALERTS{{alertname="ElasticEPRankFailed",alertstate="firing",{labels}}}'
        wait_for(lambda: prom.query(firing), 60, describe)

        # The member comes back; with no further failure the alert resolves once the window has passed, while
        # the counter is still there (a resolve because the series vanished, e.g. an operator restart, proves
        # nothing).
        wait_for(running, 180, describe)
        counted = f"sum(elasticep_rank_failures_total{{{labels}}}) >= 1"

        def resolved_by_the_window() -> bool:
            assert prom.query(counted), "failure counter vanished:\n" + diagnostics()
            return not prom.query(firing)

        def diagnostics() -> str:
            restarts = kubectl(
                "get", "pods", "-n", ns, "-l", selector, "-o", "jsonpath={.items[*].status.containerStatuses}"
            )
            return f"up: {prom.query('up')}\noperator container: {restarts}\n{describe()}"

        wait_for(resolved_by_the_window, 90, diagnostics)
    finally:
        subprocess.run([*helm_cmd, "uninstall", ns, "-n", ns], check=False, capture_output=True, timeout=120)
