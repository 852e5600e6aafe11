"""`spec.template` is a full PodTemplateSpec: what reaches the member pod, what the operator overwrites,
what it merges, and what the model refuses (the CRD's CEL rules, tests/contract for the API server's side)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from eep_contract.v1alpha1 import (
    ENGINE_CONTAINER_RULES,
    OWNED_ENV,
    TEMPLATE_METADATA_RULES,
    TEMPLATE_SPEC_RULES,
    ElasticEPClusterSpec,
    Labels,
)
from eep_operator.core import podspec

# Every field issue #15 lists, in the shape a platform engineer writes them.
FULL_POD_SPEC: dict[str, Any] = {
    "containers": [
        {"name": "log-shipper", "image": "fluent-bit:3", "args": ["-c", "/etc/fb.conf"]},
        {
            "name": "engine",
            "resources": {"limits": {"nvidia.com/gpu": 8, "rdma/ib": 8}, "requests": {"cpu": "64"}},
            "securityContext": {"capabilities": {"add": ["IPC_LOCK", "SYS_RESOURCE"]}},
            "volumeMounts": [{"name": "weights", "mountPath": "/models", "readOnly": True},
                             {"name": "shm", "mountPath": "/dev/shm"}],
            "env": [{"name": "NCCL_IB_HCA", "value": "mlx5"},
                    {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
            "ports": [{"name": "metrics", "containerPort": 9400}, {"name": "http", "containerPort": 1}],
            "livenessProbe": {"httpGet": {"path": "/live", "port": 30000}, "periodSeconds": 30},
            "startupProbe": {"httpGet": {"path": "/health", "port": 30000}, "failureThreshold": 120},
        },
    ],
    "initContainers": [{"name": "warm-cache", "image": "busybox", "command": ["true"]}],
    "volumes": [
        {"name": "weights", "persistentVolumeClaim": {"claimName": "deepseek-v3-weights", "readOnly": True}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}},
    ],
    "hostNetwork": True,
    "dnsPolicy": "ClusterFirstWithHostNet",
    "imagePullSecrets": [{"name": "registry"}],
    "schedulerName": "gang-scheduler",
    "resourceClaims": [{"name": "nvlink", "resourceClaimTemplateName": "compute-domain-channel"}],
    "topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
         "labelSelector": {"matchLabels": {"app": "ds"}}}
    ],
    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H200"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "serviceAccountName": "elastic-ep-worker",
    "priorityClassName": "inference-critical",
    "terminationGracePeriodSeconds": 60,
}  # fmt: skip


def spec(template: dict[str, Any], **extra: Any) -> ElasticEPClusterSpec:
    body = {"image": "registry/engine:1", "nodes": 2, "ranksPerNode": 8, "template": template, **extra}
    return ElasticEPClusterSpec.model_validate(body)


def render(s: ElasticEPClusterSpec, index: int = 1, join: bool = False) -> dict[str, Any]:
    return podspec.render_pod(
        s, cluster="ds", namespace="prod", uid="u", index=index, join=join, epoch=3, incarnation=2
    )


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == name)


def test_every_field_of_the_template_reaches_the_pod() -> None:
    pod = render(spec({"metadata": {"labels": {"team": "llm"}}, "spec": copy.deepcopy(FULL_POD_SPEC)}))
    for key, value in FULL_POD_SPEC.items():
        if key != "containers":
            assert pod["spec"][key] == value, key
    assert [c["name"] for c in pod["spec"]["containers"]] == ["log-shipper", "engine"], "order kept"
    assert container(pod, "log-shipper") == FULL_POD_SPEC["containers"][0], "sidecars untouched"
    engine, wanted = container(pod, "engine"), FULL_POD_SPEC["containers"][1]
    for key in ("resources", "securityContext", "volumeMounts", "livenessProbe", "startupProbe"):
        assert engine[key] == wanted[key], key
    assert pod["metadata"]["labels"]["team"] == "llm"


def test_the_operator_sets_what_it_owns() -> None:
    s = spec({"spec": copy.deepcopy(FULL_POD_SPEC)}, elasticEP={"forceTCP": True})
    pod = render(s, index=1, join=True)
    engine = container(pod, "engine")
    assert engine["image"] == "registry/engine:1"
    assert engine["command"] == ["eep-worker", "serve", "--rejoin"]
    assert (pod["spec"]["restartPolicy"], pod["spec"]["hostname"], pod["spec"]["subdomain"]) == (
        "Never", "ds-1", "ds",
    )  # fmt: skip
    names = [e["name"] for e in engine["env"]]
    contract = [n for n in names if n in OWNED_ENV]
    assert sorted(contract) == sorted(OWNED_ENV), "every contract variable rendered"
    assert names.index("NCCL_IB_HCA") > max(names.index(n) for n in contract), (
        "the template's env comes after"
    )
    assert "MC_FORCE_TCP" in names and "HF_TOKEN" in names
    # Ports: the operator's http port replaces the template's port of that name; the others stay.
    assert engine["ports"][0] == {"name": "http", "containerPort": 30000, "protocol": "TCP"}
    assert {"name": "metrics", "containerPort": 9400} in engine["ports"] and len(engine["ports"]) == 2
    labels, annotations = pod["metadata"]["labels"], pod["metadata"]["annotations"]
    assert labels[Labels.MEMBER] == "1" and annotations["elasticep.io/join"] == "true"


def test_a_wrapper_command_gets_the_engine_line_as_args() -> None:
    tpl = {"spec": {"containers": [{"name": "engine", "command": ["/bin/sh", "-c", 'exec "$@"', "--"]}]}}
    engine = container(render(spec(tpl), join=True), "engine")
    assert engine["command"] == ["/bin/sh", "-c", 'exec "$@"', "--"]
    assert engine["args"] == ["eep-worker", "serve", "--rejoin"]


def test_an_empty_template_gets_the_engine_container_and_default_probes() -> None:
    pod = render(spec({}))
    assert [c["name"] for c in pod["spec"]["containers"]] == ["engine"]
    assert container(pod, "engine")["readinessProbe"]["httpGet"]["path"] == "/ready"
    # A template without an engine container: the operator's goes first, the template's containers follow.
    pod = render(spec({"spec": {"containers": [{"name": "sidecar", "image": "s"}]}}))
    assert [c["name"] for c in pod["spec"]["containers"]] == ["engine", "sidecar"]


def test_a_templates_probe_replaces_the_default_one() -> None:
    probe = {"exec": {"command": ["check"]}, "periodSeconds": 2}
    pod = render(spec({"spec": {"containers": [{"name": "engine", "readinessProbe": probe}]}}))
    assert container(pod, "engine")["readinessProbe"] == probe
    sg = {"name": "sglang", "sglang": {"modelPath": "m", "version": "0.5.23"}}
    live = {"httpGet": {"path": "/live", "port": 30000}}
    pod = render(spec({"spec": {"containers": [{"name": "engine", "livenessProbe": live}]}}, engine=sg))
    assert container(pod, "engine")["livenessProbe"] == live, "SGLang's default liveness yields too"
    assert "livenessProbe" in container(render(spec({}, engine=sg)), "engine")


def test_rendering_does_not_change_the_spec() -> None:
    s = spec({"spec": copy.deepcopy(FULL_POD_SPEC)})
    before = s.model_dump()
    render(s, join=True)
    assert s.model_dump() == before


@pytest.mark.parametrize(
    ("template", "rule"),
    [
        ({"spec": {"restartPolicy": "Always"}}, TEMPLATE_SPEC_RULES[0]),
        ({"spec": {"hostname": "x"}}, TEMPLATE_SPEC_RULES[1]),
        ({"spec": {"subdomain": "x"}}, TEMPLATE_SPEC_RULES[1]),
        ({"spec": {"activeDeadlineSeconds": 3600}}, TEMPLATE_SPEC_RULES[2]),
        ({"spec": {"nodeName": "gpu-7"}}, TEMPLATE_SPEC_RULES[3]),
        ({"spec": {"initContainers": [{"name": "engine", "image": "i"}]}}, TEMPLATE_SPEC_RULES[4]),
        (
            {"spec": {"containers": [{"name": "engine", "restartPolicy": "Always"}]}},
            ENGINE_CONTAINER_RULES[2],
        ),
        (
            {"spec": {"containers": [{"name": "engine", "restartPolicyRules": [{"action": "Restart"}]}]}},
            ENGINE_CONTAINER_RULES[2],
        ),
        ({"spec": {"containers": [{"name": "engine", "image": "other"}]}}, ENGINE_CONTAINER_RULES[0]),
        ({"spec": {"containers": [{"name": "engine", "args": ["--x"]}]}}, ENGINE_CONTAINER_RULES[0]),
        (
            {"spec": {"containers": [{"name": "engine", "env": [{"name": "EEP_WORLD_SIZE", "value": "9"}]}]}},
            ENGINE_CONTAINER_RULES[1],
        ),
        ({"metadata": {"labels": {Labels.MEMBER: "0"}}}, TEMPLATE_METADATA_RULES[0]),
        ({"metadata": {"annotations": {"elasticep.io/join": "true"}}}, TEMPLATE_METADATA_RULES[1]),
    ],
)
def test_the_model_refuses_what_the_operator_owns(template: dict[str, Any], rule: tuple[str, str]) -> None:
    with pytest.raises(ValidationError) as e:
        spec(template)
    assert rule[1] in str(e.value)


def test_what_stays_the_users() -> None:
    # A sidecar's image and args, a tuning variable of the worker, another restartPolicy on an init sidecar.
    tpl = {
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "engine", "env": [{"name": "EEP_TAIL_TIMEOUT_S", "value": "0.05"}]},
                {"name": "proxy", "image": "envoy", "args": ["-c", "x"], "env": [{"name": "EEP_WORLD_SIZE"}]},
            ],
            "initContainers": [{"name": "agent", "image": "a", "restartPolicy": "Always"}],
        }
    }
    pod = render(spec(tpl))
    assert {"name": "EEP_TAIL_TIMEOUT_S", "value": "0.05"} in container(pod, "engine")["env"]
    assert pod["spec"]["initContainers"][0]["restartPolicy"] == "Always"
