"""Generate the CRD manifest and the configuration reference from the contract models.

`python -m eep_contract.crd` writes `crds/elasticep.io_elasticepclusters.yaml` (and the chart's copy)
and `docs/reference.md`
(`--check` compares instead and exits 1 on a difference). Pydantic emits JSON Schema 2020-12 with `$ref`s
and `anyOf` for optional fields; Kubernetes wants a structural OpenAPI v3.0 schema, so `to_structural`
inlines references, drops nulls and titles, and rewrites the few keywords that differ.
"""

from __future__ import annotations

import argparse
import ast
import enum
import inspect
import itertools
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from eep_contract import k8s_schema
from eep_contract import v1alpha1 as api

Schema = dict[str, Any]

CRD_FILE = Path("crds") / f"{api.GROUP}_{api.PLURAL}.yaml"
# Helm installs CRDs only from the chart's own crds/ folder, so the chart carries a copy; written here too,
# so the two can never drift.
CHART_CRD_FILE = Path("charts") / "elastic-ep-operator" / CRD_FILE
REFERENCE_FILE = Path("docs") / "reference.md"
POD_SPEC_PATH = "spec.template.spec"


@cache
def enum_value_docs(enum_cls: type[enum.Enum]) -> dict[str, str]:
    """Docstrings written under each enum member, read from the source (Python keeps none at runtime)."""
    tree = ast.parse(inspect.getsource(enum_cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for stmt, nxt in itertools.pairwise(body):
        if (
            isinstance(stmt, ast.Assign)
            and isinstance(stmt.targets[0], ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[enum_cls[stmt.targets[0].id].value] = " ".join(nxt.value.value.split())
    return docs


def _enum_classes() -> dict[str, type[enum.Enum]]:
    return {
        name: obj
        for name, obj in vars(api).items()
        # The API's own enums and the contract's that it uses (`env.DataPath`)
        if inspect.isclass(obj) and issubclass(obj, enum.Enum) and obj.__module__.startswith("eep_contract.")
    }


def _describe_enum(description: str, enum_name: str) -> str:
    docs = enum_value_docs(_enum_classes()[enum_name])
    if not docs:
        return description
    values = "; ".join(f"`{value}`: {doc}" for value, doc in docs.items())
    return f"{description} One of: {values}".strip()


def to_structural(node: Any, defs: dict[str, Schema]) -> Any:
    """Rewrite a pydantic JSON schema node into a Kubernetes structural schema node."""
    if isinstance(node, list):
        return [to_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    description = node.pop("description", None)
    if node.pop(api.POD_SPEC_SCHEMA_MARK, False):
        rules = node.get("x-kubernetes-validations", [])
        pod_spec = {"description": " ".join((description or "").split()), **k8s_schema.pod_spec_schema()}
        containers = pod_spec["properties"]["containers"]["items"]
        containers["x-kubernetes-validations"] = [
            {"rule": r, "message": m} for r, m in api.ENGINE_CONTAINER_RULES
        ]
        return pod_spec | ({"x-kubernetes-validations": rules} if rules else {})
    if "$ref" in node:
        name = node.pop("$ref").rsplit("/", 1)[-1]
        target = dict(defs[name])
        if "enum" in target:
            description = _describe_enum(description or target.get("description", ""), name)
        elif description is None:
            description = target.get("description")
        target.pop("description", None)
        node = {**target, **node}
    if node.get("x-kubernetes-int-or-string"):
        return node  # a Kubernetes quantity: its anyOf of integer and string is structural as it stands
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {options}")
        inner = to_structural(options[0], defs)
        description = description or inner.pop("description", None)
        inner.pop("description", None)
        node = {**inner, **node}
    node.pop("title", None)
    if node.get("default", "x") is None:
        node.pop("default")
    if node.get("additionalProperties") is False or node.get("additionalProperties") is True:
        node.pop("additionalProperties")
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), int | float) and not isinstance(node.get(bound), bool):
            node[plain] = node.pop(bound)
            node[bound] = True
    if node.get("x-kubernetes-preserve-unknown-fields"):
        node.pop("additionalProperties", None)
        node["type"] = "object"
    if node.get("format") == "date-time":
        node["type"] = "string"
    result: Schema = {}
    if description:
        result["description"] = " ".join(description.split())
    for key, value in node.items():
        if key in ("properties", "$defs"):
            result[key] = {k: to_structural(v, defs) for k, v in value.items()}
        elif key in ("items", "additionalProperties"):
            result[key] = to_structural(value, defs)
        else:
            result[key] = value
    result.pop("$defs", None)
    return result


def _add_object_defaults(schema: Schema, model: type[BaseModel]) -> None:
    """Give defaulted nested objects `default: {}` so the API server fills in their own defaults."""
    for name, field in model.model_fields.items():
        alias = field.alias or name
        prop = schema.get("properties", {}).get(alias)
        if prop is None:
            continue
        annotation = field.annotation
        if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
            if field.default_factory is not None:
                prop["default"] = {}
            _add_object_defaults(prop, annotation)


def model_schema(model: type[BaseModel]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema: Schema = to_structural(raw, raw.get("$defs", {}))
    _add_object_defaults(schema, model)
    return schema


def openapi_schema() -> Schema:
    spec = model_schema(api.ElasticEPClusterSpec)
    status = model_schema(api.ElasticEPClusterStatus)
    return {
        "type": "object",
        "description": "An expert-parallel LLM deployment whose members are recovered one by one "
        "while the rest keep serving.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd_manifest() -> Schema:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "elastic-ep-operator"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {
                            "name": "Active",
                            "type": "integer",
                            "jsonPath": ".status.activeRankCount",
                            "description": "Active ranks",
                        },
                        {
                            "name": "World",
                            "type": "integer",
                            "jsonPath": ".status.worldSize",
                            "description": "World size (nodes x ranksPerNode)",
                        },
                        {"name": "Epoch", "type": "integer", "jsonPath": ".status.membership.epoch"},
                        {"name": "Restarts", "type": "integer", "jsonPath": ".status.totalRestarts"},
                        # priority 1: only in `kubectl get eep -o wide`.
                        {
                            "name": "Failed",
                            "type": "integer",
                            "jsonPath": ".status.failedMemberCount",
                            "description": "Members down, no replacement running yet (Failed, Restarting)",
                            "priority": 1,
                        },
                        {
                            "name": "Joining",
                            "type": "integer",
                            "jsonPath": ".status.joiningRankCount",
                            "description": "Ranks waiting to be admitted (membership.joiningRanks)",
                            "priority": 1,
                        },
                        {
                            "name": "Last-Recovery",
                            "type": "number",
                            "jsonPath": ".status.lastRecoverySeconds",
                            "description": "Seconds the last recovery took (failure to every rank active)",
                            "priority": 1,
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `python -m eep_contract.crd` from eep_contract/v1alpha1.py. Do not edit.\n"
    return header + yaml.safe_dump(crd_manifest(), sort_keys=False, width=110)


def _reference_rows(schema: Schema, prefix: str, rows: list[tuple[str, str, str, str]]) -> None:
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        kind = prop.get("type", "object")
        if kind == "array":
            kind = f"[]{prop.get('items', {}).get('type', 'object')}"
        if "enum" in prop:
            kind = " \\| ".join(f"`{v}`" for v in prop["enum"])
        facts = []
        if name in required:
            facts.append("required")
        if "default" in prop and prop["default"] not in ({}, []):
            facts.append(f"default `{prop['default']}`")
        for key, word, strict in (("minimum", "min", "> "), ("maximum", "max", "< ")):
            if key in prop:
                exclusive = prop.get(f"exclusive{key.capitalize()}") is True
                facts.append(f"{strict}{prop[key]}" if exclusive else f"{word} {prop[key]}")
        if "maxItems" in prop:
            facts.append(f"max items {prop['maxItems']}")
        rows.append((path, kind, ", ".join(facts), prop.get("description", "").replace("|", "\\|")))
        if path == POD_SPEC_PATH:
            continue  # Kubernetes' PodSpec: its reference is Kubernetes' own (`kubectl explain` shows it too)
        if prop.get("type") == "object" and "properties" in prop:
            _reference_rows(prop, path, rows)
        items = prop.get("items", {})
        if isinstance(items, dict) and "properties" in items:
            _reference_rows(items, f"{path}[]", rows)


def reference_markdown() -> str:
    schema = openapi_schema()
    out = [
        "# ElasticEPCluster reference (`elasticep.io/v1alpha1`)",
        "",
        "Generated by `python -m eep_contract.crd` from `contract/eep_contract/v1alpha1.py`; "
        "do not edit by hand. `kubectl explain eep.spec` shows the same text.",
        "",
    ]
    out += pod_template_section()
    for section in ("spec", "status"):
        sub = schema["properties"][section]
        out += [f"## {section}", "", sub.get("description", ""), ""]
        rules = sub.get("x-kubernetes-validations", [])
        if rules:
            out += ["Cross-field rules (checked by the API server):", ""]
            out += [f"- {rule['message']}" for rule in rules]
            out += [""]
        rows: list[tuple[str, str, str, str]] = []
        _reference_rows(sub, section, rows)
        out += ["| field | type | constraints | description |", "| --- | --- | --- | --- |"]
        out += [f"| `{p}` | {k} | {f} | {d} |" for p, k, f, d in rows]
        out += [""]
    return "\n".join(out)


def pod_template_section() -> list[str]:
    """The reference's "The pod template" section: what the operator does to each part of `spec.template`."""
    engine = f"`{api.ENGINE_CONTAINER}`"
    owned_env = ", ".join(f"`{n}`" for n in api.OWNED_ENV)
    rows = [
        ("`metadata.labels`, `metadata.annotations`", "merged",
         f"the operator's keys win (`{api.OWNED_LABEL_PREFIX}*`, `app.kubernetes.io/managed-by`); keys under "
         f"`{api.OWNED_LABEL_PREFIX}` are rejected"),
        ("`spec.restartPolicy`", "set to `Never`",
         "rejected unless `Never`: every restart is the operator's, in a new pod with the join flag"),
        ("`spec.hostname`, `spec.subdomain`", "set", "rejected: the member's stable DNS name"),
        (f"`metadata.labels[{api.Kueue.POD_GROUP_LABEL}]`, "
         f"`metadata.annotations[{api.Kueue.POD_GROUP_TOTAL_ANNOTATION}]`",
         "set when the template names a Kueue LocalQueue",
         f"rejected: one Kueue pod group per group start (`{api.Kueue.QUEUE_LABEL}` in the labels asks for "
         "gang admission: docs/install.md, \"Gang admission with Kueue\")"),
        (f"container {engine}: `image`", "set from `spec.image`", "rejected"),
        (f"container {engine}: `command`, `args`", "set",
         "`args` rejected; a `command` of the template is kept as a wrapper and the engine's command line "
         "becomes `args`"),
        (f"container {engine}: `env`", "merged", f"the contract's variables first, then the template's; "
         f"{owned_env} rejected; `MC_FORCE_TCP` follows `elasticEP.forceTCP`"),
        (f"container {engine}: `ports`", "merged",
         "the `http` port (`engine.port`) replaces a template port of that name or number"),
        (f"container {engine}: `readinessProbe`, `livenessProbe`", "default",
         "the operator's only when the template has none (readiness: how the operator learns that a "
         "replacement joined; liveness: SGLang's scheduler check)"),
        (f"container {engine}: `terminationMessagePolicy`", "default", "`FallbackToLogsOnError`"),
        ("everything else", "kept", "volumes, init containers, sidecars, `securityContext`, `resources`, "
         "`hostNetwork`, `dnsPolicy`, `resourceClaims`, `schedulerName`, affinity, tolerations, ..."),
    ]  # fmt: skip
    return [
        "## The pod template",
        "",
        "`spec.template` is a core/v1 PodTemplateSpec, checked against Kubernetes' own PodSpec schema "
        f"(Kubernetes {k8s_schema.KUBE_VERSION}, `eep_contract.k8s_schema`); "
        f"`kubectl explain eep.spec.template.spec` shows it. The container named {engine} runs the "
        "engine; the operator adds it, first, when the template has none. Every member pod, first or "
        "replacement, is the template of the group's revision "
        "(`status.groupSpec`) with these changes:",
        "",
        "| part | operator | notes |",
        "| --- | --- | --- |",
        *[f"| {part} | {what} | {notes} |" for part, what, notes in rows],
        "",
        "Only the engine container decides whether a member runs: a sidecar that ends leaves the member "
        "serving. `ephemeralContainers` is not part of the schema (the API server refuses it on creation).",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="compare instead of writing; exit 1 on a difference"
    )
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    args = parser.parse_args(argv)
    manifest = crd_yaml()
    wanted = {
        args.root / CRD_FILE: manifest,
        args.root / CHART_CRD_FILE: manifest,
        args.root / REFERENCE_FILE: reference_markdown(),
    }
    return write_or_check(wanted, check=args.check, remedy="make generate")


def write_or_check(wanted: Mapping[Path, str], *, check: bool, remedy: str) -> int:
    """Write each generated file, or with ``check`` compare it with what is committed. Returns the exit
    status: 1 (and a line naming the stale files and ``remedy`` on stderr) when a file differs or is missing.
    Also used by the dashboard generator (`deploy/grafana/dashboard.py`)."""
    stale = []
    for path, text in wanted.items():
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"out of date (run `{remedy}`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
