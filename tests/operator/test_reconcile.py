"""Unit tests of `Reconciler.reconcile` with in-memory fakes: an unexpected error is recorded, never raised;
the requeue time counts from the plan.

The malformed object is a status a person edited by hand: a member `Failed` without `nextRestartTime`, which
the CRD schema allows but the planner cannot act on. Written before the fix, the first test then failed with
`E  AssertionError` from the planner's `assert m.next_restart_time is not None` escaping `reconcile()`
(`FAILED tests/operator/test_reconcile.py::test_unexpected_error_is_an_event_not_an_escape`), the second with
`TypeError: Reconciler.__init__() got an unexpected keyword argument 'error_backoff_max_seconds'`.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from operator_builders import t
from prometheus_client import CollectorRegistry

from eep_contract.v1alpha1 import ElasticEPClusterStatus, MemberState, MemberStatus, Phase
from eep_operator.core.actions import EmitEvent, Plan
from eep_operator.io.events import ClusterRef
from eep_operator.io.kube import PermanentError
from eep_operator.metrics import OperatorMetrics
from eep_operator.reconcile import Reconciler

Obj = dict[str, Any]


def cluster(name: str, status: ElasticEPClusterStatus | None = None) -> Obj:
    meta = {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": "1", "generation": 1}
    spec = {"image": "img", "nodes": 2, "ranksPerNode": 1}
    return {"metadata": meta, "spec": spec, "status": status.to_wire() if status else {}}


def malformed_status() -> ElasticEPClusterStatus:
    """Member 1 is Failed but has no `nextRestartTime`: nothing says when its replacement may start."""
    return ElasticEPClusterStatus(
        phase=Phase.DEGRADED,
        members=[
            MemberStatus(index=0, first_rank=0, rank_count=1, state=MemberState.HEALTHY, incarnation=1),
            MemberStatus(index=1, first_rank=1, rank_count=1, state=MemberState.FAILED, incarnation=1),
        ],
    )


class FakeKube:
    """Just enough of `KubeClient` for reconciles of CRs that have no pods yet."""

    def __init__(self, *crs: Obj) -> None:
        self.crs = {cr["metadata"]["name"]: cr for cr in crs}
        self.created: list[Obj] = []

    def get_cluster(self, namespace: str, name: str) -> Obj | None:
        cr = self.crs.get(name)
        return copy.deepcopy(cr) if cr is not None else None

    def list_pods(self, namespace: str, label_selector: str) -> list[Obj]:
        return []

    def list_nodes(self) -> list[Obj]:
        return []

    def service_exists(self, namespace: str, name: str) -> bool:
        return True

    def get_service(self, namespace: str, name: str) -> Obj | None:
        return next((m for m in self.created if m["kind"] == "Service"), None)

    def patch_service_spec(self, namespace: str, name: str, spec: Obj) -> None:
        raise AssertionError("the Service the operator created needs no update")

    def replace_status(self, cr: Obj, status: Obj) -> Obj:
        self.crs[cr["metadata"]["name"]]["status"] = status
        return cr

    def create(self, manifest: Obj) -> Obj:
        self.created.append(manifest)
        return manifest

    def pdb_exists(self, namespace: str, name: str) -> bool:
        return True

    def annotate_cluster(self, cr: Obj, annotations: dict[str, str]) -> Obj:
        self.crs[cr["metadata"]["name"]]["metadata"].setdefault("annotations", {}).update(annotations)
        return cr


class RecordingEvents:
    def __init__(self) -> None:
        self.events: list[tuple[ClusterRef, EmitEvent]] = []

    def emit(self, ref: ClusterRef, event: EmitEvent, now: datetime) -> None:
        self.events.append((ref, event))


def reconciler(kube: FakeKube, events: RecordingEvents, registry: CollectorRegistry, **kw: Any) -> Reconciler:
    return Reconciler(
        kube=kube,  # type: ignore[arg-type]
        events=events,
        metrics=OperatorMetrics(registry),
        clock=lambda: t(0),
        error_requeue_seconds=1.0,
        **kw,
    )


def test_unexpected_error_is_an_event_not_an_escape(caplog: pytest.LogCaptureFixture) -> None:
    kube = FakeKube(cluster("bad", malformed_status()), cluster("good"))
    events, registry = RecordingEvents(), CollectorRegistry()
    rec = reconciler(kube, events, registry)
    with caplog.at_level(logging.ERROR, logger="eep_operator.reconcile"):
        result = rec.reconcile("ns", "bad")
    assert result.error is not None and "AssertionError" in result.error
    assert result.requeue_at is not None  # tried again later, not never
    [(ref, ev)] = events.events
    assert ref == ClusterRef("ns", "bad", "uid-bad")
    assert (ev.type, ev.reason) == ("Warning", "ReconcileError")
    assert ev.message.startswith("AssertionError (at planner.py:")  # the type, and where: a bare assert
    labels = {"namespace": "ns", "cluster": "bad"}
    assert registry.get_sample_value("elasticep_reconcile_errors_total", labels) == 1
    # Logged with the traceback, so the bug can be found.
    assert any(r.exc_info is not None and r.levelno == logging.ERROR for r in caplog.records)
    # The broken object was not touched: no status write, no pods.
    assert kube.crs["bad"]["status"] == malformed_status().to_wire() and not kube.created
    # Another CR on the same reconciler is reconciled as usual.
    good = rec.reconcile("ns", "good")
    assert good.error is None
    assert kube.crs["good"]["status"]["phase"] == Phase.PENDING.value
    assert [m["kind"] for m in kube.created] == ["Service", "Pod", "Pod"]


def test_unexpected_errors_back_off_and_reset_once_fixed() -> None:
    kube = FakeKube(cluster("bad", malformed_status()))
    events, registry = RecordingEvents(), CollectorRegistry()
    rec = reconciler(kube, events, registry, error_backoff_max_seconds=5.0)
    delays = []
    for _ in range(5):
        started = time.monotonic()
        result = rec.reconcile("ns", "bad")
        assert result.requeue_at is not None
        delays.append(round(result.requeue_at - started))
    assert delays == [1, 2, 4, 5, 5]  # error_requeue_seconds doubled, capped at error_backoff_max_seconds
    # The same error again: posted for the 1st, 2nd and 4th in a row, not every time.
    assert [ev.reason for _, ev in events.events] == ["ReconcileError"] * 3
    assert ["; 4 failed" in ev.message for _, ev in events.events] == [False, False, True]
    kube.crs["bad"]["status"] = {}  # a person repairs the status
    assert rec.reconcile("ns", "bad").error is None
    kube.crs["bad"]["status"] = malformed_status().to_wire()
    started = time.monotonic()
    again = rec.reconcile("ns", "bad")
    assert again.requeue_at is not None and round(again.requeue_at - started) == 1


class SlowEvents:
    def emit(self, ref: ClusterRef, event: EmitEvent, now: datetime) -> None:
        time.sleep(0.3)  # an API server under load


def test_requeue_counts_from_the_plan_not_from_the_slow_calls_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import eep_operator.reconcile as R  # noqa: PLC0415

    def fake_plan(spec: Any, status: Any, observed: Any, now: Any) -> Plan:
        return Plan(actions=(EmitEvent("Normal", "Test", "slow"),) * 2, status=status, requeue_after=1.0)

    monkeypatch.setattr(R, "plan", fake_plan)
    rec = Reconciler(
        kube=FakeKube(cluster("c")),  # type: ignore[arg-type]
        events=SlowEvents(),
        metrics=OperatorMetrics(CollectorRegistry()),
    )
    before = time.monotonic()
    result = rec.reconcile("ns", "c")
    after = time.monotonic()
    assert result.error is None and result.requeue_at is not None
    assert after - before >= 0.6  # the two slow Events ran after the plan
    # The backoff ends 1 s after the plan, not 1 s after the Events were written.
    assert before + 1.0 <= result.requeue_at <= before + 1.0 + 0.2


class RefusingKube(FakeKube):
    """The API server refuses every pod create for good (a quota, Pod Security), until `allow()`."""

    def __init__(self, *crs: Obj) -> None:
        super().__init__(*crs)
        self.refusing = True
        self.attempts = 0
        self.floors: list[int] = []
        self.writes: list[str] = []

    def create(self, manifest: Obj) -> Obj:
        if manifest["kind"] == "Pod":
            self.attempts += 1
            if self.refusing:
                raise PermanentError('403 Forbidden: pods "c-0" is forbidden: exceeded quota: q')
        return super().create(manifest)

    def annotate_cluster(self, cr: Obj, annotations: dict[str, str]) -> Obj:
        if "elasticep.io/epoch-floor" in annotations:
            self.floors.append(int(annotations["elasticep.io/epoch-floor"]))
        self.writes.append("annotations")
        return super().annotate_cluster(cr, annotations)

    def replace_status(self, cr: Obj, status: Obj) -> Obj:
        self.writes.append("status")
        return super().replace_status(cr, status)


def test_a_refused_create_is_said_and_retried_with_a_growing_interval() -> None:
    """Before the fix: the 403 was logged and the create retried at every reconcile, forever, with no Event
    and no condition (`reconcile failed: 403 Forbidden` once a second in the operator's log)."""
    kube, events = RefusingKube(cluster("c")), RecordingEvents()
    r = reconciler(kube, events, CollectorRegistry())
    first = r.reconcile("ns", "c")
    assert kube.attempts == 1 and first.requeue_at is not None
    refused = [e for _, e in events.events if e.reason == "APIRequestRefused"]
    assert len(refused) == 1 and "exceeded quota" in refused[0].message and "c-0" in refused[0].message
    for _ in range(5):  # events and resyncs in between: no create until the backoff is over
        r.reconcile("ns", "c")
    assert kube.attempts == 1
    status = ElasticEPClusterStatus.model_validate(kube.crs["c"]["status"])
    stalled = next(c for c in status.conditions if c.type == "Stalled")
    assert (
        stalled.status == "True"
        and stalled.reason == "APIRequestRefused"
        and "exceeded quota" in stalled.message
    )
    gaps = []
    for _ in range(3):
        key = ("ns", "c")
        before = r._refusals[key].retry_at
        r._refusals[key] = replace(r._refusals[key], retry_at=time.monotonic() - 1)  # the backoff is over
        r.reconcile("ns", "c")
        gaps.append(r._refusals[key].retry_at - time.monotonic())
        assert r._refusals[key].retry_at > before
    assert gaps == sorted(gaps) and gaps[-1] > 2 * gaps[0]
    kube.refusing = False
    key = ("ns", "c")
    r._refusals[key] = replace(r._refusals[key], retry_at=time.monotonic() - 1)
    r.reconcile("ns", "c")
    r.reconcile("ns", "c")
    status = ElasticEPClusterStatus.model_validate(kube.crs["c"]["status"])
    assert next(c for c in status.conditions if c.type == "Stalled").status == "False"
    assert key not in r._refusals


def test_the_epoch_and_incarnation_floors_are_written_before_the_status() -> None:
    kube = RefusingKube(cluster("c"))
    kube.refusing = False
    r = reconciler(kube, RecordingEvents(), CollectorRegistry())
    status = malformed_status().model_copy(update={"members": []})
    status.membership.epoch = 7
    kube.crs["c"]["status"] = status.to_wire()
    r.reconcile("ns", "c")
    assert kube.writes[:2] == ["annotations", "status"] and kube.floors[0] >= 7
    written = ElasticEPClusterStatus.model_validate(kube.crs["c"]["status"])
    floor = int(kube.crs["c"]["metadata"]["annotations"]["elasticep.io/incarnation-floor"])
    assert floor == max(m.incarnation for m in written.members)
    record = json.loads(kube.crs["c"]["metadata"]["annotations"]["elasticep.io/group-spec"])
    assert record["spec"]["image"] == "img" and record["restartGeneration"] == 0


def test_a_refused_status_write_is_said_and_not_retried_every_event() -> None:
    """A CRD older than the operator (or an admission policy) refuses the status itself: before, a
    `reconcile failed: 422 Unprocessable Entity` log line at every event, and nothing a person looks at."""

    class OldCrd(RefusingKube):
        def replace_status(self, cr: Obj, status: Obj) -> Obj:
            self.writes.append("status")
            raise PermanentError("422 Unprocessable Entity: status.conditions[5].type: Unsupported value")

    kube, events = OldCrd(cluster("c")), RecordingEvents()
    kube.refusing = False
    r = reconciler(kube, events, CollectorRegistry())
    first = r.reconcile("ns", "c")
    assert first.requeue_at is not None and kube.writes.count("status") == 1
    for _ in range(5):
        r.reconcile("ns", "c")
    assert kube.writes.count("status") == 1 and kube.attempts == 0  # nothing acted on an unwritten status
    refused = [e for _, e in events.events if e.reason == "APIRequestRefused"]
    assert len(refused) == 1 and "writing the status" in refused[0].message and "422" in refused[0].message
