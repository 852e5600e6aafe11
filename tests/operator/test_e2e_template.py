"""End to end: `spec.template` is a full PodTemplateSpec (issue #15).

The real API server validates the CR against Kubernetes' own PodSpec schema and the member pods against pod
validation and admission; the tests read the pods back from it. One group runs on the process node (a sidecar,
an shm emptyDir, template env, labels and annotations, a priority class): a sidecar's exit leaves the member
serving, and a replacement carries the template like the first pod, with the operator's fields on top. Another
carries every field a real GPU deployment needs (RDMA resources, host network, a PVC, DRA claims, its own
scheduler, ...); nothing on this machine can run it, so its pods are checked as the API server stores them.

Before the fix (the operator of 8a19d76): the CR was refused (``unknown field "spec.template.spec"``); with
the sidecar, the old observer took the sidecar's exit for the member's (tests/operator/test_core_small.py,
``test_only_the_engine_container_decides_whether_a_member_runs``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Eep, Operators, cluster_manifest
from kubernetes import client
from test_e2e_recovery import wait_running

from eep_contract.v1alpha1 import OWNED_ENV, Labels
from eep_testkit import crs

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

SIDECAR_EXIT_S = 6
SIDECAR = f"import sys, time; time.sleep({SIDECAR_EXIT_S}); sys.exit(3)"


def differences(want: Any, got: Any, path: str = "") -> list[str]:
    """Where `got` (an object the API server stored) lacks what `want` (what the template said) holds. Dicts
    are compared key by key (the server adds defaults), lists item by item as a prefix, scalars by their text
    (a quantity `8` comes back as "8")."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{path}: {got!r} is not an object"]
        return [d for k, v in want.items() for d in differences(v, got.get(k), f"{path}.{k}")]
    if isinstance(want, list):
        # Admission appends (the service-account token volume, the not-ready/unreachable tolerations).
        if not isinstance(got, list) or len(got) < len(want):
            return [f"{path}: {got!r} lacks {want!r}"]
        return [
            d
            for i, (w, g) in enumerate(zip(want, got, strict=False))
            for d in differences(w, g, f"{path}[{i}]")
        ]
    return [] if str(want) == str(got) else [f"{path}: {got!r} != {want!r}"]


def engine_of(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "engine")


@pytest.fixture
def priority_class(eep: Eep) -> Iterator[str]:
    name = f"eep-test-{eep.ns}"
    scheduling = client.SchedulingV1Api(eep.core.api_client)
    scheduling.create_priority_class(
        client.V1PriorityClass(metadata=client.V1ObjectMeta(name=name), value=1000)
    )
    yield name
    scheduling.delete_priority_class(name)


def test_a_sidecar_group_serves_and_its_replacement_carries_the_template(
    eep: Eep, operators: Operators, wait_for: Any, priority_class: str
) -> None:
    pod_fields: dict[str, Any] = {
        "priorityClassName": priority_class,
        "terminationGracePeriodSeconds": 1,
        "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}],
        "tolerations": [{"key": "example.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
             "labelSelector": {"matchLabels": {"team": "llm"}}}
        ],
    }  # fmt: skip
    body = cluster_manifest("eep", eep.ns, 2)
    tpl = body["spec"]["template"]
    tpl["metadata"] = {"labels": {"team": "llm"}, "annotations": {"example.com/owner": "platform"}}
    tpl["spec"].update(pod_fields)
    engine = crs.engine_container(body)
    engine["env"] = [{"name": "TEAM_SETTING", "value": "on"}]
    engine["volumeMounts"] = [{"name": "shm", "mountPath": "/dev/shm-test"}]
    tpl["spec"]["containers"].append(
        {"name": "log-shipper", "image": "x", "command": ["python3", "-c", SIDECAR]}
    )
    eep.custom.create_namespaced_custom_object("elasticep.io", "v1alpha1", eep.ns, "elasticepclusters", body)
    operators.start()
    name = "eep"
    wait_running(eep, wait_for, name, operators, timeout=90)
    first = eep.pod(name, 1)
    assert first is not None
    uids = {i: eep.pod(name, i)["metadata"]["uid"] for i in (0, 1)}  # type: ignore[index]
    restarts = eep.status(name).get("totalRestarts", 0)

    # The sidecars exit (code 3) a few seconds after start; the engines keep serving: no member is replaced.
    time.sleep(SIDECAR_EXIT_S + 4)
    for i in (0, 1):
        pod = eep.pod(name, i)
        assert pod is not None and pod["metadata"]["uid"] == uids[i], f"member {i} was replaced"
        sidecar = next(s for s in pod["status"]["containerStatuses"] if s["name"] == "log-shipper")
        assert (sidecar["state"].get("terminated") or {}).get("exitCode") == 3, sidecar
    assert eep.status(name).get("totalRestarts", 0) == restarts and eep.running(name)

    old = eep.exit_member(name, 1)
    wait_for(
        lambda: eep.running(name) and eep.member(name, 1).get("podUid") not in (None, old),
        90,
        lambda: eep.describe(name) + operators.logs(),
    )
    replacement = eep.pod(name, 1)
    assert replacement is not None
    for pod in (first, replacement):
        assert not differences(tpl["spec"] | {"containers": None}, pod["spec"] | {"containers": None})
        assert not differences(pod_fields, pod["spec"]), differences(pod_fields, pod["spec"])
        assert pod["metadata"]["labels"]["team"] == "llm"
        assert pod["metadata"]["annotations"]["example.com/owner"] == "platform"
        assert [c["name"] for c in pod["spec"]["containers"]] == ["engine", "log-shipper"]
        engine = engine_of(pod)
        assert any(m["mountPath"] == "/dev/shm-test" for m in engine["volumeMounts"])
        env = {e["name"]: e for e in engine["env"]}
        assert env["TEAM_SETTING"]["value"] == "on" and set(OWNED_ENV) <= set(env)
        assert pod["spec"]["priority"] == 1000 and pod["spec"]["restartPolicy"] == "Never"
    assert replacement["metadata"]["annotations"]["elasticep.io/join"] == "true"
    assert "--rejoin" in engine_of(replacement)["args"] and "--rejoin" not in engine_of(first)["args"]
    assert replacement["metadata"]["labels"][Labels.MEMBER] == "1"


GPU_TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "llm"}, "annotations": {"example.com/owner": "platform"}},
    "spec": {
        "schedulerName": "no-such-scheduler",  # nothing here can run it: the pods stay unscheduled
        "serviceAccountName": "default",
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "imagePullSecrets": [{"name": "registry"}],
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H200"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "resourceClaims": [{"name": "nvlink", "resourceClaimTemplateName": "compute-domain-channel"}],
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": {"team": "llm"}}}
        ],
        "initContainers": [
            {"name": "weights-cache", "image": "busybox", "command": ["sh", "-c", "true"],
             "volumeMounts": [{"name": "weights", "mountPath": "/models"}]},
            {"name": "metrics-agent", "image": "agent", "restartPolicy": "Always"},
        ],
        "containers": [
            {
                "name": "engine",
                "command": ["/bin/sh", "-c", 'exec "$@"', "--"],
                "resources": {
                    "limits": {"nvidia.com/gpu": 8, "rdma/rdma_shared_device_a": 1},
                    "requests": {"cpu": "64", "memory": "1500Gi", "nvidia.com/gpu": 8},
                    "claims": [{"name": "nvlink"}],
                },
                "securityContext": {"capabilities": {"add": ["IPC_LOCK"]}},
                "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
                "volumeMounts": [{"name": "weights", "mountPath": "/models", "readOnly": True},
                                 {"name": "shm", "mountPath": "/dev/shm"}],
                "livenessProbe": {"httpGet": {"path": "/health", "port": 30000}, "periodSeconds": 30},
                "startupProbe": {"httpGet": {"path": "/health", "port": 30000}, "failureThreshold": 120},
            },
            {"name": "log-shipper", "image": "fluent-bit", "args": ["-c", "/fluent-bit/etc/fb.conf"]},
        ],
        "volumes": [
            {"name": "weights", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}},
        ],
    },
}  # fmt: skip


def test_every_field_of_a_gpu_template_is_on_the_pods(
    eep: Eep, operators: Operators, wait_for: Any, priority_class: str
) -> None:
    template = GPU_TEMPLATE | {"spec": GPU_TEMPLATE["spec"] | {"priorityClassName": priority_class}}
    cr = {
        "apiVersion": "elasticep.io/v1alpha1",
        "kind": "ElasticEPCluster",
        "metadata": {"name": "gpu"},
        "spec": {"image": "registry/engine:1", "nodes": 2, "ranksPerNode": 8, "template": template},
    }
    eep.custom.create_namespaced_custom_object("elasticep.io", "v1alpha1", eep.ns, "elasticepclusters", cr)
    operators.start()
    wait_for(lambda: len(eep.pods("gpu")) == 2, 60, lambda: eep.describe("gpu") + operators.logs())
    for pod in eep.pods("gpu"):
        i = int(pod["metadata"]["labels"][Labels.MEMBER])
        want_spec = template["spec"] | {"containers": None}
        got_spec = pod["spec"] | {"containers": None}
        assert not differences(want_spec, got_spec), differences(want_spec, got_spec)
        want_engine, sidecar = (dict(c) for c in template["spec"]["containers"])
        engine = engine_of(pod)
        own = {"command", "env"}
        assert not differences({k: v for k, v in want_engine.items() if k not in own}, engine)
        assert engine["command"] == want_engine["command"] and engine["args"][:2] == ["eep-worker", "serve"]
        assert engine["image"] == "registry/engine:1"
        names = [e["name"] for e in engine["env"]]
        assert set(OWNED_ENV) <= set(names) and names[-1] == "HF_TOKEN", names
        assert engine["readinessProbe"]["httpGet"]["path"] == "/ready", "the default readiness probe is added"
        assert not differences(sidecar, pod["spec"]["containers"][1])
        assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == (f"gpu-{i}", "gpu")
        assert pod["metadata"]["labels"]["team"] == "llm" and pod["metadata"]["labels"][Labels.MEMBER] == str(
            i
        )
        assert pod["spec"]["priority"] == 1000 and "nodeName" not in pod["spec"]
