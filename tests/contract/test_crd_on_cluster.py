"""The generated CRD on the real API server: examples accepted, invalid CRs rejected readably."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from eep_contract import v1alpha1 as api
from eep_operator.core import podspec

ROOT = Path(__file__).resolve().parents[2]
INVALID = sorted((ROOT / "tests" / "data" / "invalid").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

pytestmark = pytest.mark.cluster
UID = "00000000-0000-4000-8000-000000000001"

Kubectl = Callable[..., str]


def _expectation(path: Path) -> str:
    return path.read_text().splitlines()[0].removeprefix("# expect: ").strip()


def _apply(kubectl: Kubectl, namespace: str, path: Path) -> tuple[bool, str]:
    try:
        kubectl("apply", "-n", namespace, "-f", str(path))
    except AssertionError as rejected:
        return False, str(rejected)
    return True, ""


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_cr_is_rejected_with_a_readable_message(kubectl: Kubectl, namespace: str, path: Path) -> None:
    accepted, message = _apply(kubectl, namespace, path)
    assert not accepted, f"{path.name} was accepted"
    assert _expectation(path) in message, message


def test_examples_are_accepted_and_printed_with_columns(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    for path in EXAMPLES:
        doc = yaml.safe_load(path.read_text())
        doc["metadata"].pop("namespace", None)  # the GPU example names its own namespace
        local = tmp_path / path.name
        local.write_text(yaml.safe_dump(doc))
        # a server-side dry run passes the schema and the CEL rules, and returns the defaulted object
        echoed = yaml.safe_load(
            kubectl("create", "-n", namespace, "--dry-run=server", "-o", "yaml", "-f", str(local))
        )
        assert echoed["spec"]["recovery"]["mode"] == doc["spec"]["recovery"].get("mode", "PerMember")
    kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "cpu-demo.yaml"))
    table = kubectl("get", "eep", "-n", namespace)
    header = table.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "ACTIVE", "WORLD", "EPOCH", "RESTARTS", "AGE"], table
    explained = kubectl("explain", "eep.spec.recovery.maxUnavailableMembers")
    assert "whole-group restart" in explained


def test_the_examples_member_pods_pass_pod_validation(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    """Each example's member pods as the operator renders them (member 0 as first started, the last member as
    a replacement), created with `--dry-run=server`: Kubernetes' pod validation and admission, which the CRD's
    schema does not run (a volume a mount names, an env variable's name, the service account's existence)."""
    kubectl("create", "serviceaccount", "elastic-ep-worker", "-n", namespace)
    for path in EXAMPLES:
        doc = yaml.safe_load(path.read_text())
        spec = api.ElasticEPClusterSpec.model_validate(doc["spec"])
        name = doc["metadata"]["name"]
        for index, join in ((0, False), (spec.nodes - 1, True)):
            pod = podspec.render_pod(
                spec,
                cluster=name,
                namespace=namespace,
                uid=UID,
                index=index,
                join=join,
                epoch=1,
                incarnation=1,
            )
            local = tmp_path / f"{name}-{index}.json"
            local.write_text(json.dumps(pod))
            created = json.loads(kubectl("create", "--dry-run=server", "-o", "json", "-f", str(local)))
            engine = next(c for c in created["spec"]["containers"] if c["name"] == "engine")
            assert engine["image"] == spec.image, path.name


def test_defaults_are_filled_in_by_the_api_server(kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "cpu-demo.yaml"))
    stored = yaml.safe_load(kubectl("get", "eep", "cpu-demo", "-n", namespace, "-o", "yaml"))
    assert stored["spec"]["recovery"]["terminatingTimeoutSeconds"] == 30
    assert stored["spec"]["engine"]["readinessPath"] == "/ready"


def test_world_size_cannot_change_after_creation(kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "cpu-demo.yaml"))
    with pytest.raises(AssertionError, match="nodes is immutable: create a new cluster to resize the group"):
        kubectl("patch", "eep", "cpu-demo", "-n", namespace, "--type=merge", "-p", '{"spec":{"nodes":5}}')


@pytest.mark.parametrize(("nodes", "ranks_per_node"), [(9, 8), (5, 16), (33, 2)])
def test_a_world_above_mooncakes_64_ranks_is_rejected(
    kubectl: Kubectl, namespace: str, tmp_path: Path, nodes: int, ranks_per_node: int
) -> None:
    """Each factor within its own bound (nodes <= 64, ranksPerNode <= 16), the product above 64."""
    doc = yaml.safe_load((ROOT / "examples" / "cpu-demo.yaml").read_text())
    doc["metadata"].pop("namespace", None)
    doc["spec"].update(nodes=nodes, ranksPerNode=ranks_per_node)
    path = tmp_path / "world.yaml"
    path.write_text(yaml.safe_dump(doc))
    accepted, message = _apply(kubectl, namespace, path)
    assert not accepted, f"{nodes} x {ranks_per_node} ranks accepted"
    assert (
        "world size (nodes x ranksPerNode, plus 1 for a dedicated coordinator) must be at most 64" in message
    ), message
    assert "Mooncake's limit on the global ranks of one group" in message, message

    doc["spec"].update(nodes=64 // ranks_per_node)  # the largest world that fits is accepted
    path.write_text(yaml.safe_dump(doc))
    assert _apply(kubectl, namespace, path) == (True, "")
