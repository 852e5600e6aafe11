"""The chart in a namespace that enforces Pod Security `restricted`, as hardened distributions set it up.

The local API server runs the admission plugins of a hardened distribution
(`eep_localcluster.controlplane.ADMISSION_PLUGINS`, PodSecurity among them), so the namespace label
`pod-security.kubernetes.io/enforce=restricted` makes the API server refuse any pod that does not run as
non-root with seccomp RuntimeDefault, no privilege escalation and every capability dropped. The operator's
own pod has to pass; member pods of a GPU cluster need `baseline` or `privileged` (docs/install.md).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from eep_testkit.tools import OperatorPorts, Tools

from .conftest import Render

pytestmark = pytest.mark.cluster

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
}


@pytest.fixture
def restricted_namespace(kube: Any, namespace: str) -> str:
    """The test's namespace, labelled to enforce Pod Security `restricted`."""
    client.CoreV1Api(kube).patch_namespace(namespace, {"metadata": {"labels": RESTRICTED}})
    return namespace


@pytest.fixture
def tools(local_cluster: Any, restricted_namespace: str) -> Iterator[Tools]:
    t = local_cluster.tools
    yield t
    t.run("helm", ["uninstall", restricted_namespace, "-n", restricted_namespace], timeout_s=120, check=False)


def operator_pod(render: Render, namespace: str) -> dict[str, Any]:
    """The Pod the chart's Deployment asks for, as the ReplicaSet controller would create it (run as the
    namespace's default ServiceAccount)."""
    deployment = next(d for d in render(namespace=namespace) if d["kind"] == "Deployment")
    template = deployment["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "operator-", "labels": template["metadata"]["labels"]},
        # the chart's ServiceAccount does not exist before the install; the ServiceAccount plugin checks it
        "spec": {**template["spec"], "serviceAccountName": "default"},
    }


def dry_run_refusal(kube: Any, namespace: str, pod: dict[str, Any]) -> str:
    """The API server's refusal of a server-side dry-run create of `pod`, or "" when it would admit it."""
    core: Any = client.CoreV1Api(kube)  # bodies are plain dicts, which the client accepts
    try:
        core.create_namespaced_pod(namespace, pod, dry_run="All")
    except ApiException as e:
        return f"{e.status} {json.loads(e.body or '{}').get('message', e.body)}"
    return ""


def test_the_operator_pod_is_admitted_where_restricted_is_enforced(
    kube: Any, restricted_namespace: str, render: Render, tools: Tools, wait_for: Callable[..., Any]
) -> None:
    ns = restricted_namespace
    pod = operator_pod(render, ns)
    assert dry_run_refusal(kube, ns, pod) == ""

    # The same pod without the chart's security contexts is refused: the namespace really enforces.
    bare = copy.deepcopy(pod)
    bare["spec"].pop("securityContext")
    for c in bare["spec"]["containers"]:
        c.pop("securityContext")
    refusal = dry_run_refusal(kube, ns, bare)
    assert refusal.startswith("403 ") and 'violates PodSecurity "restricted:latest"' in refusal, refusal
    for check in ("allowPrivilegeEscalation != false", "unrestricted capabilities", "runAsNonRoot != true"):
        assert check in refusal, refusal

    # The real install: the ReplicaSet's pod passes admission and the operator gets Ready.
    tools.install_chart(ns, ns, "watch.mode=namespaces", *OperatorPorts.free().sets(), wait_s=120)
    core: Any = client.CoreV1Api(kube)

    def ready() -> bool:
        pods = core.list_namespaced_pod(ns, label_selector=f"app.kubernetes.io/instance={ns}").items
        return any(
            c.type == "Ready" and c.status == "True" for p in pods for c in (p.status.conditions or [])
        )

    def describe() -> str:
        events = core.list_namespaced_event(ns).items
        return "\n".join(f"{e.involved_object.name} {e.reason}: {e.message}" for e in events)

    wait_for(ready, 90, describe)
    assert not [e for e in core.list_namespaced_event(ns).items if e.reason == "FailedCreate"], describe()


def test_the_operator_may_block_deletion_of_what_it_owns(
    kube: Any, restricted_namespace: str, tools: Tools
) -> None:
    """OwnerReferencesPermissionEnforcement (on by default in OpenShift) refuses an ownerReference with
    `blockOwnerDeletion: true`, which the operator puts on everything it owns (member pods, Service,
    PodDisruptionBudget), unless the creator may update the owner's `finalizers` subresource.

    Before the fix: "AssertionError: denied: None". With that plugin on, the chart's operator never created a
    thing: 'services "demo" is forbidden: cannot set blockOwnerDeletion if an ownerReference refers to a
    resource you can't set finalizers on', retried every second."""
    ns = restricted_namespace
    tools.install_chart(ns, ns, "watch.mode=namespaces", "replicaCount=0", wait_s=60)
    authz: Any = client.AuthorizationV1Api(kube)
    review = authz.create_subject_access_review(
        {
            "spec": {
                "user": f"system:serviceaccount:{ns}:{ns}-elastic-ep-operator",
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}"],
                "resourceAttributes": {
                    "group": "elasticep.io",
                    "resource": "elasticepclusters",
                    "subresource": "finalizers",
                    "verb": "update",
                    "namespace": ns,
                    "name": "any",
                },
            }
        }
    )
    assert review.status.allowed, f"denied: {review.status.reason!r}"
