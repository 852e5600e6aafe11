"""The contract's generated artefacts agree with the models, and the schema is one Kubernetes accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from eep_contract import crd, k8s_schema
from eep_contract import v1alpha1 as api

ROOT = Path(__file__).resolve().parents[2]
INVALID = sorted((ROOT / "tests" / "data" / "invalid").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_committed_crd_and_reference_match_the_models() -> None:
    assert crd.main(["--check", "--root", str(ROOT)]) == 0, "run `make generate` and commit the result"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.get("properties", {}).items():
            found += _walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            found += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


def test_schema_is_structural_and_documented() -> None:
    schema = crd.openapi_schema()
    int_or_string = [{"type": "integer"}, {"type": "string"}]
    for path, node in _walk(schema):
        # The one union a structural schema allows (Kubernetes' IntOrString and Quantity in the pod template).
        union = node.get("x-kubernetes-int-or-string") is True and node.get("anyOf") == int_or_string
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "$defs", "title", "const"):
            assert banned not in node or (banned == "anyOf" and union), f"{path} has {banned}: not structural"
        if path.startswith((".spec", ".status")):
            assert "type" in node or union, f"{path} has no type"
            is_item = path.endswith(("[]", "{}"))
            assert is_item or node.get("description"), f"{path} has no description (kubectl explain shows it)"
        if node.get("additionalProperties") is not None:
            assert "properties" not in node, f"{path} mixes properties and additionalProperties"


def test_every_enum_value_is_documented() -> None:
    for enum_cls in (
        api.EngineName,
        api.Backend,
        api.RecoveryMode,
        api.Phase,
        api.MemberState,
        api.SGLangJoinFlag,
        api.ConditionType,
    ):
        docs = crd.enum_value_docs(enum_cls)
        assert set(docs) == {m.value for m in enum_cls}, f"{enum_cls.__name__} has undocumented values"


def test_status_round_trips_on_the_wire() -> None:
    status = api.ElasticEPClusterStatus(
        world_size=4,
        membership=api.Membership(epoch=3, active_ranks=[0, 1, 3], joining_ranks=[2]),
        members=[
            api.MemberStatus(
                index=2,
                first_rank=2,
                rank_count=1,
                state=api.MemberState.JOINING,
                last_exit=api.ExitRecord(exit_code=137, reason="Error"),
            )
        ],
    )
    wire = status.to_wire()
    assert wire["membership"] == {"epoch": 3, "activeRanks": [0, 1, 3], "joiningRanks": [2]}
    assert wire["members"][0]["lastExit"]["exitCode"] == 137
    assert api.ElasticEPClusterStatus.model_validate(wire) == status


def test_status_reader_ignores_fields_of_a_newer_operator() -> None:
    wire = {
        "membership": {"epoch": 1, "activeRanks": [0], "joiningRanks": [], "futureField": 1},
        "newThing": {},
    }
    assert api.ElasticEPClusterStatus.model_validate(wire).membership.epoch == 1


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid_specs(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        cluster = api.ElasticEPCluster.model_validate(doc)
        assert cluster.spec.world_size <= api.MAX_WORLD_SIZE


def test_there_are_enough_invalid_examples_each_with_an_expectation() -> None:
    assert len(INVALID) >= 10
    for path in INVALID:
        assert path.read_text().startswith("# expect: "), f"{path.name} lacks its '# expect: ' line"


# The spec models reject what the schema's per-field bounds reject; cross-field (CEL) rules and Kubernetes'
# own PodSpec schema in `spec.template.spec` are the API server's alone (and, for the PodSpec, the offline
# validator's: tests/contract/test_offline_validation.py), so those files are checked only there.
CEL_ONLY = {
    "sglang-without-model.yaml",
    "backoff-max-below-initial.yaml",
    "template-bad-quantity.yaml",
    "template-container-without-name.yaml",
    "template-unknown-pod-field.yaml",
    "template-wrong-type.yaml",
}


@pytest.mark.parametrize("path", [p for p in INVALID if p.name not in CEL_ONLY], ids=lambda p: p.name)
def test_models_reject_what_the_schema_rejects(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    with pytest.raises(ValidationError):
        api.ElasticEPCluster.model_validate(doc)


def test_defaults_in_schema_match_model_defaults() -> None:
    spec = api.ElasticEPClusterSpec(image="x", nodes=2)
    schema = crd.openapi_schema()["properties"]["spec"]["properties"]
    wire = spec.to_wire()
    for section in ("engine", "elasticEP", "recovery"):
        for key, prop in schema[section]["properties"].items():
            if "default" in prop:
                assert wire[section][key] == prop["default"], f"{section}.{key}"


def test_the_vendored_pod_schema_is_of_the_pinned_kubernetes() -> None:
    """`spec.template.spec`'s schema comes from the Kubernetes the control plane runs: a bump of
    hack/versions.env's KUBE_VERSION must refresh it (`python -m eep_contract.k8s_schema`)."""
    pinned = dict(
        line.split("=", 1)
        for line in (ROOT / "hack" / "versions.env").read_text().splitlines()
        if "=" in line
    )
    assert pinned["KUBE_VERSION"] == k8s_schema.KUBE_VERSION


def test_the_pod_schema_is_kubernetes_podspec_without_references() -> None:
    pod = crd.openapi_schema()["properties"]["spec"]["properties"]["template"]["properties"]["spec"]
    for field in (
        "containers",
        "initContainers",
        "volumes",
        "hostNetwork",
        "resourceClaims",
        "schedulerName",
    ):
        assert field in pod["properties"], field
    assert "ephemeralContainers" not in pod["properties"]
    limits = pod["properties"]["containers"]["items"]["properties"]["resources"]["properties"]["limits"]
    assert limits["additionalProperties"]["x-kubernetes-int-or-string"] is True
