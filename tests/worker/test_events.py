"""events.py, serve.Supervisor.dispatch and metrics.WorkerMetrics: every kind a rank sends has a handler.

The completeness checks fail as soon as a kind is added to `events.py` without being added to the
`RankEvent` union, or to the union without a handler in the supervisor (or, for a metric kind, in
`WorkerMetrics.apply`).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import pickle
import typing
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from eep_contract.exitcodes import ExitCode
from eep_contract.reasons import RecoveryPhase, RecoveryResult
from eep_worker import events as E
from eep_worker.metrics import QueueSink, WorkerMetrics
from eep_worker.serve import Supervisor, _Pending
from eep_worker.settings import Settings, parse

ONE_OF_EACH: list[E.RankEvent] = [
    E.Ready(1),
    E.Joining(1),
    E.Exiting(1, ExitCode.FENCED, "Mooncake deactivated this rank"),
    E.Response("r1", [[0.5, -1.0]], 3, [0, 1], True),
    E.ServingState(3, [0, 1]),
    E.Recovered(3, True, 0.25, ""),
    E.Untrusted(41, 1234.5),
    E.RecoveryCount(1, RecoveryResult.SUCCEEDED),
    E.PhaseDuration(1, RecoveryPhase.FENCE, 1.5),
    E.StepCounts(1, 10, 2, 1),
    E.MembershipGauge(1, 2, 3),
]


def _union(alias: Any) -> set[type]:
    return set(typing.get_args(alias))


def _settings() -> Settings:
    return parse(["serve", "--rank-count", "2", "--world-size", "2"], {})


@pytest.fixture
def supervisor() -> Supervisor:
    return Supervisor(_settings(), CollectorRegistry())


def test_every_event_class_is_in_the_union() -> None:
    defined = {
        cls
        for _, cls in inspect.getmembers(E, inspect.isclass)
        if cls.__module__ == E.__name__ and dataclasses.is_dataclass(cls)
    }
    assert defined == _union(E.RankEvent)
    assert _union(E.MetricEvent) <= _union(E.RankEvent)
    assert {type(e) for e in ONE_OF_EACH} == _union(E.RankEvent)


def test_the_supervisor_has_a_handler_for_every_kind(supervisor: Supervisor) -> None:
    assert set(supervisor.handlers()) == _union(E.RankEvent)


@pytest.mark.parametrize("event", ONE_OF_EACH, ids=lambda e: type(e).__name__)
def test_every_kind_crosses_the_queue_and_is_dispatched(
    supervisor: Supervisor, event: E.RankEvent, caplog: pytest.LogCaptureFixture
) -> None:
    copy = pickle.loads(pickle.dumps(event))
    assert copy == event and type(copy) is type(event)
    with caplog.at_level(logging.WARNING, logger="eep_worker.serve"):
        supervisor.dispatch(copy)
    assert "unknown event" not in caplog.text


def test_an_unknown_message_is_logged_and_dropped(
    supervisor: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="eep_worker.serve"):
        supervisor.dispatch(("ready", 1))  # type: ignore[arg-type]  # the old tuple form
    assert "unknown event" in caplog.text
    assert supervisor.ready == set()


def test_readiness_follows_ready_and_joining(supervisor: Supervisor) -> None:
    supervisor.dispatch(E.Ready(0))
    supervisor.dispatch(E.Ready(1))
    assert supervisor.ready == {0, 1}
    supervisor.dispatch(E.Joining(1))
    assert supervisor.ready == {0}


def test_the_first_exit_reason_wins(supervisor: Supervisor) -> None:
    supervisor.dispatch(E.Exiting(1, ExitCode.STALLED, "hung"))
    supervisor.dispatch(E.Exiting(0, 1, "RuntimeError: later"))
    assert (supervisor.exit_code, supervisor.exit_reason) == (ExitCode.STALLED, "hung")


def test_a_response_answers_its_pending_request(supervisor: Supervisor) -> None:
    pending = _Pending()
    supervisor._pending["r1"] = pending
    supervisor.dispatch(E.Response("r1", [[1.0, 2.0]], 4, [0, 1], False))
    supervisor.dispatch(E.Response("nobody-waits", [[1.0]], 4, [0, 1], False))
    assert pending.done.is_set()
    assert pending.reply == {
        "request_id": "r1",
        "output": [[1.0, 2.0]],
        "epoch": 4,
        "active_ranks": [0, 1],
        "degraded": False,
    }


def test_serving_state_feeds_the_rendezvous_answer(supervisor: Supervisor) -> None:
    supervisor.dispatch(E.ServingState(5, [0]))
    assert supervisor.rendezvous_info()["epoch"] == 5
    assert supervisor.rendezvous_info()["active_ranks"] == [0]


def test_metric_events_from_a_queue_sink_reach_the_registry() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    sent: list[E.RankEvent] = []

    class Queue:
        def put(self, event: E.RankEvent) -> None:
            sent.append(event)

    sink = QueueSink(Queue(), rank=2, flush_s=3600)
    sink.recovery(RecoveryResult.FAILED)
    sink.phase(RecoveryPhase.WAIT_PEER, 0.5)
    sink.steps(1)
    sink.steps(1)
    sink.steps(1, degraded=1)  # a degraded step flushes at once
    sink.steps(0, rerun=1)
    sink.membership(3, 7)
    assert {type(e) for e in sent} == _union(E.MetricEvent)
    for event in sent:
        assert isinstance(event, typing.get_args(E.MetricEvent))
        metrics.apply(event)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"rank": "2", **labels})

    assert value("elasticep_worker_recoveries_total", result="failed") == 1
    assert value("elasticep_worker_recovery_phase_seconds_sum", phase="wait_peer") == 0.5
    assert value("elasticep_worker_steps_total") == 3
    assert value("elasticep_worker_degraded_steps_total") == 1
    assert value("elasticep_worker_rerun_steps_total") == 1
    assert value("elasticep_worker_active_ranks") == 3
    assert value("elasticep_worker_epoch") == 7
