"""`kubectl eep` on the local control plane through the real kubectl (kubectl finds `kubectl-eep` on PATH, as
it would after `pip install eep-operator`), and `kubectl get eep -o wide` showing the wide-only columns."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from eep_operator.core.actions import EmitEvent
from eep_operator.io.events import ClusterRef, render_event
from eep_testkit import crs

pytestmark = pytest.mark.cluster
G, V, P = "elasticep.io", "v1alpha1", "elasticepclusters"


def plugin_dir() -> Path:
    """The folder with the `kubectl-eep` console script of this environment's eep-operator."""
    found = shutil.which("kubectl-eep", path=str(Path(sys.executable).parent)) or shutil.which("kubectl-eep")
    if found is None:
        pytest.skip("kubectl-eep not installed: pip install -e operator")
    return Path(found).parent


def kubectl(cluster: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The real kubectl with the plugin's folder first on PATH and the cluster's kubeconfig in $KUBECONFIG
    (kubectl passes its environment on to a plugin, not its own flags)."""
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "PATH": f"{plugin_dir()}{os.pathsep}{os.environ.get('PATH', '')}",
        "COLUMNS": "200",
    }
    result = subprocess.run(
        [str(cluster.kubectl_path), *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    if check:
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}{result.stdout}"
    return result


def create_cluster(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    custom: Any = client.CustomObjectsApi(kube)
    created = custom.create_namespaced_custom_object(
        G, V, namespace, P, crs.cluster(name, nodes=3, ranks_per_node=2, image="img")
    )
    member = {"firstRank": 0, "rankCount": 2, "state": "Healthy"}
    members = [
        {**member, "index": 0, "podName": f"{name}-0"},
        {
            **member,
            "index": 1,
            "podName": f"{name}-1",
            "firstRank": 2,
            "state": "Failed",
            "restarts": 1,
            "lastExit": {"exitCode": 137, "reason": "Error"},
        },
        {**member, "index": 2, "podName": f"{name}-2", "firstRank": 4, "state": "Joining"},
    ]
    status = {
        "phase": "Degraded",
        "worldSize": 6,
        "activeRankCount": 2,
        "failedMemberCount": 1,
        "joiningRankCount": 2,
        "totalRestarts": 3,
        "lastRecoverySeconds": 12.5,
        "membership": {"epoch": 7, "activeRanks": [0, 1], "joiningRanks": [4, 5]},
        "members": members,
    }
    custom.patch_namespaced_custom_object_status(G, V, namespace, P, name, {"status": status})
    return dict(created)


def post_event(kube: Any, cr: dict[str, Any], reason: str, message: str, member: int | None) -> None:
    """An Event as the operator posts it (`eep_operator.io.events.render_event`)."""
    meta = cr["metadata"]
    ref = ClusterRef(meta["namespace"], meta["name"], meta["uid"])
    event = EmitEvent(type="Warning", reason=reason, message=message, member=member, epoch=7)
    body = render_event(ref, event, datetime.now(UTC))
    client.CoreV1Api(kube).create_namespaced_event(meta["namespace"], body)


def test_kubectl_finds_the_plugin(local_cluster: Any) -> None:
    listed = kubectl(local_cluster, "plugin", "list", check=False)
    assert str(plugin_dir() / "kubectl-eep") in listed.stdout, listed.stdout + listed.stderr
    assert "usage: kubectl eep" in kubectl(local_cluster, "eep", "--help").stdout


def test_kubectl_eep_status_prints_the_member_map(local_cluster: Any, kube: Any, namespace: str) -> None:
    create_cluster(kube, namespace, "demo")
    out = kubectl(local_cluster, "eep", "status", "demo", "-n", namespace).stdout
    assert f"{namespace}/demo  phase Degraded  epoch 7  ranks 2/6  joining 4,5" in out
    assert "137 Error" in out and "Joining" in out


def test_kubectl_eep_status_of_a_missing_cluster(local_cluster: Any, namespace: str) -> None:
    result = kubectl(local_cluster, "eep", "status", "nope", "-n", namespace, check=False)
    assert result.returncode == 1
    assert f"ElasticEPCluster {namespace}/nope not found" in result.stderr


def test_kubectl_eep_watch_stops_at_its_timeout(local_cluster: Any, kube: Any, namespace: str) -> None:
    create_cluster(kube, namespace, "demo")
    out = kubectl(local_cluster, "eep", "watch", "demo", "-n", namespace, "--timeout", "2").stdout
    assert f"{namespace}/demo  phase Degraded" in out


def test_kubectl_eep_events_lists_the_clusters_events_newest_last(
    local_cluster: Any, kube: Any, namespace: str
) -> None:
    cr = create_cluster(kube, namespace, "demo")
    other = create_cluster(kube, namespace, "other")
    post_event(kube, cr, "MemberFailed", "pod demo-1 exited 137", 1)
    post_event(kube, other, "NotMine", "about another cluster", None)
    post_event(kube, cr, "MembershipChanged", "epoch 7: 2/6 ranks active", None)
    out = kubectl(local_cluster, "eep", "events", "demo", "-n", namespace).stdout
    assert "NotMine" not in out
    assert out.index("MemberFailed") < out.index("MembershipChanged"), out
    assert "[member 1] pod demo-1 exited 137" in out and "Warning" in out
    empty = kubectl(local_cluster, "eep", "events", "other", "-n", namespace).stdout
    assert "NotMine" in empty and "MemberFailed" not in empty
    missing = kubectl(local_cluster, "eep", "events", "nope", "-n", namespace, check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_get_wide_shows_failed_joining_and_last_recovery(
    local_cluster: Any, kube: Any, namespace: str
) -> None:
    create_cluster(kube, namespace, "demo")
    narrow = kubectl(local_cluster, "get", "eep", "-n", namespace).stdout.splitlines()
    assert narrow[0].split() == ["NAME", "PHASE", "ACTIVE", "WORLD", "EPOCH", "RESTARTS", "AGE"]
    wide = kubectl(local_cluster, "get", "eep", "-n", namespace, "-o", "wide").stdout.splitlines()
    header = wide[0].split()
    assert header == [
        "NAME", "PHASE", "ACTIVE", "WORLD", "EPOCH", "RESTARTS", "FAILED", "JOINING", "LAST-RECOVERY", "AGE"
    ]  # fmt: skip
    row = dict(zip(header, wide[1].split(), strict=True))
    assert row["NAME"] == "demo" and row["PHASE"] == "Degraded"
    assert (row["FAILED"], row["JOINING"], row["LAST-RECOVERY"]) == ("1", "2", "12.5")
