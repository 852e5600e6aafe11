"""The checking client: `POST /v1/infer` to member 0, every answer checked against the float64 reference.

Requests and replies are the contract's wire models (`eep_contract.wire.InferRequest` / `InferReply`), so a
reply that does not parse is a wrong answer, not a `KeyError` later. `post_infer` sorts every outcome into an
answer, `NoAnswer` (try again: nothing was served) or `WrongAnswer` (never excusable); `CheckingClient` adds
the reference check and keeps the answers.

Who uses it: tests/worker (through `LocalPods`' pods), bench/cpu_recovery.py and `eep_testkit.stream`; the
demo's load client (`eep_demo.client`) sends its attempts with `post_infer`.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from typing import Any, Protocol

from pydantic import ValidationError

from eep_contract.wire import INFER_PATH, InferReply, InferRequest
from eep_testkit.http_client import HTTPError, request
from eep_testkit.reference import ReferenceChecker, fetch_model_config

__all__ = ["Answer", "CheckingClient", "HasUrl", "NoAnswer", "WrongAnswer", "post_infer"]

Answer = dict[str, Any]
"""An answer as JSON: the `InferReply` fields (`request_id`, `output`, `epoch`, `active_ranks`, `degraded`)
plus `latency_s`, the seconds from send to reply."""


class NoAnswer(Exception):
    """Nothing was served: connection refused or reset, client timeout, 404 (that address is not member 0,
    e.g. a pod IP reused after a restart) or a 5xx (503 not ready, 504 step timed out). Worth retrying."""


class WrongAnswer(AssertionError):
    """An answer that is not the right one: not the reference's numbers, not an `InferReply`, another
    request's id, or a 4xx other than 404 (the request itself was refused)."""


class HasUrl(Protocol):
    """Something serving at `url` (`http://host:port`), e.g. `eep_testkit.pods.Pod`."""

    @property
    def url(self) -> str: ...


def post_infer(base_url: str, req: InferRequest, timeout_s: float) -> InferReply:
    """One attempt of `req`. Raises NoAnswer or WrongAnswer (the reply is not the request's `InferReply`);
    the numbers are not checked here."""
    try:
        status, raw = request(base_url, "POST", INFER_PATH, req.model_dump_json().encode(), timeout_s)
    except (OSError, HTTPError) as exc:
        raise NoAnswer(f"{type(exc).__name__}: {exc}") from exc
    if status == 404 or status >= 500:
        raise NoAnswer(f"HTTP {status}: {raw[:120]!r}")
    if status != 200:
        raise WrongAnswer(f"HTTP {status}: {raw[:200]!r}")
    try:
        reply = InferReply.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise WrongAnswer(f"not an InferReply: {str(exc)[:200]} in {raw[:200]!r}") from exc
    if reply.request_id != req.request_id:
        raise WrongAnswer(f"reply to {reply.request_id!r}, sent {req.request_id!r}")
    return reply


class CheckingClient:
    """Sends to one member 0 (`target`: a URL or a pod) and checks every answer; `answers` keeps them in
    order. `checker`: default, one built from the served model (`GET /v1/model`, so member 0 must serve).
    Safe to share between threads."""

    def __init__(
        self, target: str | HasUrl, checker: ReferenceChecker | None = None, *, prefix: str = "req"
    ) -> None:
        self.url = target if isinstance(target, str) else target.url
        self.checker = checker or ReferenceChecker(fetch_model_config(self.url))
        self.prefix = prefix
        self.answers: list[Answer] = []
        self._ids = itertools.count(1)

    def infer(self, tokens: Sequence[int], timeout: float = 60.0) -> Answer:
        """Send `tokens` once and return the checked answer. Raises NoAnswer or WrongAnswer."""
        req = InferRequest(request_id=f"{self.prefix}-{next(self._ids)}", tokens=list(tokens))
        t0 = time.monotonic()
        reply = post_infer(self.url, req, timeout)
        latency_s = time.monotonic() - t0
        verdict = self.checker.check(req.tokens, reply)
        if not verdict.ok:
            raise WrongAnswer(f"wrong answer for {list(tokens)}: {verdict.detail}")
        answer: Answer = {**reply.model_dump(), "latency_s": latency_s}
        self.answers.append(answer)
        return answer
