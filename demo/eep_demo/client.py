"""The demo's load generator: continuous requests to member 0's `POST /v1/infer`, every answer checked.

Called by `eep_demo.scenario` (demo, e2e test) and, through it, bench/mttr.py and bench/soak.py. Threads,
bounded concurrency, stopped by `stop()` (no new requests; outstanding ones get `drain_s` to be answered). The
sending and the float64 reference check are the test kit's (`eep_testkit.client.post_infer`,
`eep_testkit.reference.ReferenceChecker`, built from the served model's `GET /v1/model`). What this module
adds is the demo's policy: a request that got no answer (`NoAnswer`: connection refused/reset, 404 from a pod
that is not member 0 any more, 5xx, a client timeout) is retried with a new attempt id until it is answered or
the drain ends; a request with no answer by then is a failed request, and a wrong answer is never retried
away.

The member-0 address comes from an injected `Endpoint` (the scenario reads the pod's IP from the API: the
host has no cluster DNS). Every attempt lands in `attempts` as an `eep_demo.timeline.Attempt`.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import threading
import time
from collections.abc import Callable
from typing import Protocol

from eep_contract.wire import InferRequest
from eep_demo.timeline import Attempt, AttemptResult
from eep_testkit.client import NoAnswer, WrongAnswer, post_infer
from eep_testkit.pump import Pump
from eep_testkit.reference import ReferenceChecker

__all__ = ["ClientSettings", "Endpoint", "LoadClient"]

Clock = Callable[[], float]


class Endpoint(Protocol):
    """Where member 0 serves. `url()` returns e.g. `http://127.0.0.5:30000`, or None while unknown; it never
    raises (lookup errors mean None). `invalidate()` says the last URL did not answer: look it up again."""

    def url(self) -> str | None: ...

    def invalidate(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class ClientSettings:
    concurrency: int = 2
    """Requests in flight at once (one thread each)."""
    pace_s: float = 0.05
    """Pause of each thread between two requests, seconds (keeps a small machine responsive)."""
    attempt_timeout_s: float = 60.0
    """Seconds one HTTP attempt may take before it counts as unanswered and is retried."""
    retry_backoff_s: float = 0.2
    """Pause before retrying an unanswered attempt, seconds."""
    prompts: int = 32
    """Distinct prompts sent, their reference answers computed before the first request."""


class LoadClient:
    def __init__(
        self,
        endpoint: Endpoint,
        checker: ReferenceChecker,
        settings: ClientSettings | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.checker = checker
        self.settings = settings or ClientSettings()
        self.prompts = checker.prompts(self.settings.prompts)
        self.clock = clock
        self.attempts: list[Attempt] = []
        self.request_ids: list[str] = []
        self._lock = threading.Lock()
        self._drain_deadline = float("inf")
        self._counter = 0
        self._pumps = [
            Pump(
                functools.partial(self._serve_one, random.Random(i)),
                name=f"client-{i}",
                interval_s=self.settings.pace_s,
            )
            for i in range(self.settings.concurrency)
        ]

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        for pump in self._pumps:
            pump.start()

    def stop(self, drain_s: float = 60.0) -> float:
        """Send no new requests; wait up to `drain_s` for outstanding ones. Returns the stop time."""
        stop_t = self.clock()
        self._drain_deadline = stop_t + drain_s
        for pump in self._pumps:
            pump.stopping.set()
        for pump in self._pumps:
            pump.stop(drain_s + self.settings.attempt_timeout_s + 5)
        return stop_t

    def snapshot(self) -> dict[str, int]:
        """Live counters for the progress display."""
        with self._lock:
            attempts = list(self.attempts)
            sent = len(self.request_ids)
        return {
            "sent": sent,
            "ok": sum(1 for a in attempts if a.result is AttemptResult.OK),
            "wrong": sum(1 for a in attempts if a.result is AttemptResult.WRONG),
            "no_answer": sum(1 for a in attempts if a.result is AttemptResult.NO_ANSWER),
        }

    def last_error(self) -> str:
        with self._lock:
            bad = [a for a in self.attempts if a.result is not AttemptResult.OK]
        return f"{bad[-1].result.value}: {bad[-1].detail}" if bad else ""

    # ------------------------------------------------------------------ work

    def _serve_one(self, rng: random.Random) -> None:
        """One request (a pump's step): attempts until one is answered or the drain ends."""
        with self._lock:
            self._counter += 1
            rid = f"r{self._counter:06d}"
            self.request_ids.append(rid)
        tokens = rng.choice(self.prompts)
        n = 0
        while True:
            n += 1
            result, detail, sent, done = self._attempt(f"{rid}.{n}", tokens)
            with self._lock:
                self.attempts.append(Attempt(rid, sent, done, result, detail))
            if result is not AttemptResult.NO_ANSWER:
                return
            if self.clock() >= self._drain_deadline:
                return  # never answered: count_requests reports it failed
            time.sleep(self.settings.retry_backoff_s)

    def _attempt(self, attempt_id: str, tokens: tuple[int, ...]) -> tuple[AttemptResult, str, float, float]:
        sent = self.clock()
        url = self.endpoint.url()
        if url is None:
            return AttemptResult.NO_ANSWER, "member 0 address unknown", sent, self.clock()
        req = InferRequest(request_id=attempt_id, tokens=list(tokens))
        try:
            reply = post_infer(url, req, self.settings.attempt_timeout_s)
        except NoAnswer as exc:
            # Also a 404: that address is no longer member 0 (pod IPs are reused after a restart).
            self.endpoint.invalidate()
            return AttemptResult.NO_ANSWER, str(exc), sent, self.clock()
        except WrongAnswer as exc:
            return AttemptResult.WRONG, str(exc), sent, self.clock()
        done = self.clock()
        ok, detail = self.checker.check(tokens, reply)
        return (AttemptResult.OK if ok else AttemptResult.WRONG), detail, sent, done
