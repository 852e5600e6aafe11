"""What the operator sees: the CR's identity, its member pods and the nodes they run on, as plain values.

`observe()` turns raw API objects (JSON dicts with camelCase keys, as the API server sends them) into
frozen dataclasses, so the planner never digs through dicts and tests build observations directly.
Called by `eep_operator.reconcile`; pure.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from eep_contract.v1alpha1 import ENGINE_CONTAINER, GROUP, KIND, Annotations, Kueue, Labels

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
    taint_deleted: bool = False
    """Deleted by the taint manager (condition DisruptionTarget, reason DeletionByTaintManager): its node
    carries a NoExecute taint it does not tolerate (out-of-service, unreachable): the node's loss, whatever
    the operator's view of the node says yet."""
    reason: str = ""
    message: str = ""
    node: str | None = None
    created: datetime | None = None
    ip: str | None = None
    """`status.podIP`, once the pod has one (the SGLang admission trigger's target on member 0)."""
    epoch: int = 0
    """The membership epoch the pod was created at (its `elasticep.io/epoch` annotation)."""
    finalizers: tuple[str, ...] = ()
    """`metadata.finalizers`: what holds a Terminating pod besides the kubelet."""
    waiting_reason: str | None = None
    """Why the pod does not run yet, as a kubelet or scheduler says it: a container's `state.waiting.reason`
    other than the routine ContainerCreating/PodInitializing (ErrImagePull, ImagePullBackOff,
    CreateContainerConfigError...), or `Unschedulable` (PodScheduled False)."""
    waiting_message: str = ""
    scheduled: datetime | None = None
    """When it was bound to a node (its PodScheduled condition's lastTransitionTime)."""
    owner_uid: str | None = None
    """uid of the pod's controller ownerReference (the ElasticEPCluster that created it), if any."""
    pod_group: str | None = None
    """The Kueue pod group the pod belongs to (`Kueue.POD_GROUP_LABEL`), if any."""
    revision: str | None = None
    """The spec revision it was rendered from (`Annotations.REVISION`); None on pods of older operators."""


@dataclass(frozen=True)
class NodeObs:
    """A node's readiness: `ready` only when its Ready condition is True (False or Unknown: lost)."""

    name: str
    ready: bool
    out_of_service: bool = False
    """Tainted `node.kubernetes.io/out-of-service` (Kubernetes' non-graceful node shutdown): a person or a
    tool says its pods' processes are gone."""
    unschedulable: bool = False
    """Cordoned (`spec.unschedulable`): what `kubectl drain` does before it evicts."""


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
    service_spec: Mapping[str, Any] | None = None
    """The Service's `spec` when it was read (its ports and selector are compared with the group's)."""
    pdb_exists: bool = True
    foreign_pods: tuple[PodObs, ...] = ()
    """Pods with this cluster's label whose controller is another ElasticEPCluster (a deleted one of the same
    name whose pods the garbage collector has not removed yet): never members, but they hold their names."""
    epoch_floor: int = 0
    """The highest epoch the operator ever published for this CR (the CR's `elasticep.io/epoch-floor`
    annotation, written before each status that raises the epoch): survives a lost status."""
    incarnation_floor: int = 0
    """The highest incarnation any member's status ever named (the CR's `elasticep.io/incarnation-floor`
    annotation, written before each status that raises it): survives a lost status."""
    group_record: Mapping[str, Any] | None = None
    """The CR's `elasticep.io/group-spec` annotation, parsed: {"spec": the group's pod-shaping spec,
    "restartGeneration": int}; None when absent or unreadable."""
    live_ranks: frozenset[int] | None = None
    """The group's own view (member 0's `GroupView.live_ranks`), asked only while a member's node is lost;
    None when not asked or member 0 did not answer."""
    refused: str | None = None
    """The API server's answer to the last request it refused for good (403, 422), while the operator waits
    before trying again; None otherwise."""

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
    # The engine container alone says whether the member runs: a sidecar that ends (a log shipper's crash)
    # leaves the ranks serving, and one that keeps running does not keep a dead engine's member alive.
    engine = [cs for cs in container_statuses if cs.get("name") == ENGINE_CONTAINER]
    running = False
    terminated: Termination | None = None
    for cs in engine or container_statuses:
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
    waiting_reason, waiting_message = _waiting(status, conditions)
    owner = next(
        (o for o in meta.get("ownerReferences") or [] if o.get("controller")),
        None,
    )
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
        taint_deleted=any(
            c.get("type") == "DisruptionTarget"
            and c.get("status") == "True"
            and c.get("reason") == "DeletionByTaintManager"
            for c in status.get("conditions") or []
        ),
        reason=reason,
        message=status.get("message") or "",
        node=spec.get("nodeName") or None,
        created=_time(meta.get("creationTimestamp")),
        ip=status.get("podIP") or None,
        epoch=_int(annotations.get(Annotations.EPOCH), 0),
        finalizers=tuple(meta.get("finalizers") or ()),
        pod_group=labels.get(Kueue.POD_GROUP_LABEL) or None,
        revision=annotations.get(Annotations.REVISION) or None,
        waiting_reason=waiting_reason,
        waiting_message=waiting_message,
        owner_uid=None if owner is None else owner.get("uid"),
        scheduled=next(
            (
                _time(c.get("lastTransitionTime"))
                for c in status.get("conditions") or []
                if c.get("type") == "PodScheduled" and c.get("status") == "True"
            ),
            None,
        ),
    )


_ROUTINE_WAITING = frozenset({"ContainerCreating", "PodInitializing"})


def _waiting(status: Obj, conditions: Mapping[Any, Any]) -> tuple[str | None, str]:
    """(reason, message) of a pod that waits for something other than the routine start of its containers."""
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason and reason not in _ROUTINE_WAITING:
            return reason, waiting.get("message") or ""
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return c.get("reason") or "Unschedulable", c.get("message") or ""
    return None, ""


OUT_OF_SERVICE_TAINT = "node.kubernetes.io/out-of-service"


def observe_node(node: Obj) -> NodeObs:
    meta = node.get("metadata") or {}
    conditions = {c.get("type"): c.get("status") for c in (node.get("status") or {}).get("conditions") or []}
    taints = (node.get("spec") or {}).get("taints") or []
    return NodeObs(
        name=meta.get("name", ""),
        ready=conditions.get("Ready") == "True",
        out_of_service=any(t.get("key") == OUT_OF_SERVICE_TAINT for t in taints),
        unschedulable=bool((node.get("spec") or {}).get("unschedulable")),
    )


def observe(
    cr: Obj,
    pods: Iterable[Obj],
    nodes: Iterable[Obj],
    *,
    service_exists: bool,
    service_spec: Mapping[str, Any] | None = None,
    pdb_exists: bool = True,
    live_ranks: frozenset[int] | None = None,
    refused: str | None = None,
) -> Observed:
    """The CR's identity plus its member pods and the nodes.

    A pod is a member pod only if its controller ownerReference is this CR (its uid), not merely because it
    carries the cluster's labels: a copy (`kubectl debug --copy-to`) or the pod of a deleted CR of the same
    name is not a member. Pods of a deleted CR of the same name (controller: another ElasticEPCluster uid)
    are kept apart in `foreign_pods`; any other labelled pod is ignored."""
    meta = cr.get("metadata") or {}
    name, uid = meta.get("name", ""), meta.get("uid", "")
    owned: list[PodObs] = []
    foreign: list[PodObs] = []
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if labels.get(Labels.CLUSTER) != name:
            continue
        obs = observe_pod(pod)
        if obs is None or obs.member < 0:
            continue
        if obs.owner_uid == uid:
            owned.append(obs)
        elif obs.owner_uid is not None and _owned_by_a_cluster(pod):
            foreign.append(obs)
    annotations = meta.get("annotations") or {}
    return Observed(
        name=name,
        namespace=meta.get("namespace", ""),
        uid=uid,
        generation=_int(meta.get("generation"), 1),
        pods=tuple(sorted(owned, key=lambda p: (p.member, p.incarnation, p.name))),
        nodes={n.name: n for n in (observe_node(n) for n in nodes)},
        service_exists=service_exists,
        service_spec=service_spec,
        pdb_exists=pdb_exists,
        foreign_pods=tuple(foreign),
        epoch_floor=_int(annotations.get(Annotations.EPOCH_FLOOR), 0),
        incarnation_floor=_int(annotations.get(Annotations.INCARNATION_FLOOR), 0),
        group_record=_group_record(annotations.get(Annotations.GROUP_SPEC)),
        live_ranks=live_ranks,
        refused=refused,
    )


def _group_record(raw: Any) -> Mapping[str, Any] | None:
    try:
        record = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("spec"), dict):
        return None
    return record


def _owned_by_a_cluster(pod: Obj) -> bool:
    return any(
        o.get("controller") and o.get("kind") == KIND and str(o.get("apiVersion", "")).startswith(GROUP + "/")
        for o in (pod.get("metadata") or {}).get("ownerReferences") or []
    )
