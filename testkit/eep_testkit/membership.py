"""Membership readers: the `Membership` of an ElasticEPCluster object, or of a snapshot file, parsed with the
contract (`eep_contract.wire.parse_membership`) instead of by hand.

Who uses it: the demo (status samples, `wait_ready`), tests/alerts and tests/chart (is the cluster at full
capacity), tests of the operator stand-in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eep_contract.v1alpha1 import Membership
from eep_contract.wire import parse_membership

__all__ = ["at_full_capacity", "membership_of", "read_membership"]


def membership_of(obj: Mapping[str, Any] | None) -> Membership:
    """The membership of a CR object (raw JSON), of its status, or a snapshot itself; an empty
    `Membership()` (epoch 0, no ranks) when there is none yet. Raises ValueError when one is there but does
    not parse. Pure."""
    if not obj:
        return Membership()
    status = obj.get("status") if isinstance(obj.get("status"), dict) else obj
    if not isinstance(status, Mapping):
        return Membership()
    holder = status.get("membership") if isinstance(status.get("membership"), dict) else status
    if not isinstance(holder, Mapping) or "epoch" not in holder:
        return Membership()
    return parse_membership(dict(holder))


def at_full_capacity(cr: Mapping[str, Any] | None) -> bool:
    """Phase Running and every rank of `status.worldSize` active. Pure."""
    status = (cr or {}).get("status") or {}
    world = int(status.get("worldSize") or 0)
    active = membership_of(cr).active_ranks
    return status.get("phase") == "Running" and world > 0 and sorted(active) == list(range(world))


def read_membership(path: Path) -> Membership | None:
    """The snapshot in `path`; None while the file does not exist. Raises ValueError when it does not
    parse."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return parse_membership(text)
