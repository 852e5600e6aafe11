"""`eep-operator status` on the local control plane: get, not found, and --watch following a status change."""

from __future__ import annotations

import io
import json
import threading
import time
from typing import Any

import pytest
from kubernetes import client
from rich.console import Console

from eep_operator.__main__ import main as operator_main
from eep_operator.cli import status
from eep_testkit import crs

pytestmark = pytest.mark.cluster
G, V, P = "elasticep.io", "v1alpha1", "elasticepclusters"


def create_cr(kube: Any, namespace: str, name: str) -> None:
    custom: Any = client.CustomObjectsApi(kube)
    cr = crs.from_example(name)
    custom.create_namespaced_custom_object(G, V, namespace, P, cr)
    member = {"index": 0, "podName": f"{name}-0", "firstRank": 0, "rankCount": 1, "state": "Healthy"}
    failed = {
        "index": 1,
        "podName": f"{name}-1",
        "firstRank": 1,
        "rankCount": 1,
        "state": "Failed",
        "restarts": 1,
        "lastExit": {"exitCode": 137, "reason": "Error"},
    }
    body = {
        "status": {"phase": "Degraded", "worldSize": 4, "membership": {"epoch": 3, "activeRanks": [0, 2, 3]}}
    }
    body["status"]["members"] = [member, failed]
    custom.patch_namespaced_custom_object_status(G, V, namespace, P, name, body)


def console() -> Console:
    return Console(file=io.StringIO(), width=200, record=True, color_system=None)


def test_status_prints_the_member_map(local_cluster: Any, kube: Any, namespace: str) -> None:
    create_cr(kube, namespace, "demo")
    out = console()
    code = status.main(["demo", "-n", namespace, "--kubeconfig", str(local_cluster.kubeconfig)], console=out)
    assert code == 0
    text = out.export_text()
    assert f"{namespace}/demo  phase Degraded  epoch 3  ranks 3/4" in text
    assert "137 Error" in text and "Failed" in text


def test_status_of_a_missing_cluster(
    local_cluster: Any, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = status.main(
        ["nope", "-n", namespace, "--kubeconfig", str(local_cluster.kubeconfig)], console=console()
    )
    assert code == status.EXIT_NOT_FOUND
    assert "not found" in capsys.readouterr().err


def test_operator_entry_point_dispatches_status(local_cluster: Any, kube: Any, namespace: str) -> None:
    create_cr(kube, namespace, "demo")
    assert (
        operator_main(["status", "demo", "-n", namespace, "--kubeconfig", str(local_cluster.kubeconfig)]) == 0
    )


def test_watch_follows_a_status_change(local_cluster: Any, kube: Any, namespace: str) -> None:
    create_cr(kube, namespace, "demo")
    out = console()
    result: dict[str, int] = {}
    argv = [
        "demo",
        "-n",
        namespace,
        "--kubeconfig",
        str(local_cluster.kubeconfig),
        "--watch",
        "--timeout",
        "6",
    ]
    watcher = threading.Thread(target=lambda: result.update(code=status.main(argv, console=out)))
    watcher.start()
    time.sleep(2)
    custom: Any = client.CustomObjectsApi(kube)
    patch = {"status": {"phase": "Running", "membership": {"epoch": 5, "activeRanks": [0, 1, 2, 3]}}}
    custom.patch_namespaced_custom_object_status(G, V, namespace, P, "demo", json.loads(json.dumps(patch)))
    watcher.join(timeout=20)
    assert not watcher.is_alive()
    assert result["code"] == 0
    text = out.export_text()
    assert "phase Degraded  epoch 3" in text  # the first render
    assert "phase Running  epoch 5  ranks 4/4" in text  # the live update
