"""Event pumps: a daemon thread that repeats one step until stopped, and one that drains a queue of events.

Every background loop of the tests, benchmarks and the demo is one of these, so none of them re-implements
start/stop/error handling. Who uses it: `eep_testkit.stream` (the request stream), `eep_testkit.standin`
(the ZMQ feed's re-sends), the demo's status sampler, alert watcher and load client (`eep_demo`),
bench/operator_scale.py (its watches of pods and clusters); `QueuePump` is for event queues of rank
processes (bench/gpu_recovery.py: the typed events of `eep_worker.events` and its own).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

__all__ = ["EventQueue", "Pump", "QueuePump"]


class Pump:
    """Calls `step()` in a daemon thread, again and again, until `stop()`.

    `interval_s`: pause after each step (interrupted by `stop()`). An exception from `step` never ends the
    thread: it is counted in `errors`, kept in `last_error`, passed to `on_error` when given, and the pump
    pauses `error_backoff_s`. A step that blocks (a watch stream, a queue read) should look at `stopping`
    from time to time."""

    def __init__(
        self,
        step: Callable[[], None],
        *,
        name: str,
        interval_s: float = 0.0,
        error_backoff_s: float = 0.2,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.step, self.name = step, name
        self.interval_s, self.error_backoff_s, self.on_error = interval_s, error_backoff_s, on_error
        self.stopping = threading.Event()
        self.errors = 0
        self.last_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the loop to end and wait up to `timeout_s` for the current step to return."""
        self.stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.step()
            except Exception as e:
                self.errors += 1
                self.last_error = e
                if self.on_error is not None:
                    self.on_error(e)
                self.stopping.wait(self.error_backoff_s)
                continue
            if self.interval_s > 0:
                self.stopping.wait(self.interval_s)


class EventQueue(Protocol):
    """`queue.Queue` / `multiprocessing.Queue`: `get` raises `queue.Empty` after `timeout` seconds."""

    def get(self, block: bool = ..., timeout: float | None = ...) -> Any: ...


class QueuePump:
    """Drains a queue of typed events (frozen dataclasses such as `eep_worker.events.Ready`) in a thread and
    calls `handlers[type(event)](event)`, as the worker's supervisor (`eep_worker.serve.Supervisor`) does.

    The lookup is by exact type (a subclass needs its own entry). An event of a type with no handler goes to
    `unknown` (default: kept in `unhandled`). A queue whose other end is gone (EOFError, OSError) ends the
    pump; a handler that raises does not (the `Pump` counts it)."""

    def __init__(
        self,
        events: EventQueue,
        handlers: Mapping[type[Any], Callable[[Any], None]],
        *,
        name: str = "events",
        poll_s: float = 0.1,
        unknown: Callable[[Any], None] | None = None,
    ) -> None:
        self.events, self.handlers, self.poll_s = events, handlers, poll_s
        self.unhandled: list[Any] = []
        self.unknown = unknown or self.unhandled.append
        self.pump = Pump(self._one, name=name)

    def start(self) -> None:
        self.pump.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.pump.stop(timeout_s)

    def _one(self) -> None:
        try:
            event = self.events.get(timeout=self.poll_s)
        except queue.Empty:
            return
        except (EOFError, OSError):
            self.pump.stopping.set()
            return
        handler = self.handlers.get(type(event))
        if handler is None:
            self.unknown(event)
        else:
            handler(event)
