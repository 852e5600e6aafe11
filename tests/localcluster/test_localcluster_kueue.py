"""Kueue v0.17.0 (`make kueue`) on the local control plane: plain-pod groups are admitted as a gang.

A group whose requests exceed the ClusterQueue's quota starts no member (every pod keeps Kueue's scheduling
gate, none is bound); one within quota starts all. Then what the operator's member replacement (DELETE,
wait until gone, CREATE the same name) meets under Kueue, pinned so that a Kueue upgrade that changes it
fails here: the deleted pod is held by Kueue's finalizer while its group's Workload stays admitted; once the
finalizer is gone, a replacement with the group's labels is ungated at once (the Workload's quota was never
released), and a whole-group restart under a new group name is admitted as a gang once the old pods are gone
(a group marked `kueue.x-k8s.io/retriable-in-group: "false"` lets them go by itself).

Kueue runs once for this module, only for namespaces labelled `eep.local/kueue=enabled`; the ClusterQueue of
each test allows 30m cpu and every pod asks for 10m, so a group of 3 fits and a group of 4 does not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from eep_localcluster.kueue import MANAGED_LABEL, MANAGED_VALUE, webhook_configurations
from eep_testkit import kueue as tk

SETTLE_S = 5.0
"""How long a state that should last (a gated group, a pod held by the finalizer) is watched. Kueue acts on
a group within 0.2-0.3 s here (admission, ungating, finalizing; measured 2026-11-30)."""


def test_webhooks_are_local_and_pods_only_in_managed_namespaces() -> None:
    """Kueue's own manifests made local: every webhook calls 127.0.0.1 with our CA; of the workload kinds
    only the pod webhooks stay, and only for labelled namespaces (other tests' pods never reach Kueue)."""
    manifests = tk.kueue_home() / "webhook" / "manifests.yaml"
    if not manifests.exists():
        pytest.skip("Kueue not built: run `make kueue`")
    configs = dict(webhook_configurations(manifests.read_text(), 4443, b"CA"))
    hooks = {h["name"]: h for c in configs.values() for h in c["webhooks"]}
    assert {"mpod.kb.io", "vpod.kb.io", "mworkload.kb.io", "vclusterqueue.kb.io"} <= set(hooks)
    assert not {"mjob.kb.io", "mdeployment.kb.io", "vstatefulset.kb.io", "mjobset.kb.io"} & set(hooks)
    for name, hook in hooks.items():
        assert hook["clientConfig"]["url"].startswith("https://127.0.0.1:4443/"), name
        assert hook["clientConfig"]["caBundle"] == "Q0E=", name
    for name in ("mpod.kb.io", "vpod.kb.io"):
        assert hooks[name]["namespaceSelector"] == {"matchLabels": {MANAGED_LABEL: MANAGED_VALUE}}


@pytest.fixture
def queue(kube: Any, namespace: str, kueue_up: None) -> Iterator[tk.Queue]:
    tk.enable_namespace(kube, namespace)
    q = tk.create_queue(kube, namespace, {"cpu": "30m"})
    try:
        yield q
    finally:
        # Kueue's finalizer would keep the namespace's pods (and the namespace) after Kueue stops.
        _core(kube).delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
        tk.strip_finalizers(kube, namespace)
        tk.delete_queue(kube, q)


def _core(kube: Any) -> Any:
    return client.CoreV1Api(kube)


def _pod(kube: Any, ns: str, name: str) -> Any:
    return _core(kube).read_namespaced_pod(name, ns)


def _gated(pod: Any) -> bool:
    return any(g.name == tk.GATE for g in pod.spec.scheduling_gates or [])


def _absent(read: Callable[[], object]) -> bool:
    """``read()`` answered 404: the object is gone (other API errors propagate)."""
    try:
        read()
    except client.ApiException as e:
        return bool(e.status == 404)
    return False


def _gone(kube: Any, ns: str, name: str) -> bool:
    return _absent(lambda: _pod(kube, ns, name))


def _workload(kube: Any, ns: str, name: str) -> dict[str, Any]:
    custom: Any = client.CustomObjectsApi(kube)
    wl: dict[str, Any] = custom.get_namespaced_custom_object(tk.GROUP, tk.VERSION, ns, "workloads", name)
    return wl


def _condition(wl: dict[str, Any], kind: str) -> str | None:
    for c in wl.get("status", {}).get("conditions", []):
        if c["type"] == kind:
            return str(c["status"])
    return None


def _start_group(
    kube: Any, queue: tk.Queue, group: str, names: list[str], annotations: dict[str, str] | None = None
) -> None:
    core = _core(kube)
    for name in names:
        body = tk.group_pod(name, queue=queue.local_queue, group=group, total=len(names))
        body["metadata"]["annotations"].update(annotations or {})
        core.create_namespaced_pod(queue.namespace, body)


def _running(kube: Any, ns: str, names: list[str]) -> bool:
    return all(_pod(kube, ns, n).status.phase == "Running" for n in names)


@pytest.mark.cluster
def test_group_over_quota_starts_no_member(kube: Any, queue: tk.Queue, wait_for: Any) -> None:
    ns = queue.namespace
    names = [f"big-{i}" for i in range(4)]  # 4 x 10m > 30m
    _start_group(kube, queue, "big", names)
    wl = wait_for(lambda: _condition(_workload(kube, ns, "big"), "QuotaReserved") == "False" or None, 60)
    assert wl
    time.sleep(SETTLE_S)
    pods = [_pod(kube, ns, n) for n in names]
    assert all(_gated(p) for p in pods), [(p.metadata.name, p.spec.scheduling_gates) for p in pods]
    assert [p.spec.node_name for p in pods] == [None] * 4
    assert [p.status.phase for p in pods] == ["Pending"] * 4
    assert _condition(_workload(kube, ns, "big"), "Admitted") != "True"


@pytest.mark.cluster
def test_group_within_quota_runs_every_member(kube: Any, queue: tk.Queue, wait_for: Any) -> None:
    ns = queue.namespace
    names = [f"fit-{i}" for i in range(3)]  # 3 x 10m = 30m
    _start_group(kube, queue, "fit", names)
    wait_for(lambda: _running(kube, ns, names), 60)
    assert _condition(_workload(kube, ns, "fit"), "Admitted") == "True"
    assert not any(_gated(_pod(kube, ns, n)) for n in names)


def _gone_workload(kube: Any, ns: str, name: str) -> bool:
    return _absent(lambda: _workload(kube, ns, name))


def _delete_and_see_held(kube: Any, ns: str, names: list[str], wait_for: Any) -> None:
    """DELETE `names` as the operator does: each ends Failed and stays Terminating under Kueue's finalizer."""
    core = _core(kube)
    for name in names:
        core.delete_namespaced_pod(name, ns)
    wait_for(lambda: all(_pod(kube, ns, n).status.phase == "Failed" for n in names), 30)
    time.sleep(SETTLE_S)
    for name in names:
        held = _pod(kube, ns, name)
        assert held.metadata.deletion_timestamp is not None, name
        assert held.metadata.finalizers == [tk.FINALIZER], name


@pytest.mark.cluster
@pytest.mark.parametrize("labelled", [True, False], ids=["group-labels", "no-kueue-labels"])
def test_member_replacement_by_name(kube: Any, queue: tk.Queue, wait_for: Any, labelled: bool) -> None:
    """The operator's replacement of one member of an admitted group. DELETE leaves the pod Terminating under
    `kueue.x-k8s.io/managed`: Kueue finalizes a group's inactive pod only once a replacement exists, and none
    can exist under the same name. The Workload stays admitted, its quota held, WaitingForReplacementPods
    True. With the finalizer removed the pod goes; a replacement with the group's labels is ungated by the
    still-admitted Workload within a second, one without Kueue's labels is left alone (no gate, no
    finalizer) and the Workload keeps waiting for a replacement."""
    ns = queue.namespace
    names = ["m-0", "m-1", "m-2"]
    _start_group(kube, queue, "g1", names)
    wait_for(lambda: _running(kube, ns, names), 60)
    _delete_and_see_held(kube, ns, ["m-1"], wait_for)
    wl = _workload(kube, ns, "g1")
    assert _condition(wl, "Admitted") == "True"
    assert _condition(wl, "Finished") is None
    assert _condition(wl, "WaitingForReplacementPods") == "True"

    assert tk.strip_finalizers(kube, ns, ["m-1"]) == ["m-1"]
    wait_for(lambda: _gone(kube, ns, "m-1"), 30)
    if labelled:
        body = tk.group_pod("m-1", queue=queue.local_queue, group="g1", total=3)
    else:
        body = tk.group_pod("m-1", queue=None, group=None, total=None)
    started = time.monotonic()
    created = _core(kube).create_namespaced_pod(ns, body)
    assert _gated(created) is labelled
    assert (created.metadata.finalizers == [tk.FINALIZER]) is labelled
    wait_for(lambda: _pod(kube, ns, "m-1").status.phase == "Running", 30)
    assert time.monotonic() - started < 10
    waiting = "False" if labelled else "True"
    wait_for(lambda: _condition(_workload(kube, ns, "g1"), "WaitingForReplacementPods") == waiting, 30)
    assert _condition(_workload(kube, ns, "g1"), "Admitted") == "True"


@pytest.mark.cluster
def test_whole_group_restart_waits_for_the_old_pods(kube: Any, queue: tk.Queue, wait_for: Any) -> None:
    """Every member of a (retriable) group deleted: each is held by the finalizer as one member is, and the
    old Workload stays admitted, holding the quota. Once their finalizers are removed the old Workload goes
    with its last owner pod (garbage collection) and a new group under a new group name, same pod names,
    is admitted whole."""
    ns = queue.namespace
    names = ["m-0", "m-1", "m-2"]
    _start_group(kube, queue, "g1", names)
    wait_for(lambda: _running(kube, ns, names), 60)
    _delete_and_see_held(kube, ns, names, wait_for)
    assert _condition(_workload(kube, ns, "g1"), "Admitted") == "True"
    tk.strip_finalizers(kube, ns)
    wait_for(lambda: all(_gone(kube, ns, n) for n in names), 30)
    wait_for(lambda: _gone_workload(kube, ns, "g1"), 30)
    _start_group(kube, queue, "g2", names)
    wait_for(lambda: _running(kube, ns, names), 60)
    assert _condition(_workload(kube, ns, "g2"), "Admitted") == "True"


@pytest.mark.cluster
def test_unretriable_group_goes_when_every_member_is_deleted(
    kube: Any, queue: tk.Queue, wait_for: Any
) -> None:
    """With `kueue.x-k8s.io/retriable-in-group: "false"` a group with no active pod left is finished: Kueue
    drops the finalizers itself, the pods go, the Workload goes and frees the quota, and the next group is
    admitted. (One deleted member of such a group is still held, as in a retriable one.)"""
    ns = queue.namespace
    names = ["m-0", "m-1", "m-2"]
    unretriable = {"kueue.x-k8s.io/retriable-in-group": "false"}
    _start_group(kube, queue, "g1", names, unretriable)
    wait_for(lambda: _running(kube, ns, names), 60)
    core = _core(kube)
    for name in names:
        core.delete_namespaced_pod(name, ns)
    wait_for(lambda: all(_gone(kube, ns, n) for n in names), 30)
    wait_for(lambda: _gone_workload(kube, ns, "g1"), 30)
    _start_group(kube, queue, "g2", names, unretriable)
    wait_for(lambda: _running(kube, ns, names), 60)
