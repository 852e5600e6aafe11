"""SGLang engine mode through the chart's operator on the local control plane, with a stand-in for SGLang.

The member pods run tests/chart/sglang_standin.py (a STAND-IN, not SGLang) with the SGLang command line the
operator renders. It reproduces what the operator has to work around: node 0 admits a joiner only at the end
of a served generation, its /health stalls and answers 503 while it admits, nodes >= 1 listen only once they
joined, and a scheduler process may die while the node keeps answering 200.

- Admission: with `admissionTrigger.enabled: false` a replacement is never admitted and times out
  (JoinTimeout, what the operator saw before the trigger); with the trigger on, the next replacement joins,
  member 0 stays Ready through the admission, and the operator counts its requests.
- Liveness: a scheduler of member 1 SIGKILLed; the rendered liveness probe ends the pod, the member is
  replaced and rejoins.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from eep_contract.v1alpha1 import GROUP, PLURAL, VERSION, Labels
from eep_testkit import crs
from eep_testkit.ports import free_port

from .test_chart_install import Helm, container_logs, kubectl_apply

pytestmark = pytest.mark.cluster

STANDIN = Path(__file__).resolve().parent / "sglang_standin.py"
PORT, STORE_PORT = 18090, 29591
Kubectl = Callable[..., str]


def sglang_cr(name: str, *, trigger: bool) -> dict[str, Any]:
    return crs.cluster(
        name,
        nodes=2,
        ranks_per_node=2,
        image="lmsysorg/sglang:v0.5.23",
        engine={
            "name": "sglang",
            "port": PORT,
            "sglang": {
                "modelPath": "stand-in",
                "version": "0.5.23",
                "admissionTrigger": {"enabled": trigger, "intervalSeconds": 0.5, "timeoutSeconds": 10},
            },
        },
        elasticEP={"coordinatorPort": STORE_PORT},
        recovery={
            "backoffInitialSeconds": 0.5,
            "backoffMaxSeconds": 2,
            "maxRestartsPerMember": 5,
            "restartWindowSeconds": 600,
            "rejoinTimeoutSeconds": 20,
            "maxUnavailableMembers": 1,
        },
        template=crs.pod_template(
            command=["python3", str(STANDIN)],
            env={"STANDIN_ADMIT_S": "3", "STANDIN_HEALTH_WAIT_S": "2"},
            terminationGracePeriodSeconds=1,
        ),
    )


class Cluster:
    """The CR `name` in `ns` and its pods, read with the admin client."""

    def __init__(self, kube: Any, ns: str, name: str) -> None:
        self.core = client.CoreV1Api(kube)
        self.custom = client.CustomObjectsApi(kube)
        self.ns, self.name = ns, name

    def cr(self) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, self.name))

    def member(self, index: int) -> dict[str, Any]:
        return dict((self.cr().get("status") or {}).get("members", [{}] * (index + 1))[index])

    def running(self) -> bool:
        st = self.cr().get("status") or {}
        return st.get("phase") == "Running" and all(
            m.get("state") == "Healthy" for m in st.get("members", [])
        )

    def pod(self, index: int) -> Any:
        selector = f"{Labels.CLUSTER}={self.name},{Labels.MEMBER}={index}"
        pods = self.core.list_namespaced_pod(self.ns, label_selector=selector).items
        return next((p for p in pods if p.metadata.deletion_timestamp is None), None)

    def engine(self, index: int, path: str) -> dict[str, Any]:
        ip = self.pod(index).status.pod_ip
        with urllib.request.urlopen(f"http://{ip}:{PORT}{path}", timeout=5) as r:
            return dict(json.loads(r.read() or b"{}"))

    def describe(self) -> str:
        return json.dumps(self.cr().get("status"), indent=1, default=str)[-4000:]


@pytest.fixture
def operator(local_cluster: Any, helm: Path, namespace: str) -> Iterator[tuple[str, int]]:
    """The chart's operator in the test's namespace (release name = namespace); yields (namespace, metrics
    port). Uninstalled at the end."""
    h = Helm(helm, local_cluster.kubeconfig)
    metrics, health = free_port(), free_port()  # pods of the process node share the host's ports
    sets = ["watch.mode=namespaces", f"operator.metricsPort={metrics}", f"operator.healthPort={health}"]
    h.install(namespace, namespace, *sets, wait=False)
    try:
        yield namespace, metrics
    finally:
        h.tools.run("helm", ["uninstall", namespace, "-n", namespace], timeout_s=120, check=False)


def admission_requests(metrics_port: int, ns: str, name: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "elasticep_admission_trigger_requests_total" and s.labels.get("cluster") == name:
                assert s.labels["namespace"] == ns
                found[s.labels["result"]] = s.value
    return found


class ReadyWatch:
    """Polls a pod's Ready condition in a thread and remembers every moment it was not Ready."""

    def __init__(self, cluster: Cluster, index: int) -> None:
        self.cluster, self.index = cluster, index
        self.not_ready: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                pod = self.cluster.pod(self.index)
            except Exception:
                continue
            conditions = {c.type: c.status for c in (pod.status.conditions or [])} if pod else {}
            if conditions.get("Ready") != "True":
                self.not_ready.append(time.monotonic())

    def close(self) -> list[float]:
        self.stop.set()
        self.thread.join(5)
        return self.not_ready


def test_a_replacement_joins_an_idle_group_only_through_the_admission_trigger(
    operator: tuple[str, int], kube: Any, kubectl: Kubectl, wait_for: Callable[..., Any], local_cluster: Any
) -> None:
    ns, metrics_port = operator
    c = Cluster(kube, ns, "sg")
    kubectl_apply(kubectl, ns, sglang_cr("sg", trigger=False))

    def details() -> str:
        return c.describe() + container_logs(Path(local_cluster.state), 12)

    wait_for(c.running, 120, details)

    # Trigger off, no traffic: the replacement waits in join_group and the operator sees a join timeout.
    c.engine(1, "/exit/137")
    wait_for(lambda: (c.member(1).get("lastExit") or {}).get("reason") == "JoinTimeout", 90, details)
    assert c.engine(0, "/stats")["generated"] == 0

    # Trigger on: the next replacement is admitted, while member 0 stays Ready (its /health stalls with 503
    # during the admission, which its readiness probe tolerates).
    watch = ReadyWatch(c, 0)
    kubectl("patch", "eep", "sg", "-n", ns, "--type=merge", "-p",
            '{"spec":{"engine":{"sglang":{"admissionTrigger":{"enabled":true}}}}}')  # fmt: skip
    try:
        wait_for(lambda: c.running() and c.member(1)["restarts"] >= 2, 90, details)
    finally:
        not_ready = watch.close()
    assert not not_ready, f"member 0 was not Ready for {len(not_ready) * 0.2:.1f}s during the admission"
    stats = c.engine(0, "/stats")
    assert stats["generated"] >= 1 and stats["admitted"] == [1], stats
    counted = admission_requests(metrics_port, ns, "sg")
    assert counted.get("Succeeded", 0) >= 1, counted


def test_a_dead_scheduler_ends_its_pod_and_the_member_is_replaced(
    operator: tuple[str, int], kube: Any, kubectl: Kubectl, wait_for: Callable[..., Any], local_cluster: Any
) -> None:
    ns, _ = operator
    c = Cluster(kube, ns, "sg")
    kubectl_apply(kubectl, ns, sglang_cr("sg", trigger=True))

    def details() -> str:
        return c.describe() + container_logs(Path(local_cluster.state), 12)

    wait_for(c.running, 120, details)
    first_uid = c.pod(1).metadata.uid
    scheduler = c.engine(1, "/stats")["schedulers"][1]
    os.kill(scheduler, signal.SIGKILL)  # no exception, no exit of its parent: /health keeps saying 200
    assert c.engine(1, "/health") == {}

    # The liveness probe (3 failures, 10 s apart) ends the container; the member is replaced and rejoins.
    wait_for(lambda: c.member(1).get("restarts", 0) >= 1, 60, details)
    last = c.member(1)["lastExit"]
    assert (last["exitCode"], last["podUid"]) == (137, first_uid), last
    wait_for(c.running, 60, details)
