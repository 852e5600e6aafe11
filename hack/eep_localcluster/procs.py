"""Detached processes with pid files, and the sweep that guarantees `down` leaves nothing behind.

Every process the local cluster starts (control plane, node agents, pods) carries the environment variable
`EEP_LOCALCLUSTER_STATE=<state dir>`; children inherit it, so `sweep()` finds them in /proc even when a parent
died abruptly and its pid file is stale. Called by `controlplane.py`, `__main__.py` and the agent.
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

MARKER_ENV = "EEP_LOCALCLUSTER_STATE"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the usual bind-to-0 race is acceptable here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_detached(
    argv: Sequence[str], *, log: Path, pid_file: Path, state: Path, env: Mapping[str, str] | None = None
) -> int:
    """Start `argv` in its own session (so it outlives the caller and can be killed as a group), stdout and
    stderr appended to `log`, and record its pid."""
    full_env = dict(os.environ if env is None else env)
    full_env[MARKER_ENV] = str(state)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
            close_fds=True,
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _marker_of(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = MARKER_ENV.encode() + b"="
    for item in raw.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return None


def is_ours(pid: int, state: Path) -> bool:
    """True when `pid` is alive, not a zombie, and was started for this state directory."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    return _marker_of(pid) == str(state)


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
