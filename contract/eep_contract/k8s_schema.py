"""Kubernetes' own schema of a pod spec, as a structural CRD schema (the CRD's `spec.template.spec`).

The source is Kubernetes' published OpenAPI v3 document of core/v1 (`api/openapi-spec/v3/api__v1_openapi.json`
in the `k8s.io/kubernetes` module at the control plane's pinned `KUBE_VERSION`, hack/versions.env). The
definitions `io.k8s.api.core.v1.PodSpec` references are vendored in `schemas/core-v1-podspec.json`, so
generating the CRD needs no Go toolchain; `python -m eep_contract.k8s_schema OPENAPI_FILE` refreshes that file
after a Kubernetes bump.

`pod_spec_schema()` rewrites the definitions the way controller-gen writes an embedded core type into a CRD
(what LeaderWorkerSet's `workerTemplate` carries): references inlined, `resource.Quantity` and `IntOrString`
as `x-kubernetes-int-or-string` unions, strategic-merge-patch and union extensions dropped (the API server
refuses unknown `x-kubernetes-*` keys in a CRD), embedded ObjectMeta cut to labels and annotations. Two
deliberate cuts keep the CRD small (well under the 256 KiB `kubectl apply` annotation limit; etcd's limit is
1.5 MiB):
- descriptions keep their first sentence (`kubectl explain` still names every field and what it is);
- `ephemeralContainers` is left out: the API server refuses it on pod creation anyway (it is added through the
  pod's `ephemeralcontainers` subresource, never by a controller).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

Schema = dict[str, Any]

KUBE_VERSION = "v1.36.3"
"""The Kubernetes release the vendored definitions come from (hack/versions.env's `KUBE_VERSION` when they
were last refreshed; tests/contract checks the two agree)."""
POD_SPEC = "io.k8s.api.core.v1.PodSpec"
VENDORED = "schemas/core-v1-podspec.json"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

# controller-gen's pattern for resource.Quantity (Kubernetes' own schema of it is a bare string); so a
# malformed quantity fails at `kubectl apply`, not when the operator creates the pod.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# Keys a CRD's structural schema accepts, beyond the ones rewritten below.
_KEPT = {
    "type",
    "required",
    "enum",
    "default",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
}
_FORMATS = {"int32", "int64", "double", "byte", "date-time"}
_LEFT_OUT = {POD_SPEC: {"ephemeralContainers"}}
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)`'\"])\.(\s|$)")


def first_sentence(text: str) -> str:
    """The first sentence of a Kubernetes field description, whitespace folded."""
    flat = " ".join(text.split())
    m = _SENTENCE_END.search(flat)
    return flat[: m.start() + 1] if m else flat


def _closure(defs: dict[str, Schema], root: str) -> dict[str, Schema]:
    out: dict[str, Schema] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    name = value.rsplit("/", 1)[-1]
                    if name not in out:
                        out[name] = defs[name]
                        walk(defs[name])
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    out[root] = defs[root]
    walk(defs[root])
    return dict(sorted(out.items()))


@cache
def vendored_definitions() -> dict[str, Schema]:
    """The vendored OpenAPI v3 definitions: name -> schema (`$ref`s between them)."""
    text = resources.files("eep_contract").joinpath(VENDORED).read_text()
    defs: dict[str, Schema] = json.loads(text)["definitions"]
    return defs


def _int_or_string(description: str | None, *, pattern: str | None = None) -> Schema:
    node: Schema = {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}
    if pattern:
        node["pattern"] = pattern
    if description:
        node["description"] = description
    return node


def _convert(
    node: Schema, defs: dict[str, Schema], stack: tuple[str, ...], description: str | None
) -> Schema:
    node = dict(node)
    description = description or node.get("description")
    ref = node.pop("$ref", None)
    if ref is None and len(node.get("allOf", [])) == 1:
        ref = node.pop("allOf")[0]["$ref"]
    if ref is not None:
        name = ref.rsplit("/", 1)[-1]
        if name == QUANTITY:
            return _int_or_string(_short(description), pattern=QUANTITY_PATTERN)
        if name == INT_OR_STRING:
            return _int_or_string(_short(description))
        if name == OBJECT_META:
            return template_metadata_schema(_short(description))
        if name in stack:
            raise ValueError(f"recursive Kubernetes schema: {' -> '.join((*stack, name))}")
        return _convert(defs[name], defs, (*stack, name), description)
    out: Schema = {}
    if description:
        out["description"] = _short(description)
    for key, value in node.items():
        if key in _KEPT:
            if key == "default" and value in ({}, []):
                continue  # Go's zero value, written on every embedded struct: noise
            out[key] = value
        elif key == "format" and value in _FORMATS:
            out[key] = value
    props = node.get("properties")
    if props is not None:
        left_out = _LEFT_OUT.get(stack[-1], set()) if stack else set()
        out["properties"] = {
            name: _convert(prop, defs, stack, None) for name, prop in props.items() if name not in left_out
        }
        out.setdefault("type", "object")
    if "items" in node:
        out["items"] = _convert(node["items"], defs, stack, None)
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _convert(node["additionalProperties"], defs, stack, None)
    return out


def _drop_empty_defaults(node: Schema, keep: frozenset[str]) -> None:
    """Remove Go's zero-value string default (`default: ""`, on most strings) except on the optional keys of a
    map-list (`keep`): the API server requires those to be required or defaulted (a required key keeps no
    default, so a container without a name is refused at `kubectl apply`)."""
    required = set(node.get("required", ()))
    for name, prop in node.get("properties", {}).items():
        if prop.get("default") == "" and (name not in keep or name in required):
            del prop["default"]
        _drop_empty_defaults(prop, frozenset())
    items = node.get("items")
    if isinstance(items, dict):
        if items.get("default") == "":
            del items["default"]
        _drop_empty_defaults(items, frozenset(node.get("x-kubernetes-list-map-keys", ())))
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        _drop_empty_defaults(extra, frozenset())


BOUNDS: dict[tuple[str, ...], dict[str, int]] = {
    ("containers",): {"maxItems": 64},
    ("containers", "[]", "name"): {"maxLength": 63},
    ("containers", "[]", "env"): {"maxItems": 1024},
    ("containers", "[]", "env", "[]", "name"): {"maxLength": 256},
    ("initContainers",): {"maxItems": 64},
    ("initContainers", "[]", "name"): {"maxLength": 63},
}
"""Limits the CRD adds to Kubernetes' schema (which has none), so the API server can bound the cost of the CEL
rules on the engine container: a container name is a DNS label (63, Kubernetes' own validation), the others
are
far above any real pod (64 containers or init containers, 1024 variables, 256-character names)."""


def _bound(schema: Schema) -> None:
    for path, limits in BOUNDS.items():
        node = schema
        for step in path:
            node = node["items"] if step == "[]" else node["properties"][step]
        node.update(limits)


def _short(description: str | None) -> str | None:
    return first_sentence(description) if description else None


def template_metadata_schema(description: str | None = None) -> Schema:
    """Embedded ObjectMeta as a pod template carries it: labels and annotations (as controller-gen's
    `crd:generateEmbeddedObjectMeta` keeps them; name, namespace and the rest belong to the object made from
    it)."""
    node: Schema = {
        "type": "object",
        "properties": {
            "labels": {
                "description": "Map of string keys and values that can be used to organize and categorize "
                "objects.",
                "type": "object",
                "additionalProperties": {"type": "string"},
            },
            "annotations": {
                "description": "Unstructured key value map stored with a resource.",
                "type": "object",
                "additionalProperties": {"type": "string"},
            },
        },
    }
    if description:
        node = {"description": description, **node}
    return node


def pod_spec_schema() -> Schema:
    """core/v1 PodSpec as a structural CRD schema (no `$ref`, no `allOf`; see the module docstring).

    Raises ValueError if the vendored definitions are recursive (they are not in Kubernetes 1.36)."""
    defs = vendored_definitions()
    schema = _convert(defs[POD_SPEC], defs, (POD_SPEC,), None)
    _drop_empty_defaults(schema, keep=frozenset())
    _bound(schema)
    schema.pop("description", None)
    # A template may leave `containers` out: the operator adds the engine container.
    schema.pop("required", None)
    return schema


def vendor(openapi_file: Path) -> str:
    """The vendored file's text from Kubernetes' `api__v1_openapi.json`: PodSpec and what it references."""
    doc = json.loads(openapi_file.read_text())
    closure = _closure(doc["components"]["schemas"], POD_SPEC)
    body = {
        "source": "k8s.io/kubernetes api/openapi-spec/v3/api__v1_openapi.json, components.schemas, closure "
        "of " + POD_SPEC,
        "definitions": closure,
    }
    return json.dumps(body, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Vendor Kubernetes' PodSpec definitions into the contract.")
    parser.add_argument(
        "openapi", type=Path, help="api/openapi-spec/v3/api__v1_openapi.json of k8s.io/kubernetes"
    )
    args = parser.parse_args(argv)
    target = Path(str(resources.files("eep_contract").joinpath(VENDORED)))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(vendor(args.openapi))
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
