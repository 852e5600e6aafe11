"""The pod launcher: one group's member pods as local processes, `eep-worker serve` on 127.0.0.1, with an
operator stand-in telling them the membership.

A pod is configured the way the operator configures it: the contract's environment (`eep_contract.env`:
`MemberEnv` as the operator renders it, `TuningEnv` for the knobs, the downward-API `EEP_POD_IP`), and the
join flag `--rejoin` for a replacement. Each pod runs in its own session, so `kill()` SIGKILLs the whole pod
(its rank processes too), as a lost node would. Logs go to `<workdir>/member-<index>-<incarnation>.log`.
`kill_and_replace` plays a lost member's whole round against a request stream (`eep_testkit.stream`).

Who uses it: tests/worker (the Mooncake recovery tests), bench/cpu_recovery.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from eep_contract.env import POD_IP, POD_NAME, Coordinator, DataPath, MemberEnv, TuningEnv
from eep_contract.exitcodes import ExitCode
from eep_contract.wire import READY_PATH
from eep_testkit.http_client import HTTPError, request
from eep_testkit.ports import free_port
from eep_testkit.standin import MembershipFile, OperatorStandIn
from eep_testkit.wait import wait_until

if TYPE_CHECKING:  # the stream is the caller's; its client imports torch, which a pod launcher does not need
    from eep_testkit.stream import Stream

__all__ = ["LocalPods", "Pod", "worker_command"]

HOST = "127.0.0.1"


def worker_command(rejoin: bool = False) -> list[str]:
    """`eep-worker serve` with this interpreter's environment (`python -m eep_worker`), `--rejoin` for a
    replacement."""
    return [sys.executable, "-m", "eep_worker", "serve", *(["--rejoin"] if rejoin else [])]


class Pod:
    """One started member pod: its process (a session leader), HTTP port and log."""

    def __init__(
        self, member: int, incarnation: int, proc: subprocess.Popen[bytes], http_port: int, log: Path
    ) -> None:
        self.member, self.incarnation, self.proc, self.http_port, self.log = (
            member,
            incarnation,
            proc,
            http_port,
            log,
        )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        """`(status, body)`; `(0, b"")` when nothing answers."""
        try:
            return request(self.url, "GET", path, None, timeout)
        except (OSError, HTTPError):
            return 0, b""

    def ready(self) -> bool:
        return self.get(READY_PATH)[0] == 200

    def exited(self) -> int | None:
        """The exit code once the pod's process ended, else None."""
        return self.proc.poll()

    def kill(self) -> None:
        """SIGKILL the pod's whole process group and reap it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_log(self, text: str, timeout_s: float, count: int = 1) -> None:
        """Until `text` was logged `count` times. Raises WaitTimeout with the log's tail."""
        wait_until(
            lambda: self.logs().count(text) >= count,
            timeout_s,
            f"{text!r} x{count} in the log of member {self.member}",
            describe=lambda: self.logs()[-2000:],
        )


class LocalPods:
    """`members` pods of `ranks_per_member` ranks each, backend mooncake-cpu and data path `Auto` unless told
    otherwise.

    `standin`: the operator stand-in the pods read (default: a `MembershipFile` in `workdir`); it publishes
    "every rank active" at once, as the operator's first status does. `tuning`: knobs of the reference worker
    (`TuningEnv`); the membership source and the timeouts given here are set on top."""

    JOIN_RETRIES = 2
    """Replacements `kill_and_replace` starts again after a failed or refused join, as the operator would."""

    def __init__(
        self,
        workdir: Path,
        members: int,
        ranks_per_member: int,
        *,
        collective_timeout_s: float = 3.0,
        reconcile_window_s: float = 1.0,
        join_timeout_s: float = 30.0,
        tuning: TuningEnv | None = None,
        standin: OperatorStandIn | None = None,
        backend: str = "mooncake-cpu",
        data_path: DataPath = DataPath.AUTO,
        dedicated: bool = False,
    ) -> None:
        self.workdir, self.members, self.ranks_per_member = workdir, members, ranks_per_member
        self.dedicated = dedicated
        """Member 0's pod is a dedicated coordinator (rank 0 alone, `Coordinator.DEDICATED`); 1.. serve."""
        self.world = 1 + (members - 1) * ranks_per_member if dedicated else members * ranks_per_member
        self.backend, self.data_path = backend, data_path
        self.collective_timeout_s, self.reconcile_window_s = collective_timeout_s, reconcile_window_s
        self.coordinator_port = free_port()
        self.standin = standin or OperatorStandIn(MembershipFile(workdir / "membership.json"))
        tuning = tuning or TuningEnv()
        tuning = dataclasses.replace(
            tuning, join_timeout_s=join_timeout_s, rendezvous_port=tuning.rendezvous_port or free_port()
        )
        self.tuning = self.standin.sink.point(tuning)
        self.pods: dict[int, Pod] = {}
        self.incarnations: dict[int, int] = {}
        self.retried_joins: list[str] = []
        """Replacements replaced again after a failed or refused join (`kill_and_replace`), with their logs'
        last lines: a test may assert there were none."""
        self.standin.publish(range(self.world))

    # ------------------------------------------------------------------ membership (the stand-in's)

    @property
    def epoch(self) -> int:
        return self.standin.epoch

    def write_membership(self, active: Sequence[int], joining: Sequence[int], raw: str | None = None) -> None:
        """Publish the next snapshot through the stand-in; `raw`: send that text instead (epoch unchanged)."""
        if raw is None:
            self.standin.publish(active, joining)
        else:
            self.standin.publish_raw(raw)

    # ------------------------------------------------------------------ pods

    def ranks_of(self, member: int) -> list[int]:
        if not self.dedicated:
            return list(range(member * self.ranks_per_member, (member + 1) * self.ranks_per_member))
        if member == 0:
            return [0]
        return list(range(1 + (member - 1) * self.ranks_per_member, 1 + member * self.ranks_per_member))

    def env_of(self, member: int, http_port: int) -> dict[str, str]:
        """The pod's `EEP_*` environment, rendered from the contract as the operator does."""
        rendered = MemberEnv(
            namespace="local",
            cluster="local-pods",
            member_index=member,
            first_rank=self.ranks_of(member)[0],
            rank_count=len(self.ranks_of(member)),
            world_size=self.world,
            coordinator_addr=f"{HOST}:{self.coordinator_port}",
            backend=self.backend,
            collective_timeout_s=self.collective_timeout_s,
            reconcile_window_s=self.reconcile_window_s,
            http_port=http_port,
            data_path=self.data_path,
            coordinator=Coordinator.DEDICATED if self.dedicated else Coordinator.MEMBER0,
        ).to_env()
        return {**rendered, **self.tuning.to_env(), POD_IP: HOST, POD_NAME: f"member-{member}"}

    def start(self, member: int, rejoin: bool = False) -> Pod:
        """Start the member's pod (a replacement when `rejoin`); does not wait for it."""
        n = self.incarnations[member] = self.incarnations.get(member, 0) + 1
        http_port = free_port()
        log = self.workdir / f"member-{member}-{n}.log"
        # Nothing of the caller's EEP_* environment leaks in (a local cluster's marker, a user's setting).
        env = {k: v for k, v in os.environ.items() if not k.startswith("EEP_")}
        env.update(self.env_of(member, http_port))
        with log.open("wb") as out:
            proc = subprocess.Popen(
                worker_command(rejoin),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        pod = self.pods[member] = Pod(member, n, proc, http_port, log)
        return pod

    def start_all(self, timeout_s: float = 120.0) -> None:
        for m in range(self.members):
            self.start(m)
        self.wait_ready(list(range(self.members)), timeout_s)

    def wait_ready(self, members: Sequence[int], timeout_s: float) -> float:
        """Until every listed member's pod answers /ready; returns the seconds it took. Raises AssertionError
        at once when one of them exits, WaitTimeout when they are not ready in time (with their logs and
        member 0's, whose leader admits joiners)."""
        t0 = time.monotonic()

        def ready() -> bool:
            for m in members:
                code = self.pods[m].exited()
                if code is not None:
                    raise AssertionError(f"member {m} exited {code}:\n{self.pods[m].logs()[-3000:]}")
            return all(self.pods[m].ready() for m in members)

        wait_until(
            ready,
            timeout_s,
            f"members {list(members)} ready",
            describe=lambda: "\n".join(
                f"--- member {m} ---\n{self.pods[m].logs()[-3000:]}" for m in sorted({0, *members})
            ),
        )
        return time.monotonic() - t0

    def kill(self, member: int) -> None:
        self.pods[member].kill()

    def kill_and_replace(
        self, member: int, stream: Stream, answer_timeout_s: float = 30.0, ready_timeout_s: float = 90.0
    ) -> Pod:
        """One lost member and its replacement, the operator's part played by the stand-in: SIGKILL the
        member's pod and publish the others active; once `stream` has an answer from them, start a
        replacement (`--rejoin`) and publish its ranks joining; once it is ready, publish every rank active
        and wait for an answer from all of them. A replacement that exits with `ExitCode.JOIN_FAILED` or
        `JOIN_REFUSED` is replaced again, up to `JOIN_RETRIES` times (noted in `retried_joins`). Returns the
        replacement. Raises WaitTimeout, or AssertionError when the replacement exits otherwise."""
        lost = self.ranks_of(member)
        everyone = list(range(self.world))
        survivors = [r for r in everyone if r not in lost]
        self.kill(member)
        self.write_membership(survivors, [])
        stream.wait_answer(lambda a: a["active_ranks"] == survivors, answer_timeout_s)
        pod = self.start(member, rejoin=True)
        self.write_membership(survivors, lost)
        for _ in range(self.JOIN_RETRIES):
            # As the operator does: a replacement whose join failed (or was refused while a dead one's
            # registration is held) is replaced again.
            try:
                self.wait_ready([member], ready_timeout_s)
                break
            except AssertionError:
                if pod.exited() not in (ExitCode.JOIN_FAILED, ExitCode.JOIN_REFUSED):
                    raise
                self.retried_joins.append(f"member {member}: {pod.logs()[-400:]}")
                pod = self.start(member, rejoin=True)
        else:
            self.wait_ready([member], ready_timeout_s)
        self.write_membership(everyone, [])
        stream.wait_answer(lambda a: a["active_ranks"] == everyone, answer_timeout_s)
        return pod

    def stop(self) -> None:
        """Kill every pod and close the stand-in."""
        for pod in self.pods.values():
            pod.kill()
        self.standin.close()

    def __enter__(self) -> LocalPods:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
