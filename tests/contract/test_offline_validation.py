"""Every manifest we ship passes kubeconform, strict, against Kubernetes' own schemas, offline (issue #15).

`eep_localcluster.manifests` validates examples/*.yaml, the deploy/ files that hold Kubernetes objects and the
chart rendered with each values set the chart tests use; our CRD's schema is converted from what crds/ holds
when the test runs. The broken copies below prove that the validation can fail, with a readable line.
The toolchain (kubeconform and its schemas) is built once by hack/build-kubeconform.sh (`make kubeconform`).

Before this check existed (base 8a19d76) the module was missing: `ModuleNotFoundError: No module named
'eep_localcluster.manifests'`.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from eep_localcluster.manifests import (
    CHART_CASES,
    Report,
    Source,
    Toolchain,
    chart_sources,
    crd_schemas,
    shipped_sources,
    validate,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cpu-demo.yaml"


def crd_files() -> list[Path]:
    return sorted((ROOT / "crds").glob("*.yaml"))


@pytest.fixture(scope="module")
def tools() -> Toolchain:
    if shutil.which("go") is None:
        pytest.skip("go missing: kubeconform is built from its Go module (`make kubeconform`)")
    try:
        return Toolchain.build(ROOT)
    except subprocess.CalledProcessError as e:
        pytest.fail(f"{e.cmd} failed:\n{e.stderr}")


def test_everything_we_ship_validates_strictly(tools: Toolchain) -> None:
    sources, left_out = shipped_sources(ROOT)
    sources += chart_sources(tools.helm, CHART_CASES, ROOT)
    report = validate(tools, sources, crd_files())
    assert not report.findings, "\n".join(map(str, report.findings))
    empty = [name for name, n in report.checked.items() if n == 0]
    assert not empty, f"no Kubernetes object validated in {empty}"
    examples = {f"examples/{p.name}" for p in (ROOT / "examples").glob("*.yaml")}
    assert examples and examples <= set(report.checked)
    # Built-in kinds, our CRD and Prometheus Operator's were each checked against a schema, none skipped.
    assert {
        "Deployment",
        "ClusterRole",
        "ElasticEPCluster",
        "ServiceMonitor",
        "PrometheusRule",
    } <= report.kinds
    assert not report.skipped
    assert all(name.startswith("deploy/") for name in left_out)


def test_make_target_entry_point_passes(tools: Toolchain) -> None:
    """What `make validate-manifests` runs."""
    done = subprocess.run(
        [sys.executable, "-m", "eep_localcluster.manifests"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("ok: ")


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    """A mutation that sets the dotted `path` (numbers index lists), creating mappings on the way."""

    def mutate(obj: dict[str, Any]) -> None:
        keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
        node: Any = obj
        for key in keys[:-1]:
            node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
        node[keys[-1]] = value

    return mutate


def _example() -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    assert isinstance(doc, dict)
    return doc


# name -> (mutation of a copy of examples/cpu-demo.yaml, the finding's path, words the finding must carry)
BROKEN_EXAMPLES: dict[str, tuple[Mutation, str, tuple[str, ...]]] = {
    "unknown-pod-field": (
        _set("spec.template.spec.hostNetwrok", True),
        "/spec/template/spec",
        ("additional properties", "hostNetwrok"),
    ),
    "unknown-container-field": (
        _set(
            "spec.template.spec.containers",
            [{"name": "sidecar", "image": "busybox", "imagePullPolcy": "Always"}],
        ),
        "/spec/template/spec/containers/0",
        ("additional properties", "imagePullPolcy"),
    ),
    "wrong-type-in-pod": (
        _set("spec.template.spec.terminationGracePeriodSeconds", "thirty"),
        "/spec/template/spec/terminationGracePeriodSeconds",
        ("got string, want integer",),
    ),
    "wrong-type-in-spec": (_set("spec.nodes", "four"), "/spec/nodes", ("got string, want integer",)),
    "unknown-top-level-field": (_set("sepc", {}), "/", ("additional properties", "sepc")),
}
# name -> (mutation of the chart's default Deployment or its rendered ServiceMonitor, path, words)
BROKEN_CHART: dict[str, tuple[str, Mutation, str, tuple[str, ...]]] = {
    "deployment-unknown-container-field": (
        "Deployment",
        _set("spec.template.spec.containers.0.readOnlyRootFilesytem", True),
        "/spec/template/spec/containers/0",
        ("additional properties", "readOnlyRootFilesytem"),
    ),
    "servicemonitor-wrong-type": (
        "ServiceMonitor",
        _set("spec.endpoints", "metrics"),
        "/spec/endpoints",
        ("want array",),
    ),
}


@pytest.fixture(scope="module")
def broken_report(tools: Toolchain) -> Report:
    """One kubeconform run over every broken copy (each its own source, named after its case)."""
    sources = []
    for name, (mutate, _, _) in BROKEN_EXAMPLES.items():
        doc = copy.deepcopy(_example())
        mutate(doc)
        sources.append(Source(name, yaml.safe_dump(doc)))
    (rendered,) = chart_sources(tools.helm, {"monitoring": CHART_CASES["monitoring"]}, ROOT)
    objs = [d for d in yaml.safe_load_all(rendered.text) if d]
    for name, (kind, mutate, _, _) in BROKEN_CHART.items():
        (obj,) = [copy.deepcopy(o) for o in objs if o["kind"] == kind]
        mutate(obj)
        sources.append(Source(name, yaml.safe_dump(obj)))
    return validate(tools, sources, crd_files())


@pytest.mark.parametrize("case", [*BROKEN_EXAMPLES, *BROKEN_CHART])
def test_a_broken_copy_is_rejected_with_a_readable_line(broken_report: Report, case: str) -> None:
    path, words = BROKEN_EXAMPLES[case][1:] if case in BROKEN_EXAMPLES else BROKEN_CHART[case][2:]
    lines = [str(f) for f in broken_report.findings if f.source == case]
    assert lines, f"{case} was accepted: {broken_report}"
    (line,) = lines
    assert "\n" not in line
    assert line.startswith(f"{case}: ") and f": {path}: " in line, line
    for word in words:
        assert word in line, line


def test_the_crd_schema_follows_crds(tools: Toolchain, tmp_path: Path) -> None:
    """The CRD's schema is converted from the CRD files given (cached by content): drop `nodes` from a copy of
    the CRD and the unchanged example is rejected for it; the CRD as it is accepts the example."""
    (crd_path,) = [p for p in crd_files() if "elasticepclusters" in p.name]
    crd = yaml.safe_load(crd_path.read_text())
    for version in crd["spec"]["versions"]:
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        del spec["properties"]["nodes"]
        required = [r for r in spec.pop("required", []) if r != "nodes"]
        if required:
            spec["required"] = required
    changed = tmp_path / crd_path.name
    changed.write_text(yaml.safe_dump(crd))
    assert crd_schemas(tools, [changed]) != crd_schemas(tools, crd_files())
    assert crd_schemas(tools, [changed]) == crd_schemas(tools, [changed])

    example = Source("example", EXAMPLE.read_text())
    (finding,) = validate(tools, [example], [changed]).findings
    assert "'nodes' not allowed" in finding.message
    assert validate(tools, [example], crd_files()).ok


def test_a_duplicated_key_is_rejected(tools: Toolchain) -> None:
    """Strict mode also refuses a key given twice (YAML keeps the last one silently)."""
    text = EXAMPLE.read_text().rstrip("\n") + "\nkind: ElasticEPCluster\n"
    (finding,) = validate(tools, [Source("duplicated", text)], crd_files()).findings
    assert 'key "kind" already set' in finding.message and "\n" not in str(finding), finding
