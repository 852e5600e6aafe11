"""End to end: a real Prometheus (Debian's) scrapes the operator that the chart runs on the local control
plane; a member is killed; the query API shows the failure counter move and ElasticEPRankFailed fire, then
resolve.

The alert's 5-minute window would make the test wait 5 minutes for the resolve, so the rules are loaded with
their windows scaled down (every `[Nm]` and `offset Nm` -> 20s, `eep_testkit.prometheus.scale_windows`); the
expressions are otherwise the shipped ones.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from eep_testkit import crs
from eep_testkit.membership import at_full_capacity
from eep_testkit.prometheus import Prometheus
from eep_testkit.tools import OperatorPorts

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "elasticep-rules.yaml"
WINDOW = "20s"


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    """Start a Prometheus that scrapes one target every second, with the rules' windows scaled to WINDOW;
    stopped afterwards."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus missing: run `make tools`")
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        prom = Prometheus(tmp_path / f"prometheus-{len(started)}", RULES, WINDOW)
        started.append(prom)
        try:
            prom.start(target, timeout_s=30)
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from exc
        return prom

    yield start
    for prom in started:
        prom.stop()


def test_rank_failure_moves_the_counter_and_fires_then_resolves_the_alert(
    local_cluster: Any,
    namespace: str,
    kubectl: Callable[..., str],
    wait_for: Callable[..., Any],
    prometheus_for: Callable[[str], Prometheus],
) -> None:
    ns = namespace
    tools = local_cluster.tools  # hack/install-tools.sh puts helm next to kubectl
    ports = OperatorPorts.free()
    tools.install_chart(ns, ns, "watch.mode=namespaces", *ports.sets(), wait_s=None)
    try:
        tools.apply(ns, crs.from_example("demo", nodes=2))

        def cluster() -> dict[str, Any]:
            return dict(json.loads(kubectl("get", "eep", "demo", "-n", ns, "-o", "json")))

        def running() -> bool:
            return at_full_capacity(cluster())

        def describe() -> str:
            return kubectl("get", "eep,pods", "-n", ns, "-o", "wide", check=False) + kubectl(
                "get", "events", "-n", ns, "--sort-by=.lastTimestamp", check=False
            )

        wait_for(running, 180, describe)
        selector = "app.kubernetes.io/component=operator"
        pod_ip = kubectl(
            "get", "pods", "-n", ns, "-l", selector, "-o", "jsonpath={.items[0].status.podIP}"
        ).strip()
        prom = prometheus_for(f"{pod_ip}:{ports.metrics}")
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
        tools.run("helm", ["uninstall", ns, "-n", ns], timeout_s=120, check=False)
