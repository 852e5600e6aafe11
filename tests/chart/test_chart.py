"""The Helm chart, rendered offline: lint, Kubernetes schema validation, security, RBAC, schema rejections.

Installing it on the local control plane is tests/chart/test_chart_install.py (marker `cluster`).
"""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from eep_localcluster.manifests import CHART_CASES
from eep_testkit.envfile import versions

from .conftest import CHART, ROOT, Render, helm_template


def kube_version() -> str:
    """The pinned Kubernetes version (hack/versions.env) as kubernetes-validate names it: major.minor.0."""
    major, minor = versions(ROOT)["KUBE_VERSION"].lstrip("v").split(".")[:2]
    return f"{major}.{minor}.0"


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def rule_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def grants(group: str, resources: list[str], verbs: list[str]) -> set[tuple[str, str, str]]:
    return {(group, r, v) for r in resources for v in verbs}


OPERATOR_NAMESPACED = (
    grants("elasticep.io", ["elasticepclusters"], ["get", "list", "watch", "patch"])
    | grants("elasticep.io", ["elasticepclusters/status"], ["get", "update"])
    | grants("elasticep.io", ["elasticepclusters/finalizers"], ["update"])
    | grants("", ["pods"], ["get", "list", "watch", "create", "delete", "patch"])
    | grants("", ["services"], ["get", "list", "watch", "create", "patch"])
    | grants("policy", ["poddisruptionbudgets"], ["get", "create"])
    | grants("", ["events"], ["create"])
)
OPERATOR_CLUSTER_SCOPED = grants("", ["nodes"], ["get", "list", "watch"]) | grants(
    "apiextensions.k8s.io", ["customresourcedefinitions"], ["list", "watch"]
)

# Values sets the chart supports; each must render objects the pinned Kubernetes accepts (strict). One home:
# the offline validator renders the same sets (`make validate-manifests`).
CASES = CHART_CASES
# Objects of CRDs kubernetes-validate has no schema for; checked by the dedicated tests below.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}


def test_helm_lint_strict(helm: Path) -> None:
    for sets in CASES.values():
        args = [str(helm), "lint", "--strict", str(CHART)]
        for s in sets:
            args += ["--set", s]
        result = subprocess.run(args, check=False, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_chart_crds_are_an_exact_copy_of_crds() -> None:
    source = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    copy = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert copy == source, (
        "chart crds/ must hold exactly crds/*.yaml: cp crds/*.yaml charts/elastic-ep-operator/crds/"
    )
    _, mismatch, errors = filecmp.cmpfiles(ROOT / "crds", CHART / "crds", source, shallow=False)
    assert not mismatch and not errors, (
        f"stale chart CRDs {mismatch + errors}: cp crds/*.yaml {CHART / 'crds'}/"
    )


def test_chart_rules_are_an_exact_copy_of_deploy_rules() -> None:
    assert filecmp.cmp(
        ROOT / "deploy" / "prometheus" / "elasticep-rules.yaml",
        CHART / "files" / "elasticep-rules.yaml",
        shallow=False,
    ), "cp deploy/prometheus/elasticep-rules.yaml charts/elastic-ep-operator/files/"


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_objects_validate_strictly(render: Render, case: str) -> None:
    version = kube_version()
    objs = render(*CASES[case]) + [yaml.safe_load(p.read_text()) for p in (CHART / "crds").glob("*.yaml")]
    checked = 0
    for obj in objs:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 3


def test_a_broken_object_is_rejected_by_the_validator(render: Render) -> None:
    """The strict validation above can fail: an unknown field in the Deployment is caught."""
    deployment = one(render(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kube_version(), strict=True)


def test_deployment_is_hardened_and_probed(render: Render) -> None:
    deployment = one(render(), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9090, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["command"] == [
        "eep-operator",
        "run",
        "--all-namespaces",
        "--metrics-port",
        "9090",
        "--health-port",
        "8081",
        "--peering",
        "elastic-ep-operator",
        "--lease-namespace",
        "ops",
    ]
    assert {
        "name": "POD_NAMESPACE",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    } in container["env"]


def test_namespace_mode_passes_each_namespace_and_uses_roles(render: Render) -> None:
    objs = render("watch.mode=namespaces", "watch.namespaces={ml,research}")
    command = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:6] == ["eep-operator", "run", "--namespace", "ml", "--namespace", "research"]
    assert "--all-namespaces" not in command
    operator_roles = [r for r in by_kind(objs, "Role") if r["metadata"]["name"] == "t-elastic-ep-operator"]
    assert sorted(r["metadata"]["namespace"] for r in operator_roles) == ["ml", "research"]
    for role in operator_roles:
        assert rule_set(role["rules"]) == OPERATOR_NAMESPACED
    # Cluster-scoped reads only: nothing namespaced leaks into the ClusterRole in this mode.
    assert rule_set(one(objs, "ClusterRole")["rules"]) == OPERATOR_CLUSTER_SCOPED
    bindings = [b for b in by_kind(objs, "RoleBinding") if b["roleRef"]["name"] == "t-elastic-ep-operator"]
    assert {b["metadata"]["namespace"] for b in bindings} == {"ml", "research"}
    for b in bindings:
        assert b["subjects"] == [
            {"kind": "ServiceAccount", "name": "t-elastic-ep-operator", "namespace": "ops"}
        ]
    # The workers' ServiceAccount exists where the clusters live.
    workers = {sa["metadata"]["namespace"] for sa in by_kind(objs, "ServiceAccount")} - {"ops"}
    assert workers == {"ml", "research"}


def test_namespace_mode_defaults_to_the_release_namespace(render: Render) -> None:
    command = one(render("watch.mode=namespaces"), "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "command"
    ]
    assert command[2:4] == ["--namespace", "ops"]


def test_cluster_mode_rbac_is_exactly_what_the_operator_needs(render: Render) -> None:
    objs = render()
    assert rule_set(one(objs, "ClusterRole")["rules"]) == OPERATOR_CLUSTER_SCOPED | OPERATOR_NAMESPACED
    binding = one(objs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "t-elastic-ep-operator", "namespace": "ops"}
    ]
    for role in by_kind(objs, "ClusterRole") + by_kind(objs, "Role"):
        for group, resource, verb in rule_set(role["rules"]):
            assert "*" not in (group, resource, verb)
            assert resource != "secrets"
            assert verb not in {"escalate", "bind", "impersonate", "deletecollection"}


def test_worker_role_reads_elasticepclusters_and_nothing_else(render: Render) -> None:
    objs = render()
    role = next(r for r in by_kind(objs, "Role") if r["metadata"]["name"] == "elastic-ep-worker")
    assert rule_set(role["rules"]) == grants("elasticep.io", ["elasticepclusters"], ["get", "list", "watch"])
    binding = next(b for b in by_kind(objs, "RoleBinding") if b["metadata"]["name"] == "elastic-ep-worker")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "elastic-ep-worker", "namespace": "ops"}
    ]


def test_leader_election_uses_one_lease_in_the_release_namespace(render: Render) -> None:
    objs = render("replicaCount=2", "watch.mode=namespaces", "watch.namespaces={ml}")
    deployment = one(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    # Only the Lease holder acts, so a surge pod waits as a stand-by instead of acting twice.
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-4:] == ["--peering", "elastic-ep-operator", "--lease-namespace", "ops"]
    role = next(
        r for r in by_kind(objs, "Role") if r["metadata"]["name"] == "t-elastic-ep-operator-leader-election"
    )
    assert role["metadata"]["namespace"] == "ops"
    assert role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["elastic-ep-operator"],
            "verbs": ["get", "update"],
        },
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]
    binding = next(
        b for b in by_kind(objs, "RoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]
    )
    assert binding["metadata"]["namespace"] == "ops"


def test_without_leader_election_one_replica_is_replaced_not_rolled(render: Render) -> None:
    objs = render("leaderElection.enabled=false")
    deployment = one(objs, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--no-leader-election" in command and "--peering" not in command
    assert not [r for r in by_kind(objs, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    for role in by_kind(objs, "ClusterRole") + by_kind(objs, "Role"):
        assert not any(g == "coordination.k8s.io" for g, _, _ in rule_set(role["rules"]))


def test_monitoring_objects_are_off_by_default_and_point_at_the_metrics_service(render: Render) -> None:
    assert not by_kind(render(), "ServiceMonitor") and not by_kind(render(), "PrometheusRule")
    objs = render("serviceMonitor.enabled=true", "prometheusRule.enabled=true")
    service = one(objs, "Service")
    monitor = one(objs, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    pod_labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_prometheusrule_renders_the_rules_file_and_promtool_accepts_it(
    render: Render, tmp_path: Path
) -> None:
    objs = render(
        "prometheusRule.enabled=true", "prometheusRule.runbookBaseURL=https://wiki.example.com/runbook"
    )
    rendered = one(objs, "PrometheusRule")["spec"]["groups"]
    source = yaml.safe_load((ROOT / "deploy" / "prometheus" / "elasticep-rules.yaml").read_text())["groups"]
    default = "https://github.com/elastic-ep-operator/elastic-ep-operator/blob/main/docs/runbook.md"
    assert yaml.safe_dump(rendered) == yaml.safe_dump(source).replace(
        default, "https://wiki.example.com/runbook"
    )
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rendered}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(rules_file)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# values -> a phrase helm must print; each one a mistake a user could make.
REJECTIONS = [
    (
        ("replicaCount=2", "leaderElection.enabled=false"),
        "more than one operator replica needs leader election",
    ),
    (("replicaCount=two",), "at '/replicaCount': got string, want integer"),
    (("watch.mode=everything",), "at '/watch/mode': value must be one of 'all', 'namespaces'"),
    (("watch.namespaces={ml}",), "set watch.mode=namespaces"),
    (("watch.mode=namespaces", "watch.namespaces={Bad_NS}"), "at '/watch/namespaces/0'"),
    (("image.digest=latest",), "at '/image/digest'"),
    (("image.pullPolicy=Sometimes",), "at '/image/pullPolicy'"),
    (("operator.metricsPort=80",), "at '/operator/metricsPort': minimum: got 80, want 1,024"),
    (("operator.healthPort=9090",), "operator.metricsPort and operator.healthPort must differ"),
    (("securityContext.readOnlyRootFilesystem=false",), "at '/securityContext/readOnlyRootFilesystem'"),
    (("securityContext.allowPrivilegeEscalation=true",), "at '/securityContext/allowPrivilegeEscalation'"),
    (("podSecurityContext.runAsNonRoot=false",), "at '/podSecurityContext/runAsNonRoot'"),
    (("serviceMonitor.interval=often",), "at '/serviceMonitor/interval'"),
    (("prometheusRule.runbookBaseURL=docs/runbook.md",), "at '/prometheusRule/runbookBaseURL'"),
    (("replicas=2",), "additional properties 'replicas' not allowed"),
    (("serviceAccount.create=false",), "serviceAccount.name is required when serviceAccount.create is false"),
]


@pytest.mark.parametrize(("sets", "message"), REJECTIONS, ids=[r[0][0] for r in REJECTIONS])
def test_wrong_values_are_rejected_with_a_clear_message(
    helm: Path, sets: tuple[str, ...], message: str
) -> None:
    result = helm_template(helm, *sets)
    assert result.returncode != 0, f"{sets} rendered"
    assert message in result.stderr, result.stderr
