"""End to end: gang admission by Kueue's plain-pod groups (issue #15), on the local control plane with Kueue
v0.17.0 (`make kueue`) admitting the operator's member pods.

A group whose members do not all fit the queue's quota starts none of them (all gated, none bound) until the
quota fits all; one that fits starts all. A replacement joins its group's admitted Workload and does not wait
behind the gang; a whole-group restart forms a new group, admitted as a gang again.

Before the fix (the operator of 8a19d76): the CR with a `template.spec` was refused. Without the pod-group
label (measured with it turned off in `planner._create`) Kueue admits each pod alone and a partial group
starts: `members started before the gang was admitted: ['eep-0']`. With the label but without the release of
Kueue's finalizer (turned off in `planner._remove_pod`) a replacement never comes: `PodStuckTerminating: pod
eep-1 of member 1 is Terminating since ... held by finalizers kueue.x-k8s.io/managed`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Eep, Operators, cluster_manifest

from eep_contract.v1alpha1 import Kueue
from eep_testkit import crs
from eep_testkit import kueue as tk

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

SETTLE_S = 6.0
"""How long a group that must stay gated is watched (Kueue admits or ungates within 0.2-0.3 s here)."""


@pytest.fixture
def queue(eep: Eep, kueue_up: None) -> Iterator[tk.Queue]:
    api = eep.core.api_client
    tk.enable_namespace(api, eep.ns)
    q = tk.create_queue(api, eep.ns, {"cpu": "30m"})
    try:
        yield q
    finally:
        # Kueue's finalizer would keep the namespace's pods (and the namespace) once the CR is gone.
        for cr in eep.custom.list_namespaced_custom_object(
            "elasticep.io", "v1alpha1", eep.ns, "elasticepclusters"
        )["items"]:
            eep.custom.delete_namespaced_custom_object(
                "elasticep.io", "v1alpha1", eep.ns, "elasticepclusters", cr["metadata"]["name"]
            )
        eep.core.delete_collection_namespaced_pod(eep.ns, grace_period_seconds=0)
        tk.strip_finalizers(api, eep.ns)
        tk.delete_queue(api, q)


def queued_cluster(eep: Eep, queue: tk.Queue, nodes: int, cpu: str) -> str:
    body = cluster_manifest("eep", eep.ns, nodes)
    body["spec"]["template"]["metadata"] = {"labels": {Kueue.QUEUE_LABEL: queue.local_queue}}
    crs.engine_container(body)["resources"] = {"requests": {"cpu": cpu}}
    eep.custom.create_namespaced_custom_object("elasticep.io", "v1alpha1", eep.ns, "elasticepclusters", body)
    return "eep"


def bound(pods: list[dict[str, Any]]) -> list[str]:
    return sorted(p["metadata"]["name"] for p in pods if p["spec"].get("nodeName"))


def groups(pods: list[dict[str, Any]]) -> set[str]:
    return {p["metadata"]["labels"].get(Kueue.POD_GROUP_LABEL, "") for p in pods}


def set_quota(eep: Eep, queue: tk.Queue, cpu: str) -> None:
    cq = eep.custom.get_cluster_custom_object(
        "kueue.x-k8s.io", "v1beta2", "clusterqueues", queue.cluster_queue
    )
    cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuota"] = cpu
    eep.custom.replace_cluster_custom_object(
        "kueue.x-k8s.io", "v1beta2", "clusterqueues", queue.cluster_queue, cq
    )


def test_a_group_that_does_not_fit_starts_no_member_until_all_fit(
    eep: Eep, operators: Operators, queue: tk.Queue, wait_for: Any
) -> None:
    operators.start()
    name = queued_cluster(eep, queue, nodes=3, cpu="20m")  # 60m asked, 30m in the queue
    wait_for(lambda: len(eep.pods(name)) == 3, 30, lambda: eep.describe(name) + operators.logs())
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        pods = eep.pods(name)
        assert not bound(pods), f"members started before the gang was admitted: {bound(pods)}"
        time.sleep(0.5)
    pods = eep.pods(name)
    assert len(groups(pods)) == 1 and "" not in groups(pods), groups(pods)
    assert all(p["metadata"]["annotations"][Kueue.POD_GROUP_TOTAL_ANNOTATION] == "3" for p in pods)
    assert all(
        any(g["name"] == "kueue.x-k8s.io/admission" for g in p["spec"].get("schedulingGates") or [])
        for p in pods
    )
    waiting = {m.get("waitingReason") for m in eep.status(name).get("members") or []}
    assert waiting == {"SchedulingGated"}, eep.describe(name)
    assert eep.status(name).get("totalRestarts", 0) == 0, "waiting for admission spends no budget"

    set_quota(eep, queue, "60m")  # now the whole group fits: all start
    wait_for(lambda: eep.running(name), 90, lambda: eep.describe(name) + operators.logs())


def test_a_replacement_does_not_wait_and_a_group_restart_is_a_new_gang(
    eep: Eep, operators: Operators, queue: tk.Queue, wait_for: Any
) -> None:
    operators.start()
    name = queued_cluster(eep, queue, nodes=3, cpu="10m")  # 30m: exactly the quota
    wait_for(lambda: eep.running(name), 90, lambda: eep.describe(name) + operators.logs())
    (first_group,) = groups(eep.pods(name))

    # A replacement: the old pod is held by Kueue's finalizer until the operator releases it; the same-name
    # replacement joins the admitted Workload (its quota was never released) and is ungated at once.
    old = eep.exit_member(name, 1)
    wait_for(
        lambda: eep.running(name) and eep.member(name, 1).get("podUid") not in (None, old),
        60,
        lambda: eep.describe(name) + operators.logs(),
    )
    pods = eep.pods(name)
    assert groups(pods) == {first_group}, "the replacement is in the running group"
    replacement = eep.pod(name, 1)
    assert replacement is not None and replacement["metadata"]["annotations"]["elasticep.io/join"] == "true"
    assert eep.status(name).get("groupRestarts", 0) == 0

    # A whole-group restart: every pod goes (their finalizers released) and a new group is admitted whole.
    eep.custom.patch_namespaced_custom_object(
        "elasticep.io", "v1alpha1", eep.ns, "elasticepclusters", name, {"spec": {"restartGeneration": 1}}
    )
    wait_for(
        lambda: eep.running(name) and first_group not in groups(eep.pods(name)),
        120,
        lambda: eep.describe(name) + operators.logs(),
    )
    (second_group,) = groups(eep.pods(name))
    assert second_group != first_group
    workloads = eep.custom.list_namespaced_custom_object("kueue.x-k8s.io", "v1beta2", eep.ns, "workloads")[
        "items"
    ]
    names = {w["metadata"]["name"] for w in workloads}
    assert first_group not in names and second_group in names, sorted(names)
