"""The chart on the local control plane: install, RBAC enough and not more, upgrade, uninstall leaves nothing.

Uses the fixtures of tests/conftest.py (`local_cluster`, `namespace`, `kubectl`, `wait_for`). Tokens of the
chart's ServiceAccounts (`kubectl create token`) make real requests, so the API server's RBAC decides.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from eep_testkit import crs
from eep_testkit.membership import at_full_capacity
from eep_testkit.tools import OperatorPorts, Tools

from .conftest import CHART

pytestmark = pytest.mark.cluster

Kubectl = Callable[..., str]


class Helm:
    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.tools = Tools(binary.parent, kubeconfig)

    def install(self, release: str, namespace: str, *sets: str, wait: bool = True) -> str:
        return self.tools.install_chart(release, namespace, *sets, wait_s=90 if wait else None)

    def __call__(self, *args: str, timeout: float = 120) -> str:
        return self.tools.run("helm", args, timeout)


@pytest.fixture
def release(local_cluster: Any, helm: Path, namespace: str) -> Iterator[tuple[Helm, str]]:
    """A Helm handle and a release name unique to the test (its namespace); uninstalled at the end."""
    h = Helm(helm, local_cluster.kubeconfig)
    yield h, namespace
    h.tools.run("helm", ["uninstall", namespace, "-n", namespace], timeout_s=120, check=False)


def token_client(
    kubectl: Kubectl, local_cluster: Any, namespace: str, service_account: str, tmp_dir: Path
) -> client.ApiClient:
    """An ApiClient that authenticates as the ServiceAccount (a real bound token), not as admin."""
    token = kubectl("create", "token", service_account, "-n", namespace, "--duration=10m").strip()
    kubeconfig = yaml.safe_load(Path(local_cluster.kubeconfig).read_text())
    cluster = kubeconfig["clusters"][0]["cluster"]
    config = client.Configuration()
    config.host = cluster["server"]
    config.api_key = {"authorization": f"Bearer {token}"}
    if "certificate-authority-data" in cluster:
        ca = tmp_dir / f"{service_account}-ca.crt"
        ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        config.ssl_ca_cert = str(ca)
    elif "certificate-authority" in cluster:
        config.ssl_ca_cert = cluster["certificate-authority"]
    else:
        config.verify_ssl = False
    return client.ApiClient(config)


def status_of(call: Callable[[], Any]) -> int:
    """HTTP status of an API call: 200 when it succeeded."""
    try:
        call()
    except ApiException as exc:
        return int(exc.status)
    return 200


def example_cr(name: str) -> dict[str, Any]:
    return crs.from_example(name, nodes=2)


def test_rbac_is_enough_and_not_more(
    release: tuple[Helm, str], kubectl: Kubectl, local_cluster: Any, tmp_path: Path
) -> None:
    helm, ns = release
    # No operator process: this test is about what the ServiceAccounts may do, asked of the API server.
    helm.install(ns, ns, "watch.mode=namespaces", "replicaCount=0")
    custom: Any = client.CustomObjectsApi  # bodies below are plain dicts, which the client accepts
    core: Any = client.CoreV1Api
    coordination: Any = client.CoordinationV1Api
    policy: Any = client.PolicyV1Api
    kubectl_apply(kubectl, ns, example_cr("rbac"))
    kubectl("create", "secret", "generic", "s", "-n", ns, "--from-literal=k=v")

    op = token_client(kubectl, local_cluster, ns, f"{ns}-elastic-ep-operator", tmp_path)
    g, v, p = "elasticep.io", "v1alpha1", "elasticepclusters"
    allowed = {
        "list CRs": lambda: custom(op).list_namespaced_custom_object(g, v, ns, p),
        "patch CR": lambda: custom(op).patch_namespaced_custom_object(
            g, v, ns, p, "rbac", {"metadata": {"annotations": {"t": "1"}}}
        ),
        "replace status": lambda: custom(op).replace_namespaced_custom_object_status(
            g,
            v,
            ns,
            p,
            "rbac",
            {**custom(op).get_namespaced_custom_object(g, v, ns, p, "rbac"), "status": {}},
        ),
        "create its lease": lambda: coordination(op).create_namespaced_lease(
            ns, {"metadata": {"name": "elastic-ep-operator"}, "spec": {"holderIdentity": "test"}}
        ),
        "read its lease": lambda: coordination(op).read_namespaced_lease("elastic-ep-operator", ns),
        "list pods": lambda: core(op).list_namespaced_pod(ns),
        "list nodes": lambda: core(op).list_node(),
        "create service": lambda: core(op).create_namespaced_service(
            ns, {"metadata": {"name": "rbac"}, "spec": {"clusterIP": "None", "selector": {"a": "b"}}}
        ),
        "create PDB": lambda: policy(op).create_namespaced_pod_disruption_budget(
            ns,
            {
                "metadata": {"name": "rbac"},
                "spec": {"minAvailable": 1, "selector": {"matchLabels": {"a": "b"}}},
            },
        ),
        "read PDB": lambda: policy(op).read_namespaced_pod_disruption_budget("rbac", ns),
        "create event": lambda: core(op).create_namespaced_event(
            ns,
            {
                "metadata": {"name": "rbac.1"},
                "involvedObject": {"kind": "ElasticEPCluster", "name": "rbac", "namespace": ns},
                "reason": "Test",
                "message": "m",
            },
        ),
    }
    denied = {
        "read secrets": lambda: core(op).read_namespaced_secret("s", ns),
        "list secrets": lambda: core(op).list_namespaced_secret(ns),
        "delete service": lambda: core(op).delete_namespaced_service("rbac", ns),
        "create configmap": lambda: core(op).create_namespaced_config_map(ns, {"metadata": {"name": "c"}}),
        "delete CR": lambda: custom(op).delete_namespaced_custom_object(g, v, ns, p, "rbac"),
        "pods in another namespace": lambda: core(op).list_namespaced_pod("default"),
        "patch node": lambda: core(op).patch_node("eep-node-0", {"metadata": {"labels": {"x": "y"}}}),
        "read another lease": lambda: coordination(op).read_namespaced_lease("kube-scheduler", "kube-system"),
        "patch status": lambda: custom(op).patch_namespaced_custom_object_status(
            g, v, ns, p, "rbac", {"status": {"phase": "Failed"}}
        ),
    }
    results = {name: status_of(call) for name, call in {**allowed, **denied}.items()}
    assert all(results[n] == 200 for n in allowed), results
    assert {n: results[n] for n in denied} == dict.fromkeys(denied, 403), results

    worker = token_client(kubectl, local_cluster, ns, "elastic-ep-worker", tmp_path)
    assert status_of(lambda: custom(worker).get_namespaced_custom_object(g, v, ns, p, "rbac")) == 200
    assert status_of(lambda: custom(worker).list_namespaced_custom_object(g, v, ns, p)) == 200
    worker_denied = {
        "patch CR": lambda: custom(worker).patch_namespaced_custom_object(
            g, v, ns, p, "rbac", {"metadata": {"labels": {"x": "y"}}}
        ),
        "patch status": lambda: custom(worker).patch_namespaced_custom_object_status(
            g, v, ns, p, "rbac", {"status": {"phase": "Failed"}}
        ),
        "delete CR": lambda: custom(worker).delete_namespaced_custom_object(g, v, ns, p, "rbac"),
        "read secret": lambda: core(worker).read_namespaced_secret("s", ns),
        "list pods": lambda: core(worker).list_namespaced_pod(ns),
    }
    assert {n: status_of(c) for n, c in worker_denied.items()} == dict.fromkeys(worker_denied, 403)


def kubectl_apply(kubectl: Kubectl, namespace: str, obj: dict[str, Any]) -> None:
    """The shared `kubectl` fixture has no stdin: pass the object through a temporary file."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(obj, f)
    try:
        kubectl("apply", "-n", namespace, "-f", f.name)
    finally:
        Path(f.name).unlink()


def container_logs(state: Path, lines: int = 30) -> str:
    """Tails of the process node's container logs (the local node has no `kubectl logs`)."""
    out = []
    for log in sorted(state.glob("nodes/*/pods/*/**/*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {log.relative_to(state)} ---\n" + "\n".join(tail))
    return "\n".join(out)


def owned(kubectl: Kubectl, release: str, namespace: str) -> list[str]:
    """Every object carrying the release's instance label, namespaced and cluster-scoped."""
    selector = f"app.kubernetes.io/instance={release}"
    kinds = "deployments,services,serviceaccounts,roles,rolebindings,pods"
    found = kubectl("get", kinds, "-n", namespace, "-l", selector, "-o", "name").split()
    found += kubectl("get", "clusterroles,clusterrolebindings", "-l", selector, "-o", "name").split()
    return sorted(found)


def test_upgrade_and_uninstall_leave_nothing_behind(release: tuple[Helm, str], kubectl: Kubectl) -> None:
    helm, ns = release
    helm.install(ns, ns, "replicaCount=0")
    first = owned(kubectl, ns, ns)
    assert f"clusterrole.rbac.authorization.k8s.io/{ns}-elastic-ep-operator-cluster" in first
    assert "serviceaccount/elastic-ep-worker" in first

    helm(
        "upgrade", ns, str(CHART), "-n", ns, "--reuse-values", "--set", "workers.serviceAccount.create=false"
    )
    second = owned(kubectl, ns, ns)
    assert "serviceaccount/elastic-ep-worker" not in second
    assert "role.rbac.authorization.k8s.io/elastic-ep-worker" not in second
    assert set(second) < set(first)

    helm("uninstall", ns, "-n", ns, "--wait")
    assert owned(kubectl, ns, ns) == []
    # The CRD stays (Helm never deletes CRDs), so existing clusters survive an uninstall.
    assert kubectl("get", "crd", "elasticepclusters.elasticep.io", "-o", "name").strip()


@pytest.mark.skipif(
    importlib.util.find_spec("eep_operator.__main__") is None, reason="eep-operator run is not there yet"
)
def test_operator_from_the_chart_reconciles_an_example(
    release: tuple[Helm, str], kubectl: Kubectl, wait_for: Callable[..., Any], local_cluster: Any
) -> None:
    helm, ns = release
    helm.install(ns, ns, "watch.mode=namespaces", *OperatorPorts.free().sets(), wait=False)
    kubectl_apply(kubectl, ns, example_cr("demo"))

    def running() -> bool:
        return at_full_capacity(json.loads(kubectl("get", "eep", "demo", "-n", ns, "-o", "json")))

    wait_for(
        running,
        180,
        lambda: (
            kubectl("get", "eep,pods", "-n", ns, "-o", "wide", check=False)
            + container_logs(Path(local_cluster.state))
        ),
    )
