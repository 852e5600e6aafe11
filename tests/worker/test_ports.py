"""The leader's rendezvous service: replies, random-bytes fuzz, bounded messages, clean shutdown."""

from __future__ import annotations

import json
import random
import socket
from typing import Any

import pytest

zmq = pytest.importorskip("zmq")  # the worker extra

from eep_worker.ports import MAX_MESSAGE, RendezvousError, RendezvousService, ask, handle  # noqa: E402

INFO = {"epoch": 7, "world_size": 3, "active_ranks": [0, 1], "store": "127.0.0.1:1"}


def info() -> dict[str, Any]:
    return dict(INFO)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"\xff", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"op": "bye"}', "unknown op"),
        (b'{"op": "hello"}', "rank must be"),
        (b'{"op": "hello", "rank": 3}', "rank must be"),
        (b'{"op": "hello", "rank": true}', "rank must be"),
        (b'{"op": "hello", "rank": "1"}', "rank must be"),
    ],
)
def test_handle_rejects(payload: bytes, error: str) -> None:
    reply = handle(payload, info, 3)
    assert reply["ok"] is False and error in reply["error"]


def test_handle_answers_and_survives_a_failing_provider() -> None:
    assert handle(b'{"op": "hello", "rank": 2}', info, 3) == {"ok": True, **INFO}

    def broken() -> dict[str, Any]:
        raise KeyError("x")

    assert handle(b'{"op": "hello", "rank": 2}', broken, 3) == {
        "ok": False,
        "error": "info unavailable: KeyError",
    }


def test_fuzz_the_loop_never_dies_and_shutdown_frees_the_port() -> None:
    svc = RendezvousService("127.0.0.1", 0, info, 3)
    port = svc.port
    rng = random.Random(1234)
    ctx = zmq.Context()
    try:
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(f"tcp://127.0.0.1:{port}")
        for i in range(300):
            size = rng.choice([0, 1, 7, 64, 1024, MAX_MESSAGE - 1])
            frames = [bytes(rng.getrandbits(8) for _ in range(size))]
            if i % 3 == 0:
                frames.insert(0, b"")  # REQ-style envelope
            if i % 7 == 0:
                frames = [b"x", *frames]  # bad framing
            dealer.send_multipart(frames)
        replies = 0
        while dealer.poll(500):
            frames = dealer.recv_multipart()
            assert json.loads(frames[-1])["ok"] is False
            replies += 1
        assert replies >= 250  # empty single frames may carry no payload to answer
        # Oversized messages are dropped by ZMQ (the peer is disconnected), never buffered.
        big = ctx.socket(zmq.REQ)
        big.setsockopt(zmq.LINGER, 0)
        big.connect(f"tcp://127.0.0.1:{port}")
        big.send(b"{" * (MAX_MESSAGE * 4))
        assert not big.poll(300)
        big.close()
        # A raw TCP client writing garbage does not stop the loop either.
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(bytes(rng.getrandbits(8) for _ in range(4096)))
        # The loop still answers a well-formed hello.
        assert ask(f"tcp://127.0.0.1:{port}", 1, 5.0) == {"ok": True, **INFO}
        assert svc._thread.is_alive()
        dealer.close()
    finally:
        svc.close()
        ctx.term()
    assert not svc._thread.is_alive()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # the port is free again


def test_ask_times_out_without_a_leader() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RendezvousError, match="no answer"):
        ask(f"tcp://127.0.0.1:{port}", 1, 0.5)
