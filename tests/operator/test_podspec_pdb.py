"""Unit tests of `podspec.render_pdb`: the PodDisruptionBudget that makes a drain evict one member at a time.

The disruption arithmetic below is the disruption controller's and the Eviction API's (policy/v1, integer
`minAvailable`): `disruptionsAllowed = max(0, Ready pods - minAvailable)`; a pod that is not Ready is
evicted regardless under `AlwaysAllow`. The end-to-end proof on a real control plane is
tests/operator/test_e2e_drain.py.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from operator_builders import make_spec, t
from prometheus_client import CollectorRegistry

from eep_contract.v1alpha1 import API_VERSION, KIND, MANAGED_BY_VALUE, Labels
from eep_operator.core import actions as A
from eep_operator.core import podspec
from eep_operator.io.events import ClusterRef
from eep_operator.io.executor import Executor
from eep_operator.io.kube import AlreadyExistsError
from eep_operator.metrics import OperatorMetrics


def pdb(nodes: int = 4, **recovery: Any) -> dict[str, Any]:
    return podspec.render_pdb(make_spec(nodes, **recovery), cluster="ds", namespace="prod", uid="u-1")


def eviction_allowed(manifest: dict[str, Any], ready: int, evictee_ready: bool = True) -> bool:
    """Whether the Eviction API lets one pod go, with `ready` member pods Ready (the evictee included)."""
    spec = manifest["spec"]
    if not evictee_ready and spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow":
        return True
    if not evictee_ready:  # IfHealthyBudget: only while the budget is met
        return ready >= spec["minAvailable"]
    return ready - spec["minAvailable"] > 0


def test_pdb_selects_the_members_and_is_owned_like_the_service() -> None:
    got = pdb()
    svc = podspec.render_service(make_spec(), cluster="ds", namespace="prod", uid="u-1")
    assert (got["apiVersion"], got["kind"]) == ("policy/v1", "PodDisruptionBudget")
    assert got["metadata"]["name"] == podspec.pdb_name("ds") == svc["metadata"]["name"]
    assert got["metadata"]["namespace"] == "prod"
    assert got["metadata"]["labels"] == {Labels.CLUSTER: "ds", Labels.MANAGED_BY: MANAGED_BY_VALUE}
    assert got["metadata"]["ownerReferences"] == svc["metadata"]["ownerReferences"]
    [owner] = got["metadata"]["ownerReferences"]
    assert (owner["apiVersion"], owner["kind"], owner["uid"], owner["controller"]) == (
        API_VERSION,
        KIND,
        "u-1",
        True,
    )
    # The same pods as the Service: every member pod carries the cluster label.
    assert got["spec"]["selector"] == {"matchLabels": svc["spec"]["selector"]}
    member = podspec.render_pod(
        make_spec(), cluster="ds", namespace="prod", uid="u-1", index=3, join=True, epoch=2, incarnation=2
    )
    labels = member["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in got["spec"]["selector"]["matchLabels"].items())


def test_pdb_has_no_max_unavailable() -> None:
    """`maxUnavailable` needs the owner's scale subresource, which the ElasticEPCluster does not have: the
    disruption controller would never sync such a budget and every eviction would be refused forever."""
    spec = pdb()["spec"]
    assert "maxUnavailable" not in spec and isinstance(spec["minAvailable"], int)


@pytest.mark.parametrize("max_unavailable", [0, 1, 2, 3])
@pytest.mark.parametrize("nodes", [4, 8])
def test_one_voluntary_disruption_at_a_time(nodes: int, max_unavailable: int) -> None:
    got = pdb(nodes, maxUnavailableMembers=max_unavailable)
    # All Ready: exactly one member may be evicted, whatever maxUnavailableMembers allows for crashes
    # (0 included: a budget of no disruptions would make the members' nodes undrainable).
    assert eviction_allowed(got, ready=nodes)
    # One member gone or still joining (not Ready): the next Ready member waits.
    assert not eviction_allowed(got, ready=nodes - 1)


def test_single_member_cluster_can_always_be_drained() -> None:
    got = pdb(1, maxUnavailableMembers=0)
    assert got["spec"]["minAvailable"] == 0 and eviction_allowed(got, ready=1)


def test_a_replacement_that_is_not_ready_never_blocks_its_own_drain() -> None:
    """Two members down (one of them a replacement that never gets Ready): its node can still be drained,
    which IfHealthyBudget would refuse for as long as the other member is down."""
    got = pdb(4, maxUnavailableMembers=2)
    assert got["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert eviction_allowed(got, ready=2, evictee_ready=False)
    assert not eviction_allowed(
        {"spec": {**got["spec"], "unhealthyPodEvictionPolicy": "IfHealthyBudget"}}, 2, False
    )


def test_pdb_does_not_depend_on_mutable_fields() -> None:
    """Created once (`EnsurePodDisruptionBudget`, never updated): only the immutable `nodes` shapes it."""
    base = pdb(4)
    assert pdb(4, maxUnavailableMembers=3, maxRestartsPerMember=0, maxEvictionsPerMember=1) == base


def test_ensure_pdb_is_a_kube_action() -> None:
    action = A.EnsurePodDisruptionBudget(manifest=pdb())
    assert isinstance(action, A.KUBE_ACTIONS)
    assert action == A.EnsurePodDisruptionBudget(manifest={})  # the manifest is payload, not identity


class CreateOnce:
    """Creates, then answers AlreadyExists like the API server for an object that exists."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        key = (manifest["kind"], manifest["metadata"]["name"])
        if key in self.objects:
            raise AlreadyExistsError("Conflict")
        self.objects[key] = manifest
        return manifest


class NoEvents:
    def emit(self, ref: ClusterRef, event: A.EmitEvent, now: datetime) -> None:
        raise AssertionError("no Events expected")


def test_executor_creates_the_pdb_and_takes_already_exists_as_done() -> None:
    kube = CreateOnce()
    executor = Executor(kube, NoEvents(), OperatorMetrics(CollectorRegistry()))  # type: ignore[arg-type]
    action = A.EnsurePodDisruptionBudget(manifest=pdb())
    for _ in range(2):  # the retry of a plan whose first attempt created it
        executor.apply(ClusterRef("prod", "ds", "u-1"), (action,), t(0))
    assert kube.objects == {("PodDisruptionBudget", "ds"): pdb()}


def test_rendered_pdb_is_a_valid_kubernetes_object() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    kv.validate(pdb(), "1.31", strict=True)
