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
