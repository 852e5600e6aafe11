"""Kueue for a test cluster: start it on the local control plane, hand it a namespace, give that namespace a
queue with a quota, and build the plain pods of a Kueue pod group.

Who uses it: tests/localcluster/test_localcluster_kueue.py (and the operator's gang tests). Kueue itself is
`eep_localcluster.kueue` (built by `make kueue`); this module adds the objects a test needs.

Quota is on `cpu` (milli-cores): the process nodes advertise 8 cpu each, so pods that request a few
milli-cores always fit a node once Kueue lets them through, and only the ClusterQueue's quota decides. A
fake extended resource would need node capacity for it, which the process nodes do not advertise.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from eep_contract.v1alpha1 import Kueue
from eep_localcluster import kueue as localkueue
from eep_localcluster.__main__ import default_kueue_home
from eep_localcluster.layout import Layout

__all__ = [
    "GATE",
    "GROUP_LABEL",
    "GROUP_TOTAL_ANNOTATION",
    "QUEUE_LABEL",
    "Queue",
    "create_queue",
    "delete_queue",
    "enable_namespace",
    "group_pod",
    "kueue_built",
    "kueue_home",
    "start_kueue",
    "stop_kueue",
    "strip_finalizers",
]

QUEUE_LABEL = Kueue.QUEUE_LABEL
GROUP_LABEL = Kueue.POD_GROUP_LABEL
GROUP_TOTAL_ANNOTATION = Kueue.POD_GROUP_TOTAL_ANNOTATION
GATE = localkueue.GATE
FINALIZER = Kueue.FINALIZER
"""The finalizer Kueue's pod webhook puts on every pod it gates."""
GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
FLAVOR = "eep-default"
"""The one ResourceFlavor (cluster-scoped, no node labels): every test's ClusterQueue uses it."""


@dataclass(frozen=True)
class Queue:
    """A namespace's LocalQueue and the ClusterQueue (of the same name as the namespace) behind it."""

    namespace: str
    local_queue: str
    cluster_queue: str


def kueue_home() -> Path:
    """`make kueue`'s output: bin/kueue, crds/, webhook/."""
    return default_kueue_home()


def kueue_built() -> bool:
    """True when `make kueue` has built the manager."""
    return (default_kueue_home() / "bin" / "kueue").exists()


def start_kueue(state: Path) -> localkueue.KueueInfo:
    """Start (or reuse) Kueue on the local cluster in `state`. Raises `eep_localcluster.kueue.KueueError`."""
    return localkueue.start(Layout(state), localkueue.KueueSettings(home=default_kueue_home()))


def stop_kueue(state: Path) -> None:
    localkueue.stop(Layout(state))


def enable_namespace(api: Any, namespace: str, timeout_s: float = 60.0) -> None:
    """Label `namespace` as Kueue's and wait until the API server calls Kueue's pod webhook for it.
    Raises KueueError after `timeout_s`."""
    core: Any = client.CoreV1Api(api)
    core.patch_namespace(
        namespace, {"metadata": {"labels": {localkueue.MANAGED_LABEL: localkueue.MANAGED_VALUE}}}
    )
    localkueue.wait_pod_webhook(api, namespace, timeout_s)


def _create(api: Any, plural: str, body: dict[str, Any], namespace: str | None = None) -> None:
    custom: Any = client.CustomObjectsApi(api)
    try:
        if namespace is None:
            custom.create_cluster_custom_object(GROUP, VERSION, plural, body)
        else:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
    except client.ApiException as e:
        if e.status != 409:
            raise


def create_queue(api: Any, namespace: str, quota: Mapping[str, str], name: str = "main") -> Queue:
    """A ResourceFlavor (shared), a ClusterQueue named after `namespace` that admits only its workloads with
    `quota` (resource -> nominal quota, e.g. {"cpu": "30m"}; no borrowing, no preemption), and a LocalQueue
    `name` in `namespace`. Objects that exist are kept. Raises ApiException."""
    flavor = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}}
    _create(api, "resourceflavors", flavor)
    resources = [{"name": r, "nominalQuota": q} for r, q in quota.items()]
    cq = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ClusterQueue",
        "metadata": {"name": namespace},
        "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "resourceGroups": [
                {"coveredResources": list(quota), "flavors": [{"name": FLAVOR, "resources": resources}]}
            ],
        },
    }
    _create(api, "clusterqueues", cq)
    lq = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LocalQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterQueue": namespace},
    }
    _create(api, "localqueues", lq, namespace)
    return Queue(namespace, name, namespace)


def delete_queue(api: Any, queue: Queue) -> None:
    """Delete the ClusterQueue (the LocalQueue goes with its namespace); a missing one is fine."""
    custom: Any = client.CustomObjectsApi(api)
    try:
        custom.delete_cluster_custom_object(GROUP, VERSION, "clusterqueues", queue.cluster_queue)
    except client.ApiException as e:
        if e.status != 404:
            raise


def group_pod(
    name: str,
    *,
    queue: str | None,
    group: str | None,
    total: int | None,
    cpu: str = "10m",
    command: tuple[str, ...] = ("sleep", "600"),
) -> dict[str, Any]:
    """A plain pod (restartPolicy Never) requesting `cpu`, in Kueue pod group `group` of `total` members of
    LocalQueue `queue`; None leaves that label or annotation out."""
    labels = {"app": "kueue-test"}
    annotations = {}
    if queue is not None:
        labels[QUEUE_LABEL] = queue
    if group is not None:
        labels[GROUP_LABEL] = group
    if total is not None:
        annotations[GROUP_TOTAL_ANNOTATION] = str(total)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "main",
                    "image": "stand-in",
                    "command": list(command),
                    "resources": {"requests": {"cpu": cpu}},
                }
            ],
        },
    }


def strip_finalizers(api: Any, namespace: str, names: Collection[str] | None = None) -> list[str]:
    """Remove Kueue's pod finalizer from the pods `names` of `namespace` (None: every pod, so that the
    namespace can go once Kueue is stopped); returns the names of the pods that had it, sorted."""
    core: Any = client.CoreV1Api(api)
    stripped = []
    for pod in core.list_namespaced_pod(namespace).items:
        finalizers = pod.metadata.finalizers or []
        if FINALIZER in finalizers and (names is None or pod.metadata.name in names):
            kept = [f for f in finalizers if f != FINALIZER]
            patch = [{"op": "replace", "path": "/metadata/finalizers", "value": kept}]
            try:
                core.patch_namespaced_pod(pod.metadata.name, namespace, patch)
                stripped.append(pod.metadata.name)
            except client.ApiException as e:
                if e.status != 404:
                    raise
    return sorted(stripped)
