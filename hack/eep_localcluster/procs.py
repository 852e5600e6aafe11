"""Detached processes with pid files, the sweep that guarantees `down` leaves nothing behind, and the local
cluster's `free_port()` (the one to import wherever a free loopback port is needed).

Every process the local cluster starts (control plane, node agents, pods) carries the environment variable
`EEP_LOCALCLUSTER_STATE=<state dir>`; children inherit it, so `sweep()` finds them in /proc even when a parent
died abruptly and its pid file is stale. Called by `controlplane.py`, `__main__.py`, `runner.py` and the
agent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "MARKER_ENV",
    "alive",
    "free_port",
    "is_ours",
    "ours",
    "popen_detached",
    "read_pid",
    "spawn_detached",
    "stop",
    "sweep",
]

MARKER_ENV = "EEP_LOCALCLUSTER_STATE"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now. Another process may take it before the caller binds
    it (the usual bind-to-0 race): callers that cannot tolerate that retry on a fresh port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def popen_detached(
    argv: Sequence[str], *, log: Path, state: Path, env: Mapping[str, str], cwd: str | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session (so it outlives the caller and can be killed as a group) with `env`
    plus the marker for `state`, stdin from /dev/null and stdout and stderr appended to `log`.

    Raises OSError when `argv[0]` cannot be run or `log` cannot be opened."""
    full_env = dict(env)
    full_env[MARKER_ENV] = str(state)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
            close_fds=True,
            cwd=cwd,
        )


def spawn_detached(
    argv: Sequence[str], *, log: Path, pid_file: Path, state: Path, env: Mapping[str, str] | None = None
) -> int:
    """`popen_detached` with this process's environment unless `env` is given; records the pid in
    `pid_file` and returns it."""
    proc = popen_detached(argv, log=log, state=state, env=os.environ if env is None else env)
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


_PF_KTHREAD = 0x00200000
EXEC_SETTLE_S = 0.1
"""How long an empty /proc/<pid>/environ is read again before it is believed. A process shows an empty
environment for a moment while it execs (its new memory is mapped before its environment is), and
`subprocess.Popen` returns inside that moment: read once, one start in a few hundred looked exited."""


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state first), or None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _environ(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None


def _marker_in(environ: bytes) -> str | None:
    prefix = MARKER_ENV.encode() + b"="
    for item in environ.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return None


def is_ours(pid: int, state: Path) -> bool:
    """True when `pid` is alive, not a zombie, and was started for this state directory. An empty
    environment is read again for up to `EXEC_SETTLE_S` (the process may be in the middle of an exec)."""
    deadline = time.monotonic() + EXEC_SETTLE_S
    while True:
        fields = _stat(pid)
        if fields is None or fields[0] == "Z" or int(fields[6]) & _PF_KTHREAD:
            return False
        environ = _environ(pid)
        if environ is None:
            return False
        if environ or time.monotonic() >= deadline:
            return _marker_in(environ) == str(state)
        time.sleep(0.002)


def alive(pid_file: Path, state: Path) -> bool:
    pid = read_pid(pid_file)
    return pid is not None and is_ours(pid, state)


def ours(state: Path) -> list[int]:
    """Every live process started for `state` (by its marker), excluding the caller."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and is_ours(int(entry), state):
            found.append(int(entry))
    return found


def in_groups(state: Path, groups: set[int]) -> list[int]:
    """The live processes of `state` whose process group is one of `groups` (a pod's containers)."""
    found = []
    for pid in ours(state):
        fields = _stat(pid)
        if fields is not None and int(fields[2]) in groups:
            found.append(pid)
    return found


def stop(pid_file: Path, state: Path, *, grace_s: float, group: bool = True) -> None:
    """SIGTERM the process (its whole process group when `group`), SIGKILL after `grace_s`."""
    pid = read_pid(pid_file)
    if pid is None or not is_ours(pid, state):
        pid_file.unlink(missing_ok=True)
        return
    _signal(pid, signal.SIGTERM, group)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and is_ours(pid, state):
        time.sleep(0.1)
    if is_ours(pid, state):
        _signal(pid, signal.SIGKILL, group)
        while is_ours(pid, state) and time.monotonic() < deadline + 5:
            time.sleep(0.05)
    pid_file.unlink(missing_ok=True)


def _signal(pid: int, sig: signal.Signals, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def sweep(state: Path, *, timeout_s: float = 5.0) -> list[int]:
    """SIGKILL every remaining process carrying this state's marker; returns the pids that were killed."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout_s
    while True:
        left = ours(state)
        if not left or time.monotonic() > deadline:
            return killed
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.1)
