"""A request stream: one thread sends request after request through a `CheckingClient` while a test or a
benchmark kills and replaces pods, and keeps every answer with its time and every error.

Strict on purpose: a request that got no answer or a wrong one is an error (the worker tests require none);
the demo's load client (`eep_demo.client`) is the one that retries. Who uses it: bench/cpu_recovery.py,
tests/worker (the Mooncake recovery tests); bench/gpu_recovery.py sends `tokens_for` through its own queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from eep_contract.wire import VOCAB_SIZE
from eep_testkit.pump import Pump
from eep_testkit.wait import Clock, wait_until

if TYPE_CHECKING:  # the client imports torch (the reference): `tokens_for` alone must not
    from eep_testkit.client import Answer, CheckingClient

__all__ = ["Stream", "tokens_for"]


def tokens_for(i: int, max_len: int = 5) -> list[int]:
    """The `i`-th request's token ids: 1..`max_len` of them, varied, deterministic. Pure."""
    return [(i * 37 + j * 11) % VOCAB_SIZE for j in range(1 + i % max_len)]


class Stream:
    """Sends `tokens_for(1)`, `tokens_for(2)`, ... one at a time, `pause_s` apart, until stopped (a context
    manager starts and stops it). `answered`: `(clock() at the answer, answer)`; `errors`: one line per
    request that failed (no answer or a wrong one). `clock`: wall time by default, to line up with logs."""

    def __init__(
        self,
        client: CheckingClient,
        *,
        pause_s: float = 0.01,
        timeout_s: float = 120.0,
        max_len: int = 5,
        clock: Clock = time.time,
    ) -> None:
        self.client, self.timeout_s, self.max_len, self.clock = client, timeout_s, max_len, clock
        self.answered: list[tuple[float, Answer]] = []
        self.errors: list[str] = []
        self._i = 0
        self._pump = Pump(self._one, name="request-stream", interval_s=pause_s)

    def start(self) -> Stream:
        self._pump.start()
        return self

    def stop(self, timeout_s: float = 120.0) -> None:
        """No new request; wait up to `timeout_s` for the one in flight."""
        self._pump.stop(timeout_s)

    def __enter__(self) -> Stream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _one(self) -> None:
        self._i += 1
        try:
            answer = self.client.infer(tokens_for(self._i, self.max_len), timeout=self.timeout_s)
        except Exception as e:
            self.errors.append(f"{type(e).__name__}: {e}"[:500])
            return
        self.answered.append((self.clock(), answer))

    def wait_answer(
        self, pred: Callable[[Answer], bool], timeout_s: float, since: float | None = None
    ) -> float:
        """Wait for an answer, at or after `since` (default: answers from now on), that satisfies `pred`;
        return its time. Raises WaitTimeout naming the last answer seen."""
        start = self.clock() if since is None else since

        def found() -> tuple[float] | None:  # a tuple: an answer at time 0.0 is still found
            return next(((t,) for t, a in list(self.answered) if t >= start and pred(a)), None)

        def last() -> str:
            if not self.answered:
                return f"no answer at all; errors: {self.errors[-3:]}"
            answer = {k: v for k, v in self.answered[-1][1].items() if k != "output"}
            return f"last answer {answer}; errors: {self.errors[-3:]}"

        (t,) = wait_until(found, timeout_s, "a matching answer", interval_s=0.02, describe=last)
        return t

    def first_after(self, t: float, active: list[int], timeout_s: float) -> float:
        """The time of the first answer at or after `t` served by exactly the ranks `active`."""
        return self.wait_answer(lambda a: list(a["active_ranks"]) == active, timeout_s, since=t)
