"""The demo's load generator: continuous requests to member 0's `POST /v1/infer`, every answer checked.

Called by `eep_demo.scenario` (demo, e2e test) and the benchmarks. Threads, bounded concurrency, stopped by
`stop()` (no new requests; outstanding ones get `drain_s` to be answered). Each answer is compared with the
single-process float64 reference (`eep_worker.moe`), built from the served model's config
(`GET /v1/model`). A request that got no answer (connection refused/reset, 404 from a pod that is not member 0
any more, 5xx, a client timeout) is retried with a new attempt id until it is answered or the drain ends; a
request with no answer by then is a failed request, and a wrong answer is never retried away.

The member-0 address comes from an injected `Endpoint` (the scenario reads the pod's IP from the API: the
host has no cluster DNS). Every attempt lands in `attempts` as an `eep_demo.timeline.Attempt`.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import random
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, Protocol

import torch

from eep_demo.timeline import Attempt, AttemptResult
from eep_worker.moe import ModelConfig, ReferenceMoEModel, ReferenceOutput, compare, tolerance_for

__all__ = [
    "ClientSettings",
    "Endpoint",
    "LoadClient",
    "Prompt",
    "ReferenceChecker",
    "fetch_model_config",
    "model_config_from_wire",
]

Clock = Callable[[], float]


class Endpoint(Protocol):
    """Where member 0 serves. `url()` returns e.g. `http://127.0.0.5:30000`, or None while unknown; it never
    raises (lookup errors mean None). `invalidate()` says the last URL did not answer: look it up again."""

    def url(self) -> str | None: ...

    def invalidate(self) -> None: ...


def model_config_from_wire(obj: dict[str, Any]) -> ModelConfig:
    """`GET /v1/model`'s `config` object -> ModelConfig. Raises ValueError for unknown fields or dtypes."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(obj) - fields
    if unknown:
        raise ValueError(f"unknown model config fields: {sorted(unknown)}")
    kwargs = dict(obj)
    if "dtype" in kwargs:
        name = str(kwargs["dtype"]).removeprefix("torch.")
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {kwargs['dtype']!r}")
        kwargs["dtype"] = dtype
    return ModelConfig(**kwargs)


def _request(
    base_url: str, method: str, path: str, body: bytes | None, timeout_s: float
) -> tuple[int, bytes]:
    parsed = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port or 80, timeout=timeout_s)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def fetch_model_config(base_url: str, timeout_s: float = 10.0) -> ModelConfig:
    """Raises OSError (no answer) or ValueError (not a model description)."""
    status, body = _request(base_url, "GET", "/v1/model", None, timeout_s)
    if status != 200:
        raise ValueError(f"GET {base_url}/v1/model: HTTP {status}: {body[:200]!r}")
    doc = json.loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ValueError(f"GET /v1/model: no config object in {doc!r:.200}")
    return model_config_from_wire(doc["config"])


@dataclasses.dataclass(frozen=True)
class Prompt:
    tokens: tuple[int, ...]
    expected: ReferenceOutput


class ReferenceChecker:
    """A fixed pool of prompts with their float64 answers, computed once (the reference costs a few ms per
    prompt; precomputing keeps the checking off the two-core machine's hot loop)."""

    def __init__(self, config: ModelConfig, n_prompts: int = 32, max_tokens: int = 8, seed: int = 1) -> None:
        rng = random.Random(seed)
        model = ReferenceMoEModel(config)
        self.config = config
        self.tolerance = tolerance_for(config)
        self.prompts = []
        for _ in range(n_prompts):
            tokens = tuple(rng.randrange(config.vocab_size) for _ in range(rng.randint(1, max_tokens)))
            self.prompts.append(Prompt(tokens, model.run(list(tokens))))

    def check(self, prompt: Prompt, reply: Any) -> tuple[bool, str]:
        """(ok, detail) for a decoded 200 reply of /v1/infer."""
        if not isinstance(reply, dict) or "output" not in reply:
            return False, f"malformed reply {reply!r:.200}"
        try:
            served = torch.tensor(reply["output"], dtype=torch.float64)
            result = compare(served, prompt.expected, self.tolerance)
        except (ValueError, TypeError, RuntimeError) as exc:
            return False, f"unusable output: {exc}"
        tag = f"epoch={reply.get('epoch')} degraded={reply.get('degraded')}"
        if not result.ok:
            return False, f"{tag} max_abs_error={result.max_abs_error:.3g} excess={result.max_excess:.3g}"
        return True, tag


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
        self.clock = clock
        self.attempts: list[Attempt] = []
        self.request_ids: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._drain_deadline = float("inf")
        self._threads: list[threading.Thread] = []
        self._counter = 0

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        for i in range(self.settings.concurrency):
            t = threading.Thread(target=self._loop, args=(i,), name=f"client-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, drain_s: float = 60.0) -> float:
        """Send no new requests; wait up to `drain_s` for outstanding ones. Returns the stop time."""
        stop_t = self.clock()
        self._drain_deadline = stop_t + drain_s
        self._stopping.set()
        for t in self._threads:
            t.join(timeout=drain_s + self.settings.attempt_timeout_s + 5)
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

    def _loop(self, worker: int) -> None:
        rng = random.Random(worker)
        while not self._stopping.is_set():
            with self._lock:
                self._counter += 1
                rid = f"r{self._counter:06d}"
                self.request_ids.append(rid)
            prompt = rng.choice(self.checker.prompts)
            self._serve_one(rid, prompt)
            self._stopping.wait(self.settings.pace_s)

    def _serve_one(self, rid: str, prompt: Prompt) -> None:
        n = 0
        while True:
            n += 1
            result, detail, sent, done = self._attempt(f"{rid}.{n}", prompt)
            with self._lock:
                self.attempts.append(Attempt(rid, sent, done, result, detail))
            if result is not AttemptResult.NO_ANSWER:
                return
            if self.clock() >= self._drain_deadline:
                return  # never answered: count_requests reports it failed
            time.sleep(self.settings.retry_backoff_s)

    def _attempt(self, attempt_id: str, prompt: Prompt) -> tuple[AttemptResult, str, float, float]:
        sent = self.clock()
        url = self.endpoint.url()
        if url is None:
            return AttemptResult.NO_ANSWER, "member 0 address unknown", sent, self.clock()
        body = json.dumps({"request_id": attempt_id, "tokens": list(prompt.tokens)}).encode()
        try:
            status, raw = _request(url, "POST", "/v1/infer", body, self.settings.attempt_timeout_s)
        except (OSError, http.client.HTTPException) as exc:
            self.endpoint.invalidate()
            return AttemptResult.NO_ANSWER, f"{type(exc).__name__}: {exc}", sent, self.clock()
        done = self.clock()
        if status == 404 or status >= 500:
            # 404: that address is no longer member 0 (pod IPs are reused after a restart).
            self.endpoint.invalidate()
            return AttemptResult.NO_ANSWER, f"HTTP {status}: {raw[:120]!r}", sent, done
        if status != 200:
            return AttemptResult.WRONG, f"HTTP {status}: {raw[:200]!r}", sent, done
        try:
            reply = json.loads(raw)
        except ValueError:
            return AttemptResult.WRONG, f"reply is not JSON: {raw[:200]!r}", sent, done
        ok, detail = self.checker.check(prompt, reply)
        return (AttemptResult.OK if ok else AttemptResult.WRONG), detail, sent, done
