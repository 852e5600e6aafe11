"""`eep-worker serve`: the pod supervisor. Spawns one process per rank of the pod, serves HTTP, and on
member 0 runs the rendezvous service and the client API.

Who calls it: `__main__`. The supervisor does not import torch or mooncake; rank processes report to it over
one queue (typed events, `events.py`: readiness, metrics, responses, exit reasons; `Supervisor.dispatch`
handles each kind), and member 0's supervisor forwards client requests to the leader rank over another. When
any rank process ends, the supervisor ends the pod with that rank's exit code (the pod is the unit the
operator replaces).

HTTP (docs/dev/interfaces.md): GET /ready (200 once every rank of the pod has joined and holds the metadata),
GET /healthz, GET /metrics, and on member 0 POST /v1/infer and GET /v1/group (the leader's view of the live
ranks, `eep_contract.wire.GroupView`: built from the `ServingState` events rank 0 sends whenever its epoch or
live set changes, aged by its `StepCounts`; the HTTP thread reads one immutable snapshot, nothing more).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError

from eep_contract.exitcodes import ExitCode
from eep_contract.wire import (
    GROUP_PATH,
    INFER_PATH,
    MODEL_PATH,
    READY_PATH,
    VOCAB_SIZE,
    ErrorReply,
    GroupView,
    InferReply,
    InferRequest,
    ReadyReply,
)
from eep_worker.events import (
    LEADER_LOST,
    Exiting,
    Joining,
    MembershipGauge,
    PhaseDuration,
    RankEvent,
    Ready,
    Recovered,
    RecoveryCount,
    Response,
    ServingState,
    StepCounts,
    Untrusted,
)
from eep_worker.metrics import WorkerMetrics
from eep_worker.ports import RendezvousService
from eep_worker.protocol import Request
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


@dataclasses.dataclass(frozen=True)
class _LeaderView:
    """Rank 0's last reported serving state, replaced whole so the HTTP thread reads it without a lock."""

    epoch: int
    live: tuple[int, ...]
    """Global ranks active in the world group at rank 0's last plan, ascending."""


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
        self.leader_view: _LeaderView | None = None
        """Member 0: rank 0's epoch and live ranks, None until it reported them (`ServingState`)."""
        self.leader_heard_at = 0.0
        """`time.monotonic()` when rank 0 last reported a step or a new view."""
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self.procs: list[Any] = []
        self._handlers = self.handlers()

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
                event = self.events.get()
            except (EOFError, OSError):
                return
            self.dispatch(event)

    def handlers(self) -> dict[type[RankEvent], Callable[[Any], None]]:
        """The handler of every kind of `events.RankEvent` (a test checks that none is missing)."""
        metric = self.metrics.apply
        return {
            Ready: self._on_ready,
            Joining: self._on_joining,
            Exiting: self._on_exiting,
            Response: self._on_response,
            ServingState: self._on_serving_state,
            Recovered: self._on_recovered,
            # Deliberately dropped: the rank has logged the step (with the ranks it saw fail) and counted it
            # in `rerun_steps` (`StepCounts`); the event exists for the benchmark's detection time.
            Untrusted: lambda event: None,
            RecoveryCount: metric,
            PhaseDuration: metric,
            StepCounts: self._on_step_counts,
            MembershipGauge: metric,
        }

    def dispatch(self, event: RankEvent) -> None:
        """Handle one event from a rank; anything else on the queue is logged and dropped."""
        handler = self._handlers.get(type(event))
        if handler is None:
            log.warning("dropping an unknown event from a rank: %r", event)
            return
        handler(event)

    def _on_ready(self, event: Ready) -> None:
        self.ready.add(event.rank)
        log.info("rank %d ready (%d/%d)", event.rank, len(self.ready), self.s.cluster.rank_count)

    def _on_joining(self, event: Joining) -> None:
        self.ready.discard(event.rank)

    def _on_exiting(self, event: Exiting) -> None:
        if self.exit_code is None:
            self.exit_code, self.exit_reason = event.code, event.reason

    def _on_response(self, event: Response) -> None:
        with self._lock:
            pending = self._pending.get(event.request_id)
        if pending is not None:
            pending.reply = InferReply(
                request_id=event.request_id,
                output=event.output,
                epoch=event.epoch,
                active_ranks=event.active_ranks,
                degraded=event.degraded,
            ).model_dump()
            pending.done.set()

    def _on_serving_state(self, event: ServingState) -> None:
        self.epoch, self.active = event.epoch, event.active_ranks
        self.leader_view = _LeaderView(event.epoch, tuple(sorted(event.active_ranks)))
        self.leader_heard_at = time.monotonic()

    def _on_step_counts(self, event: StepCounts) -> None:
        if event.rank == 0:
            # Rank 0 reports steps at most every `QueueSink.flush_s`; a changed view would have come first.
            self.leader_heard_at = time.monotonic()
        self.metrics.apply(event)

    def _on_recovered(self, event: Recovered) -> None:
        log.info(
            "recovery at epoch %d: %s in %.3fs %s",
            event.epoch,
            "ok" if event.ok else "FAILED",
            event.seconds,
            event.reason,
        )

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
                            ExitCode.LEADER_LOST,
                            f"{LEADER_LOST} (rank exit {code})",
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
        """`POST /v1/infer` on a decoded body: (HTTP status, reply), in the contract's wire form."""
        if self.requests is None:
            return 404, ErrorReply(error="only member 0 serves clients").model_dump()
        m = self.s.model
        if isinstance(body, dict) and not body.get("request_id"):
            body = {**body, "request_id": str(uuid.uuid4())}
        try:
            req = InferRequest.model_validate(body)
        except ValidationError:
            req = None
        if (
            req is None
            or len(req.tokens) > m.max_batch_tokens
            or any(not 0 <= t < VOCAB_SIZE for t in req.tokens)
        ):
            return 400, ErrorReply(
                error=f"need request_id (str) and 1..{m.max_batch_tokens} tokens in [0, {VOCAB_SIZE})"
            ).model_dump()
        if len(self.ready) < self.s.cluster.rank_count:
            return 503, ErrorReply(error="not ready").model_dump()
        pending = _Pending()
        with self._lock:
            self._pending[req.request_id] = pending
        try:
            self.requests.put(Request(req.request_id, req.tokens))
            if not pending.done.wait(REQUEST_TIMEOUT_S):
                return 504, ErrorReply(error="timed out").model_dump()
            return 200, pending.reply
        finally:
            with self._lock:
                self._pending.pop(req.request_id, None)

    def model_info(self) -> dict[str, Any]:
        """`GET /v1/model`: the ModelConfig fields (dtype as a string), so a client can build the float64
        reference. Mirrors how the rank builds its config (`rank.RankRuntime.start`); ModelConfig defaults
        fill the rest."""
        m = self.s.model
        return {
            "config": {
                "num_layers": m.num_layers,
                "hidden_size": m.hidden_size,
                "num_experts": m.num_experts,
                "top_k": m.top_k,
                "seed": m.seed,
                "ffn_size": 128,
                "vocab_size": VOCAB_SIZE,
                "dtype": "float32",
            },
            "max_batch_tokens": m.max_batch_tokens,
        }

    def group_view(self) -> tuple[int, dict[str, Any]]:
        """`GET /v1/group`: (HTTP status, reply): 200 `GroupView` on member 0 once rank 0 has reported its
        view, 503 before, 404 on other members. Reads one snapshot; never blocks."""
        if self.requests is None:
            return 404, ErrorReply(error="only member 0 serves the group view").model_dump()
        view = self.leader_view
        if view is None:
            return 503, ErrorReply(error="the leader has not reported its view yet").model_dump()
        age = max(0.0, time.monotonic() - self.leader_heard_at)
        reply = GroupView(
            epoch=view.epoch,
            world_size=self.s.cluster.world_size,
            live_ranks=list(view.live),
            updated_seconds_ago=age,
        )
        return 200, reply.model_dump()

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
                elif self.path == READY_PATH:
                    ok = len(sup.ready) >= sup.s.cluster.rank_count
                    reply = ReadyReply(ready=sorted(sup.ready))
                    self._send(200 if ok else 503, reply.model_dump_json().encode())
                elif self.path == MODEL_PATH and sup.requests is not None:
                    self._send(200, json.dumps(sup.model_info()).encode())
                elif self.path == GROUP_PATH:
                    code, view = sup.group_view()
                    self._send(code, json.dumps(view).encode())
                elif self.path == "/metrics":
                    self._send(200, generate_latest(sup.registry), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self) -> None:
                if self.path != INFER_PATH:
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
