"""Spec revisions: which spec a member pod is rendered from, and how two specs differ. Pure.

A running Mooncake group can only admit a replacement that runs what the group runs (the same image, the
same coordinator port, engine arguments, timeouts...), so the planner renders every replacement from the spec
the group was started with (`status.groupSpec`), and only a whole-group restart moves the group to a newer
spec (`spec.updateStrategy`). The revision is a short hash of the pod-shaping fields: everything but the
operator's own policy (`recovery`, `updateStrategy`, `restartGeneration`), which takes effect at once.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from eep_contract.v1alpha1 import ElasticEPClusterSpec

OPERATOR_ONLY = ("recovery", "updateStrategy", "restartGeneration")
"""Spec fields (wire names) that shape no pod: they never make a new revision."""


def pod_shaping(spec: ElasticEPClusterSpec) -> dict[str, Any]:
    """The spec's pod-shaping fields as wire JSON (camelCase, defaults included)."""
    wire = spec.model_dump(mode="json", by_alias=True)
    return {k: v for k, v in wire.items() if k not in OPERATOR_ONLY}


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
    merged = {**group, **{k: wire[k] for k in OPERATOR_ONLY if k in wire}}
    return ElasticEPClusterSpec.model_validate(merged)
