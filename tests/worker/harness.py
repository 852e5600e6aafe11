"""Runs `eep-worker serve` pods as real processes on 127.0.0.1 for the worker tests and the CPU benchmark.

A `LocalCluster` plays the operator's part: it writes the membership file the leader reads (file source),
starts member pods (replacements with --rejoin) and kills them. `Client` posts to member 0's /v1/infer and
checks every answer against the float64 reference.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pod:
    def __init__(self, member: int, proc: subprocess.Popen[bytes], http_port: int, log: Path) -> None:
        self.member, self.proc, self.http_port, self.log = member, proc, http_port, log

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, OSError):
            return 0, b""

    def ready(self) -> bool:
        return self.get("/ready")[0] == 200

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class LocalCluster:
    def __init__(
        self,
        workdir: Path,
        members: int,
        ranks_per_member: int,
        *,
        collective_timeout_s: float = 3.0,
        reconcile_window_s: float = 1.0,
        join_timeout_s: float = 30.0,
        extra_args: list[str] | None = None,
    ):
        self.dir, self.members, self.rpm = workdir, members, ranks_per_member
        self.world = members * ranks_per_member
        self.coord_port = free_port()
        self.rdv_port = free_port()
        self.membership_file = workdir / "membership.json"
        self.epoch = 0
        self.timeouts = (collective_timeout_s, reconcile_window_s, join_timeout_s)
        self.extra = extra_args or []
        self.pods: dict[int, Pod] = {}
        self.incarnation: dict[int, int] = {}
        self.write_membership(list(range(self.world)), [])

    def write_membership(self, active: list[int], joining: list[int], raw: str | None = None) -> None:
        tmp = self.membership_file.with_suffix(".tmp")
        if raw is None:
            self.epoch += 1
            raw = json.dumps(
                {
                    "membership": {
                        "epoch": self.epoch,
                        "activeRanks": sorted(active),
                        "joiningRanks": sorted(joining),
                    }
                }
            )
        tmp.write_text(raw)
        tmp.replace(self.membership_file)

    def ranks_of(self, member: int) -> list[int]:
        return list(range(member * self.rpm, (member + 1) * self.rpm))

    def start(self, member: int, rejoin: bool = False) -> Pod:
        n = self.incarnation[member] = self.incarnation.get(member, 0) + 1
        http_port = free_port()
        log = self.dir / f"member-{member}-{n}.log"
        c, r, j = self.timeouts
        args = [
            str(VENV_BIN / "eep-worker"),
            "serve",
            "--member-index",
            str(member),
            "--first-rank",
            str(member * self.rpm),
            "--rank-count",
            str(self.rpm),
            "--world-size",
            str(self.world),
            "--coordinator",
            f"127.0.0.1:{self.coord_port}",
            "--rendezvous-port",
            str(self.rdv_port),
            "--backend",
            "mooncake-cpu",
            "--collective-timeout-s",
            str(c),
            "--reconcile-window-s",
            str(r),
            "--join-timeout-s",
            str(j),
            "--pod-ip",
            "127.0.0.1",
            "--http-port",
            str(http_port),
            "--membership-source",
            "file",
            "--membership-file",
            str(self.membership_file),
            *self.extra,
        ]
        if rejoin:
            args.append("--rejoin")
        env = {k: v for k, v in os.environ.items() if not k.startswith("EEP_")}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        pod = self.pods[member] = Pod(member, proc, http_port, log)
        return pod

    def start_all(self, timeout_s: float = 120.0) -> None:
        for m in range(self.members):
            self.start(m)
        self.wait_ready(list(range(self.members)), timeout_s)

    def wait_ready(self, members: list[int], timeout_s: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if all(self.pods[m].ready() for m in members):
                return time.monotonic() - t0
            for m in members:
                if self.pods[m].proc.poll() is not None:
                    raise AssertionError(
                        f"member {m} exited {self.pods[m].proc.returncode}:\n{self.pods[m].logs()[-3000:]}"
                    )
            time.sleep(0.1)
        raise AssertionError(
            f"members {members} not ready in {timeout_s}s:\n"
            + "\n".join(self.pods[m].logs()[-2000:] for m in members)
        )

    def stop(self) -> None:
        for pod in self.pods.values():
            pod.kill()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Client:
    """Posts requests to member 0 and checks each answer against the float64 reference."""

    def __init__(
        self, pod: Pod, *, layers: int = 4, experts: int = 8, top_k: int = 2, hidden: int = 64, seed: int = 0
    ) -> None:
        from eep_worker.moe import ModelConfig, ReferenceMoEModel, tolerance_for  # noqa: PLC0415

        self.pod = pod
        self.config = ModelConfig(
            num_layers=layers, hidden_size=hidden, num_experts=experts, top_k=top_k, seed=seed
        )
        self.reference = ReferenceMoEModel(self.config)
        self.tolerance = tolerance_for(self.config)
        self.n = 0
        self.answers: list[dict[str, Any]] = []

    def infer(self, tokens: list[int], timeout: float = 60.0) -> dict[str, Any]:
        import torch  # noqa: PLC0415

        from eep_worker.moe import compare  # noqa: PLC0415

        self.n += 1
        rid = f"req-{self.n}"
        data = json.dumps({"request_id": rid, "tokens": tokens}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.pod.http_port}/v1/infer",
            data=data,
            headers={"Content-Type": "application/json"},
        )
        t0 = time.monotonic()
        with urllib.request.urlopen(req, timeout=timeout) as r:
            reply: dict[str, Any] = json.loads(r.read())
        reply["latency_s"] = time.monotonic() - t0
        assert reply["request_id"] == rid
        check = compare(
            torch.tensor(reply["output"], dtype=torch.float64), self.reference.run(tokens), self.tolerance
        )
        assert check.ok, f"wrong answer for {tokens}: {check}"
        self.answers.append(reply)
        return reply
