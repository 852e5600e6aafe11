"""`elasticEP.coordinator: Dedicated` in the operator (issue #19): `nodes + 1` member pods, member 0 rank 0
alone with the coordinator's resources and priority, the serving members after it, every member told the
layout.

Before: the field did not exist (the CR was refused as unknown), so rank 0 always served."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from operator_builders import NAME, NS, UID, observed, t
from pydantic import ValidationError

from eep_contract.env import Coordinator, MemberEnv
from eep_contract.v1alpha1 import ElasticEPClusterSpec, ElasticEPClusterStatus
from eep_operator.core import actions as A
from eep_operator.core import podspec
from eep_operator.core.planner import plan

ANTI_AFFINITY = {
    "requiredDuringSchedulingIgnoredDuringExecution": [
        {
            "labelSelector": {"matchLabels": {"elasticep.io/cluster": "c"}},
            "topologyKey": "kubernetes.io/hostname",
        }
    ]
}
"""One serving member per node, as the GPU examples ask."""


def spec(**elastic_ep: Any) -> ElasticEPClusterSpec:
    return ElasticEPClusterSpec.model_validate(
        {
            "image": "img",
            "nodes": 2,
            "ranksPerNode": 2,
            "elasticEP": {"backend": "mooncake", "coordinator": "Dedicated", **elastic_ep},
            "template": {
                "spec": {
                    "containers": [{"name": "engine", "resources": {"limits": {"nvidia.com/gpu": 2}}}],
                    "affinity": {"podAntiAffinity": ANTI_AFFINITY},
                    "resourceClaims": [{"name": "gpus", "resourceClaimTemplateName": "gpus"}],
                }
            },
        }
    )


def selects(pdb: dict[str, Any], pod: dict[str, Any]) -> bool:
    """Whether the budget's label selector (matchLabels, `In`/`NotIn` expressions) selects the pod."""
    labels = pod["metadata"]["labels"]
    sel = pdb["spec"]["selector"]
    if any(labels.get(k) != v for k, v in sel.get("matchLabels", {}).items()):
        return False
    for e in sel.get("matchExpressions", []):
        inside = labels.get(e["key"]) in e["values"]
        if inside != (e["operator"] == "In"):
            return False
    return True


def env_of(pod: dict[str, Any]) -> MemberEnv:
    engine = next(c for c in pod["spec"]["containers"] if c["name"] == "engine")
    return MemberEnv.from_env({e["name"]: e["value"] for e in engine["env"] if "value" in e})


def test_the_first_plan_creates_the_coordinator_and_the_serving_members() -> None:
    s = spec(coordinatorPriorityClassName="eep-coordinator")
    got = plan(s, ElasticEPClusterStatus(), observed(), t(0))
    pods = [a.manifest for a in got.actions if isinstance(a, A.CreatePod)]
    assert [p["metadata"]["name"] for p in pods] == ["c-0", "c-1", "c-2"]
    assert got.status.world_size == 5
    assert [(m.first_rank, m.rank_count) for m in got.status.members] == [(0, 1), (1, 2), (3, 2)]
    envs = [env_of(p) for p in pods]
    assert [(e.first_rank, e.rank_count, e.world_size) for e in envs] == [(0, 1, 5), (1, 2, 5), (3, 2, 5)]
    assert {e.coordinator for e in envs} == {Coordinator.DEDICATED}
    coordinator, serving = pods[0], pods[1]
    engine = next(c for c in coordinator["spec"]["containers"] if c["name"] == "engine")
    want = {"cpu": "1", "memory": "2Gi"}
    assert engine["resources"] == {"requests": want, "limits": want}  # no GPU, Guaranteed QoS
    assert "affinity" not in coordinator["spec"] and "resourceClaims" not in coordinator["spec"]
    assert coordinator["spec"]["priorityClassName"] == "eep-coordinator"
    engine = next(c for c in serving["spec"]["containers"] if c["name"] == "engine")
    assert engine["resources"] == {"limits": {"nvidia.com/gpu": 2}}
    assert serving["spec"]["affinity"] == {"podAntiAffinity": ANTI_AFFINITY}
    assert serving["spec"]["resourceClaims"]
    assert "priorityClassName" not in serving["spec"]


def test_the_coordinator_has_a_disruption_budget_of_its_own_and_the_pod_group_counts_it() -> None:
    """A drain may take one serving member at a time and never a Ready coordinator (its loss is a group
    restart). Before: one budget of `minAvailable: 2` over all three pods, which let a drain evict the
    coordinator. The two selectors never share a pod (the Eviction API refuses a pod two budgets select)."""
    s = spec()
    members, coordinator = podspec.render_pdbs(s, cluster=NAME, namespace=NS, uid=UID)
    assert [members["metadata"]["name"], coordinator["metadata"]["name"]] == list(podspec.pdb_names(s, NAME))
    assert members["spec"]["minAvailable"] == 1  # of the 2 serving members
    assert coordinator["spec"]["minAvailable"] == 1
    assert coordinator["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    pods = [
        podspec.render_pod(
            s, cluster=NAME, namespace=NS, uid=UID, index=i, join=False, epoch=1, incarnation=1
        )
        for i in range(s.member_count)
    ]
    for i, pod in enumerate(pods):
        chosen = [p["metadata"]["name"] for p in (members, coordinator) if selects(p, pod)]
        assert chosen == ([coordinator["metadata"]["name"]] if i == 0 else [members["metadata"]["name"]])
    first = plan(s, ElasticEPClusterStatus(), replace(observed(), pdb_exists=False), t(0))
    ensured = [a.manifest for a in first.actions if isinstance(a, A.EnsurePodDisruptionBudget)]
    assert ensured == [members, coordinator]
    pod = podspec.render_pod(
        s, cluster="eep", namespace="ns", uid="u", index=1, join=False, epoch=1, incarnation=1, pod_group="g"
    )
    assert pod["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"] == "3"


def test_a_dedicated_coordinator_needs_the_reference_worker() -> None:
    with pytest.raises(ValidationError, match="needs engine eep-worker"):
        ElasticEPClusterSpec.model_validate(
            {
                "image": "img",
                "nodes": 2,
                "engine": {"name": "sglang", "sglang": {"modelPath": "m", "version": "0.5.23"}},
                "elasticEP": {"coordinator": "Dedicated"},
            }
        )


def coordinator_pod(s: ElasticEPClusterSpec) -> dict[str, Any]:
    return podspec.render_pod(
        s, cluster=NAME, namespace=NS, uid=UID, index=0, join=False, epoch=1, incarnation=1
    )


def test_no_container_of_the_coordinator_keeps_a_device_or_a_claim() -> None:
    """A template with a sidecar and an init container that take a GPU, an RDMA device and the pod's claim.
    Before: only the engine container's resources were replaced while the pod's `resourceClaims` went, so
    the sidecar kept `nvidia.com/gpu` and named a claim the pod no longer had (the API server refuses such a
    pod: the coordinator could never be created)."""
    devices = {
        "requests": {"cpu": "100m", "memory": "64Mi", "nvidia.com/gpu": 1, "hugepages-2Mi": "2Mi"},
        "limits": {"memory": "64Mi", "nvidia.com/gpu": 1, "rdma/hca": 1, "hugepages-2Mi": "2Mi"},
        "claims": [{"name": "gpus"}],
    }
    s = spec()
    wire = s.to_wire()
    containers = wire["template"]["spec"]["containers"]
    containers.append({"name": "sidecar", "image": "s", "resources": devices})
    wire["template"]["spec"]["initContainers"] = [{"name": "init", "image": "i", "resources": devices}]
    pod = coordinator_pod(ElasticEPClusterSpec.model_validate(wire))
    host = {
        "requests": {"cpu": "100m", "memory": "64Mi", "hugepages-2Mi": "2Mi"},
        "limits": {"memory": "64Mi", "hugepages-2Mi": "2Mi"},
    }
    others = [
        c for c in [*pod["spec"]["containers"], *pod["spec"]["initContainers"]] if c["name"] != "engine"
    ]
    assert [c["resources"] for c in others] == [host, host]
    assert "resourceClaims" not in pod["spec"]


def test_the_coordinator_goes_where_its_node_selector_says() -> None:
    """`coordinatorNodeSelector` replaces the template's node selector and drops its node affinity for the
    coordinator alone (tolerations stay); the serving members keep the template's."""
    gpu_affinity = {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h200"]}]}
            ]
        }
    }
    wire = spec(coordinatorNodeSelector={"pool": "cpu"}).to_wire()
    template = wire["template"]["spec"]
    template["nodeSelector"] = {"pool": "gpu"}
    template["affinity"]["nodeAffinity"] = gpu_affinity
    template["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    s = ElasticEPClusterSpec.model_validate(wire)
    pod = coordinator_pod(s)
    assert pod["spec"]["nodeSelector"] == {"pool": "cpu"}
    assert "affinity" not in pod["spec"]
    assert pod["spec"]["tolerations"] == template["tolerations"]
    serving = podspec.render_pod(
        s, cluster=NAME, namespace=NS, uid=UID, index=1, join=False, epoch=1, incarnation=1
    )
    assert serving["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert serving["spec"]["affinity"]["nodeAffinity"] == gpu_affinity
    unset = coordinator_pod(
        ElasticEPClusterSpec.model_validate({**wire, "elasticEP": spec().to_wire()["elasticEP"]})
    )
    assert unset["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert unset["spec"]["affinity"] == {"nodeAffinity": gpu_affinity}


@pytest.mark.parametrize(
    ("elastic_ep", "message"),
    [
        ({"coordinatorRequests": {}}, "must name cpu and memory"),
        ({"coordinatorRequests": {"cpu": "2"}}, "must name cpu and memory"),
        ({"coordinatorPriorityClassName": "Not_A_Name!"}, "should match pattern"),
    ],
)
def test_what_the_coordinator_could_not_run_with_is_refused(elastic_ep: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**elastic_ep)


def test_the_model_refuses_a_world_above_mooncakes_limit_as_the_schema_does() -> None:
    """Before: only the CRD's CEL rule refused it; a spec built without the API server (`render`) passed."""
    with pytest.raises(ValidationError, match="must be at most 64"):
        ElasticEPClusterSpec.model_validate(
            {"image": "img", "nodes": 8, "ranksPerNode": 8, "elasticEP": {"coordinator": "Dedicated"}}
        )
