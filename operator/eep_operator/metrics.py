"""Prometheus metrics of the operator (names and labels: docs/dev/interfaces.md, "Operator metrics").

The registry is injected (`__main__` builds one and serves it on `/metrics`; each test builds its own).
Counters and the recovery histogram follow the planner's `Record*` actions; gauges are set from the status
after every reconcile, so they describe what the CR says.
"""

from __future__ import annotations

import contextlib
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from eep_contract.reasons import AdmissionTriggerResult
from eep_contract.v1alpha1 import (
    ConditionStatus,
    ConditionType,
    ElasticEPClusterSpec,
    ElasticEPClusterStatus,
    MemberState,
    Phase,
)
from eep_operator.core import actions as A

L = ("namespace", "cluster")
RECOVERY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)


class OperatorMetrics:
    """Every `elasticep_*` operator metric, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.rank_failures = Counter(
            "elasticep_rank_failures_total", "Member failures seen, by signal.", [*L, "reason"], registry=r
        )
        self.member_restarts = Counter(
            "elasticep_member_restarts_total",
            "Replacement pods created (join mode).",
            [*L, "member"],
            registry=r,
        )
        self.group_restarts = Counter(
            "elasticep_group_restarts_total", "Whole-group restarts, by cause.", [*L, "reason"], registry=r
        )
        self.recoveries = Counter(
            "elasticep_recoveries_total", "Finished recoveries, by result.", [*L, "result"], registry=r
        )
        self.recovery_duration = Histogram(
            "elasticep_recovery_duration_seconds",
            "Seconds from the failure observed until every rank was active again.",
            L,
            buckets=RECOVERY_BUCKETS,
            registry=r,
        )
        self.recovery_in_progress = Gauge(
            "elasticep_recovery_in_progress_seconds",
            "Age of the oldest unfinished recovery; 0 when none.",
            L,
            registry=r,
        )
        self.recovery_budget = Gauge(
            "elasticep_recovery_budget_seconds",
            "recovery.rejoinTimeoutSeconds + recovery.backoffMaxSeconds: the longest a recovery should take.",
            L,
            registry=r,
        )
        self.active_ranks = Gauge("elasticep_active_ranks", "Ranks in membership.activeRanks.", L, registry=r)
        self.world_size = Gauge("elasticep_world_size", "nodes x ranksPerNode.", L, registry=r)
        self.epoch = Gauge("elasticep_membership_epoch", "membership.epoch.", L, registry=r)
        self.members = Gauge("elasticep_members", "Members per state.", [*L, "state"], registry=r)
        self.phase = Gauge(
            "elasticep_cluster_phase", "1 for the current phase, 0 otherwise.", [*L, "phase"], registry=r
        )
        self.condition = Gauge(
            "elasticep_condition",
            "1 for each status condition's current status, 0 for its other statuses.",
            [*L, "type", "status"],
            registry=r,
        )
        self.reconcile_errors = Counter(
            "elasticep_reconcile_errors_total", "Reconciles that ended in an error.", L, registry=r
        )
        self.reconcile_duration = Histogram(
            "elasticep_reconcile_duration_seconds", "Duration of one reconcile.", L, registry=r
        )
        self.last_reconcile = Gauge(
            "elasticep_last_reconcile_timestamp_seconds",
            "Unix time of the last completed reconcile.",
            L,
            registry=r,
        )
        self.admission_requests = Counter(
            "elasticep_admission_trigger_requests_total",
            "Requests the SGLang admission trigger sent to member 0 while a member was Joining, by result.",
            [*L, "result"],
            registry=r,
        )

    def record(self, namespace: str, cluster: str, action: A.Action) -> None:
        """Count a planner decision (ignores actions that are not metric records)."""
        if isinstance(action, A.RecordFailure):
            self.rank_failures.labels(namespace, cluster, action.reason).inc()
        elif isinstance(action, A.RecordMemberRestart):
            self.member_restarts.labels(namespace, cluster, str(action.member)).inc()
        elif isinstance(action, A.RecordGroupRestart):
            self.group_restarts.labels(namespace, cluster, action.reason).inc()
        elif isinstance(action, A.RecordRecovery):
            self.recoveries.labels(namespace, cluster, action.result).inc()
            if action.seconds is not None:
                self.recovery_duration.labels(namespace, cluster).observe(action.seconds)

    def update_from_status(
        self,
        namespace: str,
        cluster: str,
        spec: ElasticEPClusterSpec,
        status: ElasticEPClusterStatus,
        now: datetime,
    ) -> None:
        """Set the gauges from the status just written."""
        lab = (namespace, cluster)
        self.active_ranks.labels(*lab).set(len(status.membership.active_ranks))
        self.world_size.labels(*lab).set(spec.world_size)
        self.epoch.labels(*lab).set(status.membership.epoch)
        start = status.recovery_start_time
        self.recovery_in_progress.labels(*lab).set(
            max(0.0, (now - start).total_seconds())
            if start is not None and status.phase != Phase.FAILED
            else 0.0
        )
        self.recovery_budget.labels(*lab).set(
            spec.recovery.rejoin_timeout_seconds + spec.recovery.backoff_max_seconds
        )
        for state in MemberState:
            self.members.labels(*lab, state.value).set(sum(1 for m in status.members if m.state == state))
        for phase in Phase:
            self.phase.labels(*lab, phase.value).set(1 if status.phase == phase else 0)
        for cond in status.conditions:
            for value in ConditionStatus:
                self.condition.labels(*lab, cond.type.value, value.value).set(
                    1 if cond.status == value else 0
                )

    def admission_request(self, namespace: str, cluster: str, result: AdmissionTriggerResult) -> None:
        """Count one request of the SGLang admission trigger (`eep_operator.io.admission.AdmissionSink`)."""
        self.admission_requests.labels(namespace, cluster, result.value).inc()

    def reconciled(
        self, namespace: str, cluster: str, seconds: float, unix_now: float, *, error: bool
    ) -> None:
        self.reconcile_duration.labels(namespace, cluster).observe(seconds)
        if error:
            self.reconcile_errors.labels(namespace, cluster).inc()
        else:
            self.last_reconcile.labels(namespace, cluster).set(unix_now)

    def forget(self, namespace: str, cluster: str) -> None:
        """Drop the per-cluster gauges of a deleted CR (counters stay: Prometheus handles their end)."""
        for g in (
            self.active_ranks,
            self.world_size,
            self.epoch,
            self.recovery_in_progress,
            self.recovery_budget,
        ):
            with contextlib.suppress(KeyError):
                g.remove(namespace, cluster)
        for state in MemberState:
            with contextlib.suppress(KeyError):
                self.members.remove(namespace, cluster, state.value)
        for phase in Phase:
            with contextlib.suppress(KeyError):
                self.phase.remove(namespace, cluster, phase.value)
        for type_ in ConditionType:
            for value in ConditionStatus:
                with contextlib.suppress(KeyError):
                    self.condition.remove(namespace, cluster, type_.value, value.value)
