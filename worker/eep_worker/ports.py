"""Rendezvous service on the leader (pyzmq): joining members ask it for addresses, ports and the current
epoch.

Who calls it: the supervisor of member 0 runs `RendezvousService` for the cluster's lifetime; a joiner's
rank calls `ask(...)` before it creates its process groups, and uses the answer to check that it joins the
world it was built for (world size, TCPStore address) and to log the epoch it joins at.

Wire format: one JSON object per message, at most `MAX_MESSAGE` bytes (larger messages are dropped by ZMQ
before they reach us). Request `{"op": "hello", "rank": int}`; reply `{"ok": true, ...info}` or
`{"ok": false, "error": str}`. Malformed input gets an error reply and never stops the loop.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import zmq

__all__ = ["MAX_MESSAGE", "RendezvousError", "RendezvousService", "ask", "handle"]

log = logging.getLogger(__name__)
MAX_MESSAGE = 4096


class RendezvousError(RuntimeError):
    """The leader did not answer in time, or answered with an error."""


def handle(payload: bytes, info: Callable[[], dict[str, Any]], world_size: int) -> dict[str, Any]:
    """The reply to one request. Pure apart from calling `info`. Never raises."""
    try:
        request = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"ok": False, "error": "request is not JSON"}
    if not isinstance(request, dict):
        return {"ok": False, "error": "request must be a JSON object"}
    if request.get("op") != "hello":
        return {"ok": False, "error": f"unknown op {str(request.get('op'))[:64]!r}"}
    rank = request.get("rank")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < world_size:
        return {"ok": False, "error": f"rank must be an integer in [0, {world_size})"}
    try:
        return {"ok": True, **info()}
    except Exception as e:
        return {"ok": False, "error": f"info unavailable: {type(e).__name__}"}


class RendezvousService:
    """A ROUTER socket served by one thread. `close()` stops the thread, joins it and frees the port."""

    def __init__(self, host: str, port: int, info: Callable[[], dict[str, Any]], world_size: int) -> None:
        self._info, self._world_size = info, world_size
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        self._sock.setsockopt(zmq.LINGER, 0)
        if port == 0:
            self.port = self._sock.bind_to_random_port(f"tcp://{host}")
        else:
            self._sock.bind(f"tcp://{host}:{port}")
            self.port = port
        self.served = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rendezvous", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._sock.poll(100):
                    continue
                frames = self._sock.recv_multipart()
                self._answer(frames)
            except zmq.ZMQError as e:
                if self._stop.is_set():
                    return
                log.warning("rendezvous: %s", e)
            except Exception:
                log.exception("rendezvous: unexpected error")

    def _answer(self, frames: list[bytes]) -> None:
        # ROUTER framing: [identity, (empty delimiter from REQ,) payload]
        if len(frames) < 2:
            return  # nothing to route a reply to
        identity, payload = frames[0], frames[-1]
        envelope = frames[1:-1]
        if len(envelope) > 1 or any(envelope):
            reply: dict[str, Any] = {"ok": False, "error": "bad framing"}
        else:
            reply = handle(payload, self._info, self._world_size)
        self.served += 1
        self.errors += 0 if reply.get("ok") else 1
        self._sock.send_multipart([identity, *envelope, json.dumps(reply).encode()])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close(linger=0)
        self._ctx.term()


def ask(address: str, rank: int, timeout_s: float) -> dict[str, Any]:
    """A joiner's hello. Retries until `timeout_s`. Raises RendezvousError."""
    import time  # noqa: PLC0415

    deadline = time.monotonic() + timeout_s
    ctx = zmq.Context()
    try:
        while True:
            sock = ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
            sock.connect(address)
            try:
                sock.send(json.dumps({"op": "hello", "rank": rank}).encode())
                if sock.poll(int(min(1.0, max(0.05, deadline - time.monotonic())) * 1000)):
                    reply = json.loads(sock.recv())
                    if not isinstance(reply, dict) or not reply.get("ok"):
                        raise RendezvousError(f"rendezvous refused: {reply}")
                    return reply
            finally:
                sock.close(linger=0)
            if time.monotonic() >= deadline:
                raise RendezvousError(f"no answer from {address} in {timeout_s:.1f}s")
    finally:
        ctx.term()
