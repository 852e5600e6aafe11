"""Polling until a condition holds, with a message that says what was awaited and what was seen.

Who uses it: `eep_testkit.pods` (pods Ready), `eep_testkit.stream` (a matching answer), tests/conftest.py's
`wait_for` fixture, tests/worker, bench/operator_scale.py, bench/gpu_recovery.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["Clock", "WaitTimeout", "wait_until"]

T = TypeVar("T")
Clock = Callable[[], float]
"""Seconds on some clock (`time.monotonic` unless a caller correlates with wall-clock logs)."""


class WaitTimeout(AssertionError):
    """The condition did not hold in time. An AssertionError, so a test that waits fails rather than errors;
    the message names what was awaited, the last error the predicate raised, and `describe()`."""


def wait_until(
    predicate: Callable[[], T | None],
    timeout_s: float,
    what: str = "",
    *,
    interval_s: float = 0.1,
    describe: Callable[[], str] | None = None,
    tolerate: tuple[type[BaseException], ...] = (),
    clock: Clock = time.monotonic,
) -> T:
    """Call `predicate` every `interval_s` until it returns something truthy, and return that.

    An exception of a type in `tolerate` counts as "not yet" (a transient API error); any other propagates.
    Raises WaitTimeout after `timeout_s`."""
    deadline = clock() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except tolerate as e:
            last_error = e
        if clock() >= deadline:
            break
        time.sleep(interval_s)
    name = what or getattr(predicate, "__name__", repr(predicate))
    detail = f" (last error: {last_error!r})" if last_error is not None else ""
    extra = f"\n{describe()}" if describe is not None else ""
    raise WaitTimeout(f"timed out after {timeout_s:g}s waiting for {name}{detail}{extra}")
