"""`eep_operator.io.groupview.fetch_group_view` against a tiny local HTTP server: the view when member 0 gives
one, None for every other outcome (and never an exception)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from eep_contract.wire import GROUP_PATH, GroupView
from eep_operator.io.groupview import MAX_BODY, fetch_group_view

HOST = "127.0.0.1"
VIEW: dict[str, Any] = {"epoch": 3, "world_size": 3, "live_ranks": [0, 2], "updated_seconds_ago": 0.4}


class Member0:
    """A stand-in for member 0's HTTP server: `answer` is (status, body) for GROUP_PATH; "hang" never answers,
    "drop" closes the connection without an answer. `paths` records what was asked."""

    def __init__(self) -> None:
        self.answer: tuple[int, bytes] | str = (200, json.dumps(VIEW).encode())
        self.paths: list[str] = []
        self.release = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stub.paths.append(self.path)
                answer = stub.answer if self.path == GROUP_PATH else (404, b'{"error": "not found"}')
                if answer == "hang":
                    stub.release.wait(10)
                    return
                if answer == "drop":
                    self.close_connection = True
                    return
                assert isinstance(answer, tuple)
                code, body = answer
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def fetch(self, timeout_s: float = 2.0) -> GroupView | None:
        return fetch_group_view(HOST, self.port, timeout_s)


@pytest.fixture
def member0() -> Iterator[Member0]:
    stub = Member0()
    thread = threading.Thread(target=stub.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        stub.release.set()
        stub.server.shutdown()
        stub.server.server_close()


def test_a_valid_view_is_returned(member0: Member0) -> None:
    assert member0.fetch() == GroupView(epoch=3, world_size=3, live_ranks=[0, 2], updated_seconds_ago=0.4)
    assert member0.paths == [GROUP_PATH]


def test_no_proxy_of_the_environment_is_used(member0: Member0, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert member0.fetch() is not None


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, b'{"error": "only member 0 serves the group view"}'),
        (503, b'{"error": "the leader has not reported its view yet"}'),
        (500, b""),
        (204, b""),
        (200, b"not json"),
        (200, b""),
        (200, b"[0, 1]"),
        (200, json.dumps({**VIEW, "live_ranks": [0, 3]}).encode()),
        (200, json.dumps({k: v for k, v in VIEW.items() if k != "epoch"}).encode()),
        (200, json.dumps({**VIEW, "extra": 1}).encode()),
        (200, b"\xff\xfe"),
        (200, b" " * MAX_BODY + json.dumps(VIEW).encode()),
    ],
    ids=lambda v: str(v)[:24],
)
def test_any_other_answer_is_none(member0: Member0, status: int, body: bytes) -> None:
    member0.answer = (status, body)
    assert member0.fetch() is None


def test_a_connection_closed_without_an_answer_is_none(member0: Member0) -> None:
    member0.answer = "drop"
    assert member0.fetch() is None


def test_a_member_that_never_answers_is_none_after_the_timeout(member0: Member0) -> None:
    member0.answer = "hang"
    t0 = time.monotonic()
    assert member0.fetch(timeout_s=0.3) is None
    assert time.monotonic() - t0 < 3.0


def test_a_refused_connection_is_none() -> None:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]  # bound, not listening: a connection is refused
        assert fetch_group_view(HOST, port, 1.0) is None


@pytest.mark.parametrize(("ip", "port"), [("not an address", 80), (HOST, 70000), ("", 80)])
def test_a_bad_address_is_none(ip: str, port: int) -> None:
    assert fetch_group_view(ip, port, 0.5) is None
