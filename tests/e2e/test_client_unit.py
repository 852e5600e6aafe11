"""Unit tests of eep_demo.client against a small HTTP stand-in of member 0 (no cluster, no mooncake).

The stand-in answers /v1/infer with the float64 reference's numbers (or wrong ones, or 503, or a dropped
connection, as the test sets), so the client's checking, retrying and bookkeeping are what is tested.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from eep_demo.client import (
    ClientSettings,
    LoadClient,
    ReferenceChecker,
    fetch_model_config,
    model_config_from_wire,
)
from eep_demo.timeline import AttemptResult, count_requests
from eep_worker.moe import ModelConfig, ReferenceMoEModel

CONFIG = ModelConfig(num_layers=2, hidden_size=16, ffn_size=32, num_experts=4, top_k=2, seed=3)


class StandIn:
    def __init__(self) -> None:
        self.mode = "ok"
        self.model = ReferenceMoEModel(CONFIG)
        self.requests = 0
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, code: int, obj: Any) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                cfg = {"num_layers": 2, "hidden_size": 16, "ffn_size": 32, "num_experts": 4, "top_k": 2}
                self._send(200, {"config": {**cfg, "vocab_size": 1024, "seed": 3, "dtype": "float32"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                standin.requests += 1
                if standin.mode == "503":
                    self._send(503, {"error": "not ready"})
                    return
                if standin.mode == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                out = standin.model.run(body["tokens"]).output.float()
                if standin.mode == "wrong":
                    out = out + 0.5
                self._send(200, {"request_id": body["request_id"], "output": out.tolist(), "epoch": 1})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class FixedEndpoint:
    def __init__(self, url: str) -> None:
        self._url = url
        self.invalidations = 0

    def url(self) -> str | None:
        return self._url

    def invalidate(self) -> None:
        self.invalidations += 1


@pytest.fixture
def standin() -> Iterator[StandIn]:
    s = StandIn()
    yield s
    s.server.shutdown()
    s.server.server_close()


def run_client(standin: StandIn, plan: list[tuple[str, float]], drain_s: float = 5.0) -> LoadClient:
    checker = ReferenceChecker(fetch_model_config(standin.url), n_prompts=4)
    client = LoadClient(
        FixedEndpoint(standin.url), checker, ClientSettings(concurrency=2, pace_s=0.01, retry_backoff_s=0.05)
    )
    client.start()
    for mode, seconds in plan:
        standin.mode = mode
        time.sleep(seconds)
    client.stop(drain_s)
    return client


def test_model_config_from_wire() -> None:
    got = model_config_from_wire({"num_layers": 2, "dtype": "torch.float64"})
    assert got.num_layers == 2 and str(got.dtype) == "torch.float64"
    with pytest.raises(ValueError, match="unknown model config fields"):
        model_config_from_wire({"layers": 2})
    with pytest.raises(ValueError, match="unknown dtype"):
        model_config_from_wire({"dtype": "float7"})


def test_correct_answers_pass(standin: StandIn) -> None:
    client = run_client(standin, [("ok", 0.5)])
    counts = count_requests(client.attempts, client.request_ids)
    assert counts.sent > 5 and counts.ok == counts.sent and counts.wrong == counts.failed == 0


def test_wrong_answers_are_caught(standin: StandIn) -> None:
    client = run_client(standin, [("ok", 0.3), ("wrong", 0.3), ("ok", 0.3)])
    counts = count_requests(client.attempts, client.request_ids)
    assert counts.wrong > 0 and counts.failed == 0
    wrong = [a for a in client.attempts if a.result is AttemptResult.WRONG]
    assert "max_abs_error" in wrong[0].detail


@pytest.mark.parametrize("outage", ["503", "drop"])
def test_unanswered_requests_are_retried_not_lost(standin: StandIn, outage: str) -> None:
    client = run_client(standin, [("ok", 0.3), (outage, 0.6), ("ok", 0.3)])
    counts = count_requests(client.attempts, client.request_ids)
    assert counts.retries > 0, "the outage produced no unanswered attempt"
    assert counts.failed == 0 and counts.wrong == 0 and counts.ok == counts.sent


def test_a_request_unanswered_at_the_end_is_failed(standin: StandIn) -> None:
    client = run_client(standin, [("ok", 0.3), ("503", 0.3)], drain_s=0.3)
    counts = count_requests(client.attempts, client.request_ids)
    assert counts.failed >= 1 and counts.wrong == 0
