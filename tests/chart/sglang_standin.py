"""A STAND-IN for SGLang's `launch_server` with Elastic EP (not SGLang: no model, no GPU, no Mooncake).

Run as a member pod's command on the local process node (the engine container's
`command: [python3, <this file>]` in `spec.template`); the operator passes the SGLang command line it
rendered as the arguments. It reproduces the behaviours of SGLang 0.5.x that the operator depends on
(docs/sglang.md), in small:

- Admission only after a served request. Node 0 keeps the joiners that asked to join (on the coordinator
  port of `--dist-init-addr`, as Mooncake's store is there) and admits them only at the end of a served
  `POST /generate` ("forward pass"). A replacement (`--elastic-ep-join-mode recover` or
  `--elastic-ep-rejoin`) waits in "join_group" until admitted, or exits 1 after `STANDIN_JOIN_TIMEOUT_S`
  (SGLang/Mooncake: 300 s).
- Health. Node 0's `GET /health` answers 200, but while it admits a joiner (`STANDIN_ADMIT_S` seconds) it
  waits `STANDIN_HEALTH_WAIT_S` and answers 503 (SGLang: a one-token generation, 503 after ~20 s).
  Nodes >= 1 have no listener until they joined; then a server that answers 200 whatever happens behind it.
- Schedulers. Every node starts one child per rank (`EEP_RANK_COUNT`) titled `sglang::scheduler_TP<rank>`
  and never reaps them: a child that dies leaves the node running and its health at 200.

Also: `GET /stats` (served generations, admitted ranks, scheduler pids) and `GET /exit/<code>` on the engine
port, for the tests. Binds `EEP_POD_IP` (the command line says `--host 0.0.0.0`; process-node pods share the
host's network). Standard library only.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

JOIN_TIMEOUT_S = float(os.environ.get("STANDIN_JOIN_TIMEOUT_S", "300"))
ADMIT_S = float(os.environ.get("STANDIN_ADMIT_S", "3"))
HEALTH_WAIT_S = float(os.environ.get("STANDIN_HEALTH_WAIT_S", "2"))

IP = os.environ["EEP_POD_IP"]
FIRST_RANK = int(os.environ.get("EEP_FIRST_RANK", "0"))
RANKS = int(os.environ.get("EEP_RANK_COUNT", "1"))


def log(message: str) -> None:
    print(f"[sglang stand-in] {message}", flush=True)


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--dist-init-addr", default="")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--elastic-ep-join-mode", default=None)
    p.add_argument("--elastic-ep-rejoin", action="store_true")
    args, _ = p.parse_known_args(sys.argv[1:])
    return args


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting: set[int] = set()
        self.admitted: set[int] = set()
        self.busy_until = 0.0
        self.generated = 0
        self.schedulers: list[int] = []


STATE = State()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def reply(self, code: int, body: dict[str, Any] | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class Engine(Handler):
    """The engine port: /health, /generate (node 0), /stats, /exit/<code>."""

    leader = False

    def do_GET(self) -> None:
        if self.path.startswith("/exit/"):
            self.reply(200)
            threading.Timer(0.05, os._exit, (int(self.path.split("/")[2]),)).start()
        elif self.path == "/stats":
            with STATE.lock:
                stats = {
                    "generated": STATE.generated,
                    "admitted": sorted(STATE.admitted),
                    "schedulers": STATE.schedulers,
                }
            self.reply(200, stats)
        elif self.path in ("/health", "/health_generate"):
            busy = self.leader and time.monotonic() < STATE.busy_until
            if busy:  # SGLang's health generation gets no answer while the survivors admit
                time.sleep(HEALTH_WAIT_S)
            self.reply(503 if busy else 200)
        else:
            self.reply(404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if not (self.leader and self.path == "/generate"):
            self.reply(404)
            return
        time.sleep(0.05)  # the forward pass; joiners are looked for at its end
        with STATE.lock:
            STATE.generated += 1
            joiners = sorted(STATE.waiting)
            if joiners:
                STATE.busy_until = time.monotonic() + ADMIT_S
        if joiners:
            log(f"admitting node(s) {joiners} at the end of a forward pass")
            time.sleep(ADMIT_S)  # recover_ranks + metadata broadcast: the request waits
            with STATE.lock:
                STATE.admitted |= set(joiners)
                STATE.waiting -= set(joiners)
        self.reply(200, {"text": "x", "meta_info": {"completion_tokens": 1}})


class Coordinator(Handler):
    """Node 0's store port: joiners ask to join and poll whether they were admitted."""

    def do_POST(self) -> None:
        rank = int(self.path.rsplit("/", 1)[1])
        with STATE.lock:
            STATE.admitted.discard(rank)
            STATE.waiting.add(rank)
        log(f"node {rank} waits in join_group")
        self.reply(200)

    def do_GET(self) -> None:
        rank = int(self.path.rsplit("/", 1)[1])
        with STATE.lock:
            ok = rank in STATE.admitted
        self.reply(200 if ok else 404)


def serve(port: int, handler: type[Handler]) -> None:
    server = http.server.ThreadingHTTPServer((IP, port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def start_schedulers() -> None:
    sleep = shutil.which("sleep") or "/bin/sleep"
    for rank in range(FIRST_RANK, FIRST_RANK + RANKS):
        child = subprocess.Popen([f"sglang::scheduler_TP{rank}", "infinity"], executable=sleep)
        STATE.schedulers.append(child.pid)


def join(store: str, node: int) -> None:
    """Ask node 0 to be admitted, then wait for it (`join_group`)."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    asked = False
    while time.monotonic() < deadline:
        try:
            if not asked:
                urllib.request.urlopen(
                    urllib.request.Request(f"{store}/join/{node}", method="POST"), timeout=2
                )
                asked = True
            urllib.request.urlopen(f"{store}/admitted/{node}", timeout=2).read()
            log("admitted: joined the group, metadata received")
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    log(f"join_group timed out after {JOIN_TIMEOUT_S:g}s")
    sys.exit(1)


def main() -> None:
    args = arguments()
    joining = args.elastic_ep_rejoin or args.elastic_ep_join_mode == "recover"
    host, _, store_port = args.dist_init_addr.rpartition(":")
    start_schedulers()
    log(f"node {args.node_rank}{' (joining)' if joining else ''}, schedulers {STATE.schedulers}")
    if args.node_rank == 0:
        Engine.leader = True
        serve(int(store_port), Coordinator)
    elif joining:
        join(f"http://{host}:{store_port}", args.node_rank)
    serve(args.port, Engine)
    threading.Event().wait()


if __name__ == "__main__":
    main()
