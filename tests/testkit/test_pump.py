"""Pumps and waiting: a failing step never ends a pump, stop() ends it, a queue's events reach their handlers;
`wait_until` returns the predicate's value or fails with what it was waiting for."""

from __future__ import annotations

import dataclasses
import queue
import threading

import pytest

from eep_testkit.pump import Pump, QueuePump
from eep_testkit.wait import WaitTimeout, wait_until


def test_a_failing_step_is_counted_and_the_pump_goes_on() -> None:
    calls: list[int] = []
    seen: list[BaseException] = []

    def step() -> None:
        calls.append(1)
        if len(calls) % 2:
            raise RuntimeError("transient")

    pump = Pump(step, name="t", error_backoff_s=0.001, on_error=seen.append)
    pump.start()
    wait_until(lambda: len(calls) >= 10, 5, "ten steps")
    pump.stop(5)
    assert not pump.alive()
    assert pump.errors >= 5 and isinstance(pump.last_error, RuntimeError) and len(seen) == pump.errors


def test_stop_interrupts_the_interval() -> None:
    ran = threading.Event()
    pump = Pump(ran.set, name="t", interval_s=3600)
    pump.start()
    assert ran.wait(5)
    pump.stop(5)
    assert not pump.alive()


@dataclasses.dataclass(frozen=True)
class Ready:
    rank: int


@dataclasses.dataclass(frozen=True)
class Answered:
    request_id: str
    rows: list[int]


@dataclasses.dataclass(frozen=True)
class Mystery:
    n: int


def test_queue_pump_dispatches_by_type() -> None:
    events: queue.Queue[object] = queue.Queue()
    ready: list[int] = []
    answers: list[Answered] = []
    pump = QueuePump(
        events,
        {Ready: lambda event: ready.append(event.rank), Answered: answers.append},
        poll_s=0.01,
    )
    pump.start()
    for event in [Ready(0), Answered("r1", [1, 2]), Mystery(7), ("ready", 2), Ready(1)]:
        events.put(event)
    wait_until(lambda: ready == [0, 1], 5, "both ready events")
    pump.stop()
    assert answers == [Answered("r1", [1, 2])]
    assert pump.unhandled == [Mystery(7), ("ready", 2)]  # a tuple's tag is not looked at


def test_a_handler_that_raises_does_not_end_the_queue_pump() -> None:
    events: queue.Queue[object] = queue.Queue()
    ready: list[int] = []

    def on_ready(event: Ready) -> None:
        if event.rank < 0:
            raise KeyError(event.rank)
        ready.append(event.rank)

    dropped: list[object] = []
    pump = QueuePump(events, {Ready: on_ready}, poll_s=0.01, unknown=dropped.append)
    pump.start()
    for event in [Ready(-1), Mystery(1), Ready(3)]:
        events.put(event)
    wait_until(lambda: ready == [3], 5, "the ready event after the failing one")
    pump.stop()
    assert pump.pump.errors == 1 and dropped == [Mystery(1)] and pump.unhandled == []


def test_wait_until() -> None:
    values = iter([None, 0, "", "found"])
    assert wait_until(lambda: next(values), 5, interval_s=0.001) == "found"
    flaky = iter([OSError("not yet"), "up"])

    def api() -> str:
        item = next(flaky)
        if isinstance(item, BaseException):
            raise item
        return item

    assert wait_until(api, 5, interval_s=0.001, tolerate=(OSError,)) == "up"
    with pytest.raises(
        WaitTimeout, match=r"waiting for the moon \(last error: OSError\('no'\)\)\nstill dark"
    ):

        def moon() -> bool:
            raise OSError("no")

        wait_until(
            moon, 0.05, "the moon", interval_s=0.01, tolerate=(OSError,), describe=lambda: "still dark"
        )
    with pytest.raises(KeyError):
        wait_until(lambda: {}["x"], 1)
