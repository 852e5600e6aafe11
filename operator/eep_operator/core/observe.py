"""What the operator sees: the CR's identity, its member pods and the nodes they run on, as plain values.

`observe()` turns raw API objects (JSON dicts with camelCase keys, as the API server sends them) into
frozen dataclasses, so the planner never digs through dicts and tests build observations directly.
Called by `eep_operator.reconcile`; pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from eep_contract.v1alpha1 import Annotations, Labels

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class Termination:
    """How the member's container ended (`state.terminated` or, for a container that restarted, its last)."""

    exit_code: int | None
    reason: str
    message: str


@dataclass(frozen=True)
class PodObs:
    """One member pod as observed."""

    name: str
    uid: str
    member: int
    incarnation: int
    join: bool
    phase: str = "Pending"
    """Pod phase: Pending, Running, Succeeded, Failed, Unknown."""
    ready: bool = False
    """Ready condition True: for a member pod, its ranks have joined."""
    running: bool = False
    """The main container is running."""
    terminated: Termination | None = None
    deleting: bool = False
    """deletionTimestamp is set (Terminating)."""
    deletion_started: datetime | None = None
    """deletionTimestamp minus the grace period: when the deletion was requested."""
    evicted: bool = False
    reason: str = ""
    message: str = ""
    node: str | None = None
    created: datetime | None = None
    ip: str | None = None
    """`status.podIP`, once the pod has one (the SGLang admission trigger's target on member 0)."""


@dataclass(frozen=True)
class NodeObs:
    """A node's readiness: `ready` only when its Ready condition is True (False or Unknown: lost)."""

    name: str
    ready: bool


@dataclass(frozen=True)
class Observed:
    """Everything `plan()` needs to know about the world besides the CR's spec and status."""

    name: str
    namespace: str
    uid: str
    generation: int = 1
    pods: tuple[PodObs, ...] = ()
    nodes: Mapping[str, NodeObs] = field(default_factory=dict)
    service_exists: bool = True

    def pods_of(self, member: int) -> tuple[PodObs, ...]:
        return tuple(p for p in self.pods if p.member == member)


def _time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def observe_pod(pod: Obj) -> PodObs | None:
    """A member pod as a `PodObs`; None for a pod without a member label (not ours to judge)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if Labels.MEMBER not in labels:
        return None
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    container_statuses = status.get("containerStatuses") or []
    running = False
    terminated: Termination | None = None
    for cs in container_statuses:
        state = cs.get("state") or {}
        last = cs.get("lastState") or {}
        if "running" in state and state["running"] is not None:
            running = True
        term = state.get("terminated") or last.get("terminated")
        if term and terminated is None:
            terminated = Termination(
                exit_code=term.get("exitCode"),
                reason=term.get("reason") or "",
                message=term.get("message") or "",
            )
    deletion = _time(meta.get("deletionTimestamp"))
    grace = _int(meta.get("deletionGracePeriodSeconds"), 0)
    deletion_started = None
    if deletion is not None:
        deletion_started = deletion - timedelta(seconds=grace)
    reason = status.get("reason") or ""
    return PodObs(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        member=_int(labels.get(Labels.MEMBER), -1),
        incarnation=_int(annotations.get(Annotations.INCARNATION), 0),
        join=annotations.get(Annotations.JOIN) == "true",
        phase=status.get("phase") or "Pending",
        ready=conditions.get("Ready") == "True",
        running=running,
        terminated=terminated,
        deleting=deletion is not None,
        deletion_started=deletion_started,
        evicted=reason == "Evicted" or conditions.get("DisruptionTarget") == "True",
        reason=reason,
        message=status.get("message") or "",
        node=spec.get("nodeName") or None,
        created=_time(meta.get("creationTimestamp")),
        ip=status.get("podIP") or None,
    )


def observe_node(node: Obj) -> NodeObs:
    meta = node.get("metadata") or {}
    conditions = {c.get("type"): c.get("status") for c in (node.get("status") or {}).get("conditions") or []}
    return NodeObs(name=meta.get("name", ""), ready=conditions.get("Ready") == "True")


def observe(cr: Obj, pods: Iterable[Obj], nodes: Iterable[Obj], *, service_exists: bool) -> Observed:
    """The CR's identity plus its member pods (by label; pods of other clusters are ignored) and the nodes."""
    meta = cr.get("metadata") or {}
    name = meta.get("name", "")
    observed_pods: list[PodObs] = []
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if labels.get(Labels.CLUSTER) != name:
            continue
        obs = observe_pod(pod)
        if obs is not None and obs.member >= 0:
            observed_pods.append(obs)
    return Observed(
        name=name,
        namespace=meta.get("namespace", ""),
        uid=meta.get("uid", ""),
        generation=_int(meta.get("generation"), 1),
        pods=tuple(sorted(observed_pods, key=lambda p: (p.member, p.incarnation, p.name))),
        nodes={n.name: n for n in (observe_node(n) for n in nodes)},
        service_exists=service_exists,
    )
