"""What the planner asks for: frozen values, applied by `eep_operator.io.executor` (idempotently, in order).

Kubernetes objects travel as rendered manifests, so the executor needs no knowledge of the spec.
Metric-recording actions carry exactly the labels of docs/dev/interfaces.md; gauges are set from the
new status instead (they describe state, not decisions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from eep_contract.v1alpha1 import ElasticEPClusterStatus
from eep_operator.core.members import Move


@dataclass(frozen=True)
class EnsureService:
    """Create the headless Service if it does not exist."""

    manifest: dict[str, Any] = field(compare=False, hash=False)


@dataclass(frozen=True)
class EnsurePodDisruptionBudget:
    """Create one of the cluster's PodDisruptionBudgets if it does not exist (`podspec.render_pdbs`);
    AlreadyExists is success. Never updated: its spec depends only on the immutable `nodes` and
    `elasticEP.coordinator`."""

    manifest: dict[str, Any] = field(compare=False, hash=False)


@dataclass(frozen=True)
class UpdateService:
    """Bring the existing Service's ports and selector back to `manifest` (a JSON merge patch of its spec):
    the Service follows the group's spec revision, and an edit by hand is undone."""

    manifest: dict[str, Any] = field(compare=False, hash=False)


@dataclass(frozen=True)
class CreatePod:
    """Create a member pod. AlreadyExists is success (a retry after a lost reply)."""

    member: int
    name: str
    join: bool
    incarnation: int
    manifest: dict[str, Any] = field(compare=False, hash=False)


@dataclass(frozen=True)
class DeletePod:
    """Delete a member pod gracefully, only if it still has `uid` (a precondition). NotFound is success."""

    member: int
    name: str
    uid: str
    reason: str


@dataclass(frozen=True)
class ForceDeletePod:
    """Delete with grace period 0: for a pod stuck Terminating on a lost node. NotFound is success."""

    member: int
    name: str
    uid: str


@dataclass(frozen=True)
class ReleaseKueueFinalizer:
    """Remove Kueue's finalizer (`Kueue.FINALIZER`, at `index` of `metadata.finalizers`) from a member pod the
    operator deleted and whose containers have ended, and nothing else; only if the pod still has `uid` and
    the entry at `index` is that finalizer (a JSON patch's `test` ops). NotFound and a failed test are
    success."""

    member: int
    name: str
    uid: str
    index: int


@dataclass(frozen=True)
class EmitEvent:
    """A Kubernetes Event on the CR, and a structured log line with cluster, member and epoch."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    member: int | None = None
    epoch: int = 0


@dataclass(frozen=True)
class RecordFailure:
    """`elasticep_rank_failures_total{reason}`."""

    reason: str


@dataclass(frozen=True)
class RecordMemberRestart:
    """`elasticep_member_restarts_total{member}`."""

    member: int


@dataclass(frozen=True)
class RecordGroupRestart:
    """`elasticep_group_restarts_total{reason}`."""

    reason: str


@dataclass(frozen=True)
class RecordRecovery:
    """`elasticep_recoveries_total{result}`, and the duration histogram when it succeeded."""

    result: Literal["Succeeded", "Failed"]
    seconds: float | None = None


Action = (
    EnsureService
    | UpdateService
    | EnsurePodDisruptionBudget
    | CreatePod
    | DeletePod
    | ForceDeletePod
    | ReleaseKueueFinalizer
    | EmitEvent
    | RecordFailure
    | RecordMemberRestart
    | RecordGroupRestart
    | RecordRecovery
)

KUBE_ACTIONS = (
    EnsureService,
    UpdateService,
    EnsurePodDisruptionBudget,
    CreatePod,
    DeletePod,
    ForceDeletePod,
    ReleaseKueueFinalizer,
)
"""Actions that change the cluster; the rest only report."""


@dataclass(frozen=True)
class Plan:
    """The planner's answer: apply `actions` after writing `status`; look again within `requeue_after` s."""

    actions: tuple[Action, ...]
    status: ElasticEPClusterStatus
    requeue_after: float | None
    moves: tuple[Move, ...] = ()
    """The member state changes this plan made, in order, each checked against the transition table when it
    was made (`eep_operator.core.members.move`); `status` holds their result."""
