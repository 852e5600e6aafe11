"""Label values of the metrics both halves export, and the reasons the operator writes into Events and status.

Who uses it: `eep_operator.core.planner` (failure and group-restart reasons), `eep_operator.metrics`,
`eep_worker.metrics` and the rank runtime (recovery results and phases), the alert rules and dashboards that
select on them (`deploy/prometheus/elasticep-rules.yaml`).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "AdmissionTriggerResult",
    "FailureReason",
    "GroupRestartReason",
    "RecoveryPhase",
    "RecoveryResult",
]


class FailureReason(StrEnum):
    """`elasticep_rank_failures_total{reason}`: the signal that marked a member Failed."""

    CONTAINER_EXIT = "ContainerExit"
    """The engine container terminated (any exit code; the code is kept in `lastExit`)."""
    POD_FAILED = "PodFailed"
    """The pod's phase is Failed without a container termination record."""
    POD_DELETED = "PodDeleted"
    """The pod was deleted (or is being deleted) by someone other than the operator."""
    EVICTED = "Evicted"
    """The kubelet or the Eviction API evicted the pod."""
    NODE_LOST = "NodeLost"
    """The pod's node is gone or not ready."""
    JOIN_TIMEOUT = "JoinTimeout"
    """A replacement did not become Ready within `rejoinTimeoutSeconds`."""


class GroupRestartReason(StrEnum):
    """`elasticep_group_restarts_total{reason}`: why the whole group was restarted."""

    MEMBER_ZERO_LOST = "MemberZeroLost"
    """Member 0 holds Mooncake's coordinator; it cannot be replaced in place."""
    TOO_MANY_UNAVAILABLE = "TooManyUnavailable"
    """More members down than `recovery.maxUnavailableMembers`."""
    GROUP_RESTART_MODE = "GroupRestartMode"
    """`recovery.mode: GroupRestart` replaces any failure by a group restart."""
    SPEC_CHANGED = "SpecChanged"
    """The pod-shaping spec changed under `updateStrategy: GroupRestart`, or after the cluster Failed."""
    USER_REQUESTED = "UserRequested"
    """`spec.restartGeneration` was raised."""


class RecoveryResult(StrEnum):
    """`elasticep_worker_recoveries{result}`: how one rank's part in a recovery ended."""

    SUCCEEDED = "succeeded"
    """Survivors admitted the joiners on every group and the metadata reached them."""
    FAILED = "failed"
    """The recovery did not complete (the rank then exits or the leader retries)."""


class RecoveryPhase(StrEnum):
    """`elasticep_worker_recovery_phase_seconds{phase}`: the phases of a recovery."""

    FENCE = "fence"
    """Waiting at the step fence for Mooncake's new view after a failure."""
    JOIN = "join"
    """A joiner's `join_group` on every group."""
    WAIT_PEER = "wait_peer"
    """Survivors waiting for the joiner to be ready to be recovered."""
    RECOVER_RANKS = "recover_ranks"
    """Survivors' `recover_ranks` on every group."""
    BROADCAST = "broadcast"
    """The expert-location metadata broadcast to the joiners."""
    TOTAL = "total"
    """The whole RECOVER step on a survivor."""


class AdmissionTriggerResult(StrEnum):
    """`elasticep_admission_trigger_requests_total{result}`: how one request of the SGLang admission trigger
    (`engine.sglang.admissionTrigger`) to member 0 ended."""

    SUCCEEDED = "Succeeded"
    """Member 0 answered with a 2xx status: the survivors ran a forward pass (admitting a waiting joiner)."""
    HTTP_ERROR = "HTTPError"
    """Member 0 answered with another status (a 503 while it is busy, a 404 for a wrong `path`)."""
    TIMEOUT = "Timeout"
    """No answer within `timeoutSeconds`."""
    UNREACHABLE = "Unreachable"
    """No connection (refused, reset, no route): member 0's server is not listening."""
