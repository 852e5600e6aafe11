"""`eep-worker serve`: the pod supervisor. Spawns one process per rank of the pod, serves HTTP, and on
member 0 runs the rendezvous service and the client API.

Who calls it: `__main__`. The supervisor does not import torch or mooncake; rank processes report to it over
one queue (readiness, metrics, responses, exit reasons), and member 0's supervisor forwards client requests
to the leader rank over another. When any rank process ends, the supervisor ends the pod with that rank's
exit code (the pod is the unit the operator replaces).

HTTP (docs/dev/interfaces.md): GET /ready (200 once every rank of the pod has joined and holds the metadata),
GET /healthz, GET /metrics, and on member 0 POST /v1/infer.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from eep_worker.metrics import WorkerMetrics
from eep_worker.ports import RendezvousService
from eep_worker.protocol import EXIT_LEADER_LOST, Request
from eep_worker.settings import Settings

__all__ = ["Supervisor"]

log = logging.getLogger("eep_worker.serve")
MAX_BODY = 1 << 20
REQUEST_TIMEOUT_S = 120.0


def _rank_entry(*args: Any) -> None:
    # Runs in the spawned child: only there are torch and mooncake imported (with the loader environment).
    from eep_worker.rank import rank_main  # noqa: PLC0415

    rank_main(*args)


class _Pending:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: dict[str, Any] = {}


class Supervisor:
    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.s = settings
        self.metrics = WorkerMetrics(registry)
        self.registry = registry
        self.ctx = mp.get_context("spawn")
        self.events: Any = self.ctx.Queue()
        self.requests: Any = self.ctx.Queue() if settings.cluster.member_index == 0 else None
        self.ready: set[int] = set()
        self.exit_code: int | None = None
        self.exit_reason = ""
        self.epoch = 0
        self.active: list[int] = []
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self.procs: list[Any] = []

    # ------------------------------------------------------------------ ranks

    def start_ranks(self) -> None:
        for rank in self.s.ranks:
            p = self.ctx.Process(
                target=_rank_entry,
                args=(self.s, rank, self.events, self.requests if rank == 0 else None),
                name=f"rank-{rank}",
                daemon=False,
            )
            p.start()
            self.procs.append(p)
        threading.Thread(target=self._pump, name="events", daemon=True).start()

    def _pump(self) -> None:
        while True:
            try:
                msg = self.events.get()
            except (EOFError, OSError):
                return
            kind = msg[0]
            if kind == "ready":
                self.ready.add(msg[1])
                log.info("rank %d ready (%d/%d)", msg[1], len(self.ready), self.s.cluster.rank_count)
            elif kind == "response":
                _, rid, output, epoch, active, degraded = msg
                with self._lock:
                    pending = self._pending.get(rid)
                if pending is not None:
                    pending.reply = {
                        "request_id": rid,
                        "output": output,
                        "epoch": epoch,
                        "active_ranks": active,
                        "degraded": degraded,
                    }
                    pending.done.set()
            elif kind == "state":
                self.epoch, self.active = msg[1], msg[2]
            elif kind == "exit":
                if self.exit_code is None:
                    self.exit_code, self.exit_reason = msg[2], msg[3]
            elif kind == "joining":
                self.ready.discard(msg[1])
            elif kind == "recovered":
                _, epoch, ok, seconds, reason = msg
                log.info(
                    "recovery at epoch %d: %s in %.3fs %s", epoch, "ok" if ok else "FAILED", seconds, reason
                )
            else:
                self.metrics.apply(msg)

    def wait(self) -> int:
        """Block until a rank process ends; stop the others; return the pod's exit code."""
        while True:
            for p in self.procs:
                if p.exitcode is not None:
                    code = int(p.exitcode)
                    time.sleep(0.3)  # let its exit message arrive
                    for q in self.procs:
                        if q.is_alive():
                            q.kill()
                    for q in self.procs:
                        q.join(5)
                    if self.exit_code is None and code != 0 and self._leader_gone():
                        # Mooncake 0.3.13 aborts a survivor ("syncAfterFailure failed", SIGABRT) when rank 0
                        # dies, before the rank can report it; the coordinator port tells us why.
                        self.exit_code, self.exit_reason = (
                            EXIT_LEADER_LOST,
                            (f"member 0 (rank 0) is gone: not recoverable in place (rank exit {code})"),
                        )
                    if self.exit_code is not None:
                        code = self.exit_code
                        log.error("pod ends: %s (exit code %d)", self.exit_reason, code)
                    elif code < 0:
                        code = 128 - code
                    return code
            time.sleep(0.1)

    def _leader_gone(self) -> bool:
        """Whether member 0's coordinator (TCPStore) port refuses connections (never true on member 0)."""
        c = self.s.cluster
        if c.member_index == 0:
            return False
        try:
            with socket.create_connection((c.coordinator_host, c.coordinator_port), timeout=2.0):
                return False
        except OSError:
            return True

    # ------------------------------------------------------------------ client API (member 0)

    def infer(self, body: Any) -> tuple[int, dict[str, Any]]:
        if self.requests is None:
            return 404, {"error": "only member 0 serves clients"}
        if not isinstance(body, dict):
            return 400, {"error": "body must be a JSON object"}
        rid = body.get("request_id") or str(uuid.uuid4())
        tokens = body.get("tokens")
        m = self.s.model
        if (
            not isinstance(rid, str)
            or not isinstance(tokens, list)
            or not tokens
            or len(tokens) > m.max_batch_tokens
            or any(not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < 1024 for t in tokens)
        ):
            return 400, {"error": f"need request_id (str) and 1..{m.max_batch_tokens} tokens in [0, 1024)"}
        if len(self.ready) < self.s.cluster.rank_count:
            return 503, {"error": "not ready"}
        pending = _Pending()
        with self._lock:
            self._pending[rid] = pending
        try:
            self.requests.put(Request(rid, tokens))
            if not pending.done.wait(REQUEST_TIMEOUT_S):
                return 504, {"error": "timed out"}
            return 200, pending.reply
        finally:
            with self._lock:
                self._pending.pop(rid, None)

    def model_info(self) -> dict[str, Any]:
        """`GET /v1/model`: the ModelConfig fields (dtype as a string), so a client can build the float64
        reference. Mirrors how the rank builds its config (`rank.py`); ModelConfig defaults fill the rest."""
        m = self.s.model
        return {
            "config": {
                "num_layers": m.num_layers,
                "hidden_size": m.hidden_size,
                "num_experts": m.num_experts,
                "top_k": m.top_k,
                "seed": m.seed,
                "ffn_size": 128,
                "vocab_size": 1024,
                "dtype": "float32",
            },
            "max_batch_tokens": m.max_batch_tokens,
        }

    def rendezvous_info(self) -> dict[str, Any]:
        c = self.s.cluster
        return {
            "epoch": self.epoch,
            "world_size": c.world_size,
            "active_ranks": self.active,
            "store": f"{c.coordinator_host}:{c.coordinator_port}",
        }

    # ------------------------------------------------------------------ HTTP

    def http_server(self) -> ThreadingHTTPServer:
        sup = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/healthz":
                    self._send(200, b'{"ok": true}')
                elif self.path == "/ready":
                    ok = len(sup.ready) >= sup.s.cluster.rank_count
                    self._send(200 if ok else 503, json.dumps({"ready": sorted(sup.ready)}).encode())
                elif self.path == "/v1/model" and sup.requests is not None:
                    self._send(200, json.dumps(sup.model_info()).encode())
                elif self.path == "/metrics":
                    self._send(200, generate_latest(sup.registry), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self) -> None:
                if self.path != "/v1/infer":
                    self._send(404, b'{"error": "not found"}')
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._send(413, b'{"error": "too large"}')
                    return
                try:
                    body = json.loads(self.rfile.read(length))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    self._send(400, b'{"error": "not JSON"}')
                    return
                code, reply = sup.infer(body)
                self._send(code, json.dumps(reply).encode())

        server = ThreadingHTTPServer((self.s.pod_ip, self.s.http_port), Handler)
        server.daemon_threads = True
        return server

    def run(self) -> int:
        server = self.http_server()
        threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
        rendezvous = None
        if self.s.cluster.member_index == 0:
            rendezvous = RendezvousService(
                self.s.pod_ip, self.s.cluster.rendezvous_port, self.rendezvous_info, self.s.cluster.world_size
            )
        log.info(
            "pod of member %d: ranks %s, HTTP on %s:%d (pid %d)",
            self.s.cluster.member_index,
            list(self.s.ranks),
            self.s.pod_ip,
            self.s.http_port,
            os.getpid(),
        )
        self.start_ranks()
        try:
            return self.wait()
        finally:
            server.shutdown()
            server.server_close()
            if rendezvous is not None:
                rendezvous.close()
