"""Unit tests of the I/O helpers that need no API server: metrics, Event rendering, error mapping.

`Reconciler.reconcile` with fakes: test_reconcile.py.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException
from operator_builders import make_spec, t
from operator_sim import World
from prometheus_client import CollectorRegistry

from eep_operator.core import actions as A
from eep_operator.io.events import ClusterRef, render_event
from eep_operator.io.kube import (
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    PermanentError,
    TransientError,
    classify,
    with_retries,
)
from eep_operator.metrics import OperatorMetrics

INTERFACES = Path(__file__).resolve().parents[2] / "docs" / "dev" / "interfaces.md"


def test_every_metric_of_the_interface_is_registered() -> None:
    section = INTERFACES.read_text().split("## Operator metrics", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"`(elasticep_[a-z_]+)`", section))
    assert len(names) >= 14
    reg = CollectorRegistry()
    OperatorMetrics(reg)
    registered = {m.name for m in reg.collect()}
    # prometheus_client strips the `_total` suffix from counter family names.
    assert {n.removesuffix("_total") for n in names} <= registered


def test_metrics_follow_actions_and_status() -> None:
    reg = CollectorRegistry()
    m = OperatorMetrics(reg)
    lab = {"namespace": "ns", "cluster": "c"}
    for action in (
        A.RecordFailure("ContainerExit"),
        A.RecordFailure("ContainerExit"),
        A.RecordMemberRestart(2),
        A.RecordGroupRestart("MemberZeroLost"),
        A.RecordRecovery("Succeeded", 3.5),
        A.EmitEvent("Normal", "X", "ignored"),
    ):
        m.record("ns", "c", action)
    assert reg.get_sample_value("elasticep_rank_failures_total", {**lab, "reason": "ContainerExit"}) == 2
    assert reg.get_sample_value("elasticep_member_restarts_total", {**lab, "member": "2"}) == 1
    assert reg.get_sample_value("elasticep_group_restarts_total", {**lab, "reason": "MemberZeroLost"}) == 1
    assert reg.get_sample_value("elasticep_recoveries_total", {**lab, "result": "Succeeded"}) == 1
    assert reg.get_sample_value("elasticep_recovery_duration_seconds_sum", lab) == 3.5

    spec = make_spec(nodes=4, rpn=2)
    w = World(spec, ["n0"])
    w.settle()
    w.kill(1)
    w.reconcile()
    m.update_from_status("ns", "c", spec, w.status, w.now + timedelta(seconds=2))
    assert reg.get_sample_value("elasticep_active_ranks", lab) == 6
    assert reg.get_sample_value("elasticep_world_size", lab) == 8
    assert reg.get_sample_value("elasticep_membership_epoch", lab) == w.status.membership.epoch
    assert reg.get_sample_value("elasticep_members", {**lab, "state": "Failed"}) == 1
    assert reg.get_sample_value("elasticep_members", {**lab, "state": "Healthy"}) == 3
    assert reg.get_sample_value("elasticep_cluster_phase", {**lab, "phase": "Degraded"}) == 1
    assert reg.get_sample_value("elasticep_cluster_phase", {**lab, "phase": "Running"}) == 0
    assert reg.get_sample_value("elasticep_recovery_in_progress_seconds", lab) == 2
    assert reg.get_sample_value("elasticep_recovery_budget_seconds", lab) == 60 + 8
    degraded = {**lab, "type": "Degraded"}
    assert reg.get_sample_value("elasticep_condition", {**degraded, "status": "True"}) == 1
    assert reg.get_sample_value("elasticep_condition", {**degraded, "status": "False"}) == 0
    stalled = {**lab, "type": "Stalled", "status": "False"}
    assert reg.get_sample_value("elasticep_condition", stalled) == 1
    m.reconciled("ns", "c", 0.01, 1234.0, error=False)
    m.reconciled("ns", "c", 0.01, 1235.0, error=True)
    assert reg.get_sample_value("elasticep_last_reconcile_timestamp_seconds", lab) == 1234.0
    assert reg.get_sample_value("elasticep_reconcile_errors_total", lab) == 1
    m.forget("ns", "c")
    assert reg.get_sample_value("elasticep_active_ranks", lab) is None
    assert reg.get_sample_value("elasticep_condition", {**degraded, "status": "True"}) is None


def test_event_is_about_the_cr() -> None:
    ev = render_event(
        ClusterRef("ns", "c", "u1"), A.EmitEvent("Warning", "MemberContainerExit", "boom", 3), t(0)
    )
    assert ev["involvedObject"]["kind"] == "ElasticEPCluster" and ev["involvedObject"]["uid"] == "u1"
    assert ev["type"] == "Warning" and ev["reason"] == "MemberContainerExit"
    assert ev["message"] == "[member 3] boom" and ev["lastTimestamp"] == "2026-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (404, "{}", NotFoundError),
        (409, '{"reason":"AlreadyExists"}', AlreadyExistsError),
        (409, '{"reason":"Conflict"}', ConflictError),
        (429, "{}", TransientError),
        (503, "", TransientError),
        (422, '{"reason":"Invalid"}', PermanentError),
    ],
)
def test_api_errors_are_typed(status: int, body: str, kind: type) -> None:
    e = ApiException(status=status, reason="r")
    e.body = body
    assert isinstance(classify(e), kind)


def test_transient_errors_are_retried_then_raised() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ApiException(status=503, reason="unavailable")
        return "ok"

    assert with_retries(flaky, base_delay=0) == "ok" and len(calls) == 3

    def conflict() -> None:
        raise ApiException(status=409, reason="Conflict")

    with pytest.raises(ConflictError):
        with_retries(conflict, base_delay=0)
    with pytest.raises(TransientError):
        with_retries(lambda: (_ for _ in ()).throw(ApiException(status=500)), attempts=2, base_delay=0)
