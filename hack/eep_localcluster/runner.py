"""Run one container as local processes, and probe it.

A container runs as `unshare --mount -- sh -c <setup> argv...`: its own session/process group (setsid) and its
own mount namespace, where the setup script bind-mounts the pod's /etc/hosts, its service-account directory,
its termination-message file and its emptyDir volumes, then `exec`s the command. The image is not pulled; the
command runs on the host with the virtualenv's bin/ first on PATH. Called by `processnode.py`.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import signal
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eep_localcluster.procs import popen_detached

Obj = dict[str, Any]
UNSHARE = "/usr/bin/unshare"
NSENTER = "/usr/bin/nsenter"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"


@dataclass(frozen=True)
class Mount:
    """Bind `source` (a file or directory on the host) over `target` inside the pod's mount namespace."""

    source: Path
    target: str
    is_dir: bool


def setup_script(mounts: list[Mount], working_dir: str | None) -> str:
    """The shell run inside the new mount namespace before `exec "$@"`. Mount targets must exist, so missing
    ones are created (empty) on the host filesystem, which the namespace shares."""
    lines = ["set -e"]
    for m in mounts:
        t = shlex.quote(m.target)
        if m.is_dir:
            lines.append(f"mkdir -p {t}")
        else:
            lines.append(f"mkdir -p $(dirname {t}); [ -e {t} ] || : > {t}")
        lines.append(f"mount --bind {shlex.quote(str(m.source))} {t}")
    if working_dir:
        lines.append(f"mkdir -p {shlex.quote(working_dir)}; cd {shlex.quote(working_dir)}")
    lines.append('exec "$@"')
    return "\n".join(lines)


def start(
    argv: list[str],
    *,
    env: Mapping[str, str],
    mounts: list[Mount],
    working_dir: str | None,
    log: Path,
    state: Path,
) -> subprocess.Popen[bytes]:
    """Start the container; stdout and stderr append to `log`. The returned process is the group leader."""
    wrapped = [UNSHARE, "--mount", "--propagation", "private", "--", "/bin/sh", "-c"]
    wrapped += [setup_script(mounts, working_dir), "sh", *argv]
    return popen_detached(wrapped, log=log, state=state, env=env, cwd="/")


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def exit_of(returncode: int) -> tuple[int, int | None]:
    """(exitCode, signal) the way a container runtime reports them: killed by signal N -> 128+N."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


def termination_message(path: Path, log: Path, policy: str, exit_code: int) -> str:
    """The termination message file's content (4 KiB max); with FallbackToLogsOnError and a failed container
    whose file is empty, the log's tail (80 lines, 2 KiB) instead."""
    with contextlib.suppress(OSError):
        text = path.read_bytes()[:4096].decode(errors="replace")
        if text:
            return text
    if policy == "FallbackToLogsOnError" and exit_code != 0:
        with contextlib.suppress(OSError):
            lines = log.read_bytes()[-65536:].decode(errors="replace").splitlines()[-80:]
            return "\n".join(lines)[-2048:]
    return ""


def _port(container: Obj, port: int | str) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"no container port named {port!r}")


def probe(
    spec: Obj, *, container: Obj, pod_ip: str, pid: int, env: Mapping[str, str], timeout_s: float
) -> bool:
    """Run one probe attempt; True on success. httpGet and tcpSocket default to the pod IP; exec runs inside
    the container's mount namespace with its environment."""
    try:
        if "httpGet" in spec:
            h = spec["httpGet"]
            host = h.get("host") or pod_ip
            conn_cls = (
                http.client.HTTPSConnection if h.get("scheme") == "HTTPS" else http.client.HTTPConnection
            )
            conn = conn_cls(host, _port(container, h["port"]), timeout=timeout_s)
            try:
                headers = {x["name"]: x["value"] for x in h.get("httpHeaders") or []}
                conn.request("GET", h.get("path") or "/", headers=headers)
                return 200 <= conn.getresponse().status < 400
            finally:
                conn.close()
        if "tcpSocket" in spec:
            t = spec["tcpSocket"]
            with socket.create_connection((t.get("host") or pod_ip, _port(container, t["port"])), timeout_s):
                return True
        if "exec" in spec:
            cmd = [NSENTER, "--target", str(pid), "--mount", "--", *spec["exec"]["command"]]
            r = subprocess.run(cmd, env=dict(env), capture_output=True, timeout=timeout_s, check=False)
            return r.returncode == 0
    except (OSError, ValueError, http.client.HTTPException, subprocess.TimeoutExpired):
        return False
    return False
