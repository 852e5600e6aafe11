"""Spec revisions: which spec a member pod is rendered from, and how two specs differ. Pure.

A running Mooncake group can only admit a replacement that runs what the group runs (the same image, the
same coordinator port, engine arguments, timeouts...), so the planner renders every replacement from the spec
the group was started with (`status.groupSpec`), and only a whole-group restart moves the group to a newer
spec (`spec.updateStrategy`). The revision is a short hash of the pod-shaping fields: everything but the
operator's own policy (`OPERATOR_ONLY`: `recovery`, `updateStrategy`, `restartGeneration`, the SGLang
admission trigger), which takes effect at once.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from eep_contract.v1alpha1 import ElasticEPClusterSpec

OPERATOR_ONLY: tuple[tuple[str, ...], ...] = (
    ("recovery",),
    ("updateStrategy",),
    ("restartGeneration",),
    ("engine", "sglang", "admissionTrigger"),
)
"""Spec fields (wire paths) that shape no pod, only what the operator does: they never make a new revision and
take effect at once (the SGLang admission trigger is requests the operator sends to member 0)."""


def _get(wire: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = wire
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _without(wire: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    head, rest = path[0], path[1:]
    if head not in wire:
        return wire
    if not rest:
        return {k: v for k, v in wire.items() if k != head}
    inner = wire[head]
    return {**wire, head: _without(inner, rest)} if isinstance(inner, dict) else wire


def _with(wire: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    head, rest = path[0], path[1:]
    if not rest:
        return {**wire, head: value}
    inner = wire.get(head)
    # The group's spec has no such section (another engine): nothing to carry over.
    return {**wire, head: _with(inner, rest, value)} if isinstance(inner, dict) else wire


def pod_shaping(spec: ElasticEPClusterSpec) -> dict[str, Any]:
    """The spec's pod-shaping fields as wire JSON (camelCase, defaults included)."""
    wire = spec.model_dump(mode="json", by_alias=True)
    for path in OPERATOR_ONLY:
        wire = _without(wire, path)
    return wire


def revision(spec: ElasticEPClusterSpec) -> str:
    """A 12-hex-digit hash of `pod_shaping(spec)` (sha256 of its canonical JSON)."""
    return revision_of(pod_shaping(spec))


def revision_of(shaping: dict[str, Any]) -> str:
    """`revision` of a spec already reduced to its pod-shaping wire fields (`status.groupSpec`)."""
    canonical = json.dumps(shaping, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def changed_fields(old: dict[str, Any], new: dict[str, Any], prefix: str = "", depth: int = 2) -> list[str]:
    """Dotted paths (wire names) whose values differ between two wire dicts, down to `depth` levels."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        path = f"{prefix}{key}"
        if depth > 1 and isinstance(a, dict) and isinstance(b, dict):
            out += changed_fields(a, b, path + ".", depth - 1)
        else:
            out.append(path)
    return out


def with_policy(group: dict[str, Any], current: ElasticEPClusterSpec) -> ElasticEPClusterSpec:
    """The group's pod-shaping spec with the current operator-only policy: what a replacement is rendered
    from. Raises pydantic's ValidationError if `group` is not a valid spec (a status edited by hand)."""
    wire = current.model_dump(mode="json", by_alias=True)
    merged = dict(group)
    for path in OPERATOR_ONLY:
        value = _get(wire, path)
        if value is not None:
            merged = _with(merged, path, value)
    return ElasticEPClusterSpec.model_validate(merged)
