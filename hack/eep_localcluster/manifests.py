"""Offline validation of every manifest we ship: kubeconform, strict, against Kubernetes' own schemas.

Called by `make validate-manifests` (`python -m eep_localcluster.manifests`) and by
tests/contract/test_offline_validation.py. What it checks:

- `examples/*.yaml`: every document must be a Kubernetes object;
- `deploy/**/*.yaml` whose documents are all Kubernetes objects (the others are named, with the reason, in
  the report: a Prometheus rule file, krew's plugin manifest);
- the chart, `helm template` with its default values and with each values set of `CHART_CASES`.

Schemas: Kubernetes' (the pinned `KUBE_VERSION`) and Prometheus Operator's ServiceMonitor/PrometheusRule come
from `hack/build-kubeconform.sh` (see its header for how they are generated offline); our own CRD's is
converted from `crds/*.yaml` by kubeconform's `openapi2jsonschema.py` when the files change (cached by their
content hash), so it always follows what crds/ holds. Strict: an unknown field, a duplicated key, a wrong
type, a missing required field or a kind without a schema is an error. Not checked offline: the CRD's CEL
rules (`x-kubernetes-validations`), which only the API server evaluates, and the kinds in `SKIPPED_KINDS`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CHART_CASES",
    "NOT_KUBERNETES",
    "SKIPPED_KINDS",
    "Finding",
    "Report",
    "Source",
    "Toolchain",
    "chart_sources",
    "crd_schemas",
    "main",
    "shipped_sources",
    "validate",
]

REPO = Path(__file__).resolve().parents[2]
CHART = Path("charts") / "elastic-ep-operator"
CRD_LAYOUT = "{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"
"""kubeconform's -schema-location template below a folder of converted CRDs."""

CHART_CASES: dict[str, tuple[str, ...]] = {
    "default": (),
    "namespaces": ("watch.mode=namespaces", "watch.namespaces={ml,research}"),
    "two-replicas": ("replicaCount=2",),
    "no-leader-election": ("leaderElection.enabled=false", "watch.mode=namespaces"),
    "monitoring": ("serviceMonitor.enabled=true", "prometheusRule.enabled=true"),
    "dashboard": ("grafana.dashboard.enabled=true", "grafana.dashboard.annotations.grafana_folder=EEP"),
    "digest-no-rbac": (
        "image.digest=sha256:" + "a" * 64,
        "rbac.create=false",
        "serviceAccount.create=false",
        "serviceAccount.name=existing",
        "workers.serviceAccount.create=false",
    ),
}
"""`helm template --set` sets, by case name: the values sets the chart supports (tests/chart/test_chart.py
renders the same, from here)."""

NOT_KUBERNETES: dict[str, str] = {
    "krew.googlecontainertools.github.com/v1alpha2": (
        "krew's plugin index manifest: read by kubectl-krew, never sent to an API server"
    ),
}
"""apiVersions that look like Kubernetes objects but are not (apiVersion -> why)."""

SKIPPED_KINDS: dict[str, str] = {
    "CustomResourceDefinition": (
        "openapi2jsonschema declines it (JSONSchemaProps is recursive); the API server checks crds/ "
        "in every cluster test (tests/conftest.py applies them)"
    ),
}
"""Kinds without an offline schema, passed to kubeconform's -skip (kind -> why)."""


@dataclass(frozen=True)
class Toolchain:
    """hack/build-kubeconform.sh's output directory (its header has the layout) and the pinned helm."""

    root: Path
    helm: Path
    kube_version: str
    """`1.36.3`: kubeconform's -kubernetes-version, no leading v."""

    @property
    def kubeconform(self) -> Path:
        return self.root / "bin" / "kubeconform"

    @property
    def python(self) -> Path:
        """The python with PyYAML that runs kubeconform's CRD converter."""
        return self.root / "venv" / "bin" / "python"

    @property
    def converter(self) -> Path:
        return self.root / "openapi2jsonschema.py"

    def static_schema_locations(self) -> list[str]:
        """kubeconform -schema-location values for Kubernetes' and Prometheus Operator's schemas."""
        schemas = self.root / "schemas"
        locations = [str(schemas / "kubernetes")]
        for crds in sorted(schemas.glob("prometheus-operator-*")):
            locations.append(f"{crds}/{CRD_LAYOUT}")
        return locations

    @classmethod
    def build(cls, repo: Path = REPO, timeout_s: float = 1200) -> Toolchain:
        """Build (or only check) kubeconform, its schemas and helm with the hack/ scripts.

        Raises subprocess.CalledProcessError (the script's stderr in `.stderr`), subprocess.TimeoutExpired."""
        root = _script_answer(repo / "hack" / "build-kubeconform.sh", timeout_s)
        tools = _script_answer(repo / "hack" / "install-tools.sh", timeout_s)
        return cls(root, tools / "helm", _versions(repo)["KUBE_VERSION"].removeprefix("v"))


@dataclass(frozen=True)
class Source:
    """One thing to validate: a file of the repository or a rendered chart."""

    name: str
    """How reports name it: `examples/cpu-demo.yaml`, `chart (values: monitoring)`."""
    text: str


@dataclass(frozen=True)
class Finding:
    """One resource kubeconform did not accept."""

    source: str
    resource: str
    """`Kind/name`."""
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.resource}: {self.message}"


@dataclass(frozen=True)
class Report:
    """What one validation run saw."""

    checked: dict[str, int]
    """Source name -> how many of its resources kubeconform validated (passed or not)."""
    kinds: frozenset[str]
    """The kinds kubeconform found a schema for and validated."""
    findings: list[Finding]
    skipped: list[Finding]
    """Each resource of a `SKIPPED_KINDS` kind, with the reason as its message."""

    @property
    def ok(self) -> bool:
        return not self.findings and all(self.checked.values())


def shipped_sources(repo: Path = REPO) -> tuple[list[Source], dict[str, str]]:
    """examples/*.yaml and the deploy/**/*.yaml that hold Kubernetes objects -> (sources, not validated).

    `not validated` maps each deploy/ file left out to why. An example that is not a Kubernetes object is a
    source anyway, so that kubeconform reports it. Raises yaml.YAMLError for a file that is not YAML."""
    sources = [
        Source(str(p.relative_to(repo)), p.read_text()) for p in sorted((repo / "examples").glob("*.yaml"))
    ]
    left_out: dict[str, str] = {}
    for path in sorted((repo / "deploy").rglob("*.y*ml")):
        name = str(path.relative_to(repo))
        text = path.read_text()
        why = _not_kubernetes([d for d in yaml.safe_load_all(text) if d is not None])
        if why:
            left_out[name] = why
        else:
            sources.append(Source(name, text))
    return sources, left_out


def _not_kubernetes(docs: list[Any]) -> str:
    """Why these documents are not Kubernetes objects, or `` when they are."""
    if not docs:
        return "empty"
    for doc in docs:
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            return "not a Kubernetes object (no apiVersion/kind)"
        if doc["apiVersion"] in NOT_KUBERNETES:
            return NOT_KUBERNETES[doc["apiVersion"]]
    return ""


def chart_sources(
    helm: Path, cases: Mapping[str, Sequence[str]] = CHART_CASES, repo: Path = REPO, namespace: str = "ops"
) -> list[Source]:
    """The chart rendered by `helm template` once per case (crds/ left out: see `SKIPPED_KINDS`).

    Raises subprocess.CalledProcessError when helm cannot render a case (helm's message in `.stderr`)."""
    out = []
    for case, sets in cases.items():
        argv = [str(helm), "template", "t", str(repo / CHART), "--namespace", namespace]
        for s in sets:
            argv += ["--set", s]
        rendered = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120)
        out.append(Source(f"chart (values: {case})", rendered.stdout))
    return out


def crd_schemas(tools: Toolchain, crd_files: Sequence[Path]) -> Path:
    """JSON schemas of the CRDs in `crd_files`, converted by kubeconform's openapi2jsonschema.py, strict at
    every level -> the directory that holds `<group>/<kind>_<version>.json`, kept under the toolchain's root
    by the files' content hash (a second call with the same files converts nothing).

    Raises subprocess.CalledProcessError when the converter fails, ValueError for a file with no CRD."""
    digest = hashlib.sha256()
    for path in sorted(crd_files):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    final = tools.root / "schemas" / f"crds-{digest.hexdigest()[:16]}"
    if final.is_dir():
        return final
    by_group: dict[str, list[Path]] = {}
    for path in crd_files:
        groups = {
            d["spec"]["group"]
            for d in yaml.safe_load_all(path.read_text())
            if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition"
        }
        if not groups:
            raise ValueError(f"{path}: no CustomResourceDefinition")
        for group in groups:
            by_group.setdefault(group, []).append(path)
    work = Path(tempfile.mkdtemp(prefix=".crds-", dir=final.parent))
    try:
        env = {**os.environ, "FILENAME_FORMAT": "{kind}_{version}", "DENY_ROOT_ADDITIONAL_PROPERTIES": "1"}
        for group, paths in by_group.items():
            # The converter writes into its working directory, one file per CRD version.
            (work / group).mkdir()
            subprocess.run(
                [str(tools.python), str(tools.converter), *map(str, paths)],
                cwd=work / group,
                env=env,
                check=True,
                capture_output=True,
                text=True,
                timeout=300,
            )
        try:
            work.rename(final)
        except OSError:
            if not final.is_dir():  # another run that got there first is fine
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def validate(tools: Toolchain, sources: Sequence[Source], crd_files: Sequence[Path]) -> Report:
    """Run kubeconform (strict) on `sources` with the Kubernetes, Prometheus Operator and `crd_files` schemas.

    Raises subprocess.CalledProcessError when kubeconform itself fails (exit status other than 0 or 1, or
    output that is not its JSON report)."""
    crds = crd_schemas(tools, crd_files)
    locations = [
        *tools.static_schema_locations(),
        f"{crds}/{CRD_LAYOUT}",
    ]
    with tempfile.TemporaryDirectory(prefix="eep-manifests-") as tmp:
        names: dict[str, str] = {}
        for i, source in enumerate(sources):
            path = Path(tmp) / f"{i:03d}.yaml"
            path.write_text(source.text)
            names[str(path)] = source.name
        argv = [str(tools.kubeconform), "-strict", "-summary", "-verbose", "-output", "json"]
        argv += ["-kubernetes-version", tools.kube_version, "-skip", ",".join(SKIPPED_KINDS)]
        for location in locations:
            argv += ["-schema-location", location]
        result = subprocess.run([*argv, *names], check=False, capture_output=True, text=True, timeout=300)
    try:
        out = json.loads(result.stdout)
    except json.JSONDecodeError:
        out = None
    if result.returncode not in (0, 1) or not isinstance(out, dict):
        raise subprocess.CalledProcessError(result.returncode, argv, result.stdout, result.stderr)
    checked = {source.name: 0 for source in sources}
    findings, skipped, kinds = [], [], set()
    for r in out.get("resources") or []:
        source = names.get(r.get("filename", ""), r.get("filename", "?"))
        resource = f"{r.get('kind') or '?'}/{r.get('name') or '?'}"
        status = r.get("status")
        if not status:  # an empty document (kubeconform -verbose lists those with no status)
            continue
        if status == "statusSkipped":
            skipped.append(Finding(source, resource, SKIPPED_KINDS.get(r.get("kind", ""), "skipped")))
            continue
        if source in checked:
            checked[source] += 1
        if status in ("statusValid", "statusInvalid"):
            kinds.add(r.get("kind") or "?")
        if status == "statusValid":
            continue
        details = r.get("validationErrors") or []
        if details:
            findings += [Finding(source, resource, f"{e['path'] or '/'}: {e['msg']}") for e in details]
        else:
            # kubeconform's YAML errors span lines; a report keeps one line per problem
            findings.append(Finding(source, resource, " ".join(str(r.get("msg") or status).split())))
    return Report(checked, frozenset(kinds), findings, skipped)


def _script_answer(script: Path, timeout_s: float) -> Path:
    """The last line of what a hack/ script prints on stdout: the directory it built or checked."""
    done = subprocess.run(
        ["bash", str(script)], check=True, capture_output=True, text=True, timeout=timeout_s
    )
    return Path(done.stdout.strip().splitlines()[-1])


def _versions(repo: Path) -> dict[str, str]:
    out = {}
    for line in (repo / "hack" / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m eep_localcluster.manifests [--repo DIR] [FILE ...]`: validate what we ship, or only the
    FILEs given (against the same schemas), and print one line per problem. Exit status: 0 when all pass, 1
    when something is invalid or a source held no Kubernetes object, 2 when a tool could not be built or the
    chart could not be rendered."""
    parser = argparse.ArgumentParser(prog="python -m eep_localcluster.manifests", description=__doc__)
    parser.add_argument("--repo", type=Path, default=REPO, help="the repository root (default: this one)")
    parser.add_argument("files", nargs="*", type=Path, help="validate these instead of what we ship")
    args = parser.parse_args(argv)
    repo: Path = args.repo.resolve()
    left_out: dict[str, str] = {}
    try:
        tools = Toolchain.build(repo)
        if args.files:
            sources = [Source(str(p), p.read_text()) for p in args.files]
        else:
            sources, left_out = shipped_sources(repo)
            sources += chart_sources(tools.helm, CHART_CASES, repo)
    except subprocess.CalledProcessError as e:
        print(f"{' '.join(map(str, e.cmd))} failed:\n{e.stderr}", file=sys.stderr)
        return 2
    report = validate(tools, sources, sorted((repo / "crds").glob("*.yaml")))
    for name, why in left_out.items():
        print(f"not validated: {name}: {why}")
    for skipped in report.skipped:
        print(f"skipped {skipped}")
    for finding in report.findings:
        print(f"INVALID {finding}")
    for name, count in report.checked.items():
        if count == 0:
            print(f"INVALID {name}: no Kubernetes object in it")
    total = sum(report.checked.values())
    verdict = "ok" if report.ok else "FAILED"
    print(f"{verdict}: {total} resources in {len(report.checked)} sources, {len(report.findings)} problems")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
