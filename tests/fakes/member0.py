"""A fake member 0: an HTTP server on 127.0.0.1 that serves `GET /v1/model` and answers `POST /v1/infer` with
the float64 reference's numbers, or wrong ones, a 503 or a dropped connection, as the test sets `mode`.

Used where no worker can run: the checking client's tests (tests/testkit) and the demo load client's
(tests/e2e/test_client_unit.py). Replies are the contract's `InferReply`.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eep_contract.wire import INFER_PATH, MODEL_PATH, InferReply, InferRequest
from eep_worker.moe import ModelConfig, ReferenceMoEModel

CONFIG = ModelConfig(num_layers=2, hidden_size=16, ffn_size=32, num_experts=4, top_k=2, seed=3)
WIRE_CONFIG = {
    "num_layers": 2,
    "hidden_size": 16,
    "ffn_size": 32,
    "num_experts": 4,
    "top_k": 2,
    "vocab_size": 1024,
    "seed": 3,
    "dtype": "float32",
}
MODES = ("ok", "wrong", "503", "drop", "400", "garbage", "other-id")


class Member0:
    """`mode`: `ok`, `wrong` (+0.5 on every number), `503`, `drop` (connection closed unanswered), `400`,
    `garbage` (200 with a body that is not an InferReply), `other-id` (the reply names another request)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.model = ReferenceMoEModel(CONFIG)
        self.requests = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path != MODEL_PATH:
                    self._send(404, b"{}")
                    return
                self._send(200, json.dumps({"config": WIRE_CONFIG, "max_batch_tokens": 64}).encode())

            def do_POST(self) -> None:
                req = InferRequest.model_validate_json(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests += 1
                mode = fake.mode
                if self.path != INFER_PATH:
                    self._send(404, b"{}")
                elif mode in ("503", "400"):
                    self._send(int(mode), b'{"error": "as the test set"}')
                elif mode == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                elif mode == "garbage":
                    self._send(200, b'{"request_id": 7}')
                else:
                    out = fake.model.run(req.tokens).output.float() + (0.5 if mode == "wrong" else 0.0)
                    rid = "someone-else" if mode == "other-id" else req.request_id
                    reply = InferReply(
                        request_id=rid, output=out.tolist(), epoch=1, active_ranks=[0, 1], degraded=False
                    )
                    self._send(200, reply.model_dump_json().encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
