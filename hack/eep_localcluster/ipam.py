"""Pod IP leases: each pod gets a unique loopback address 127.0.x.y (x >= 1), unique across every local
cluster of this machine, so two clusters (two test sessions) never bind the same address and port.

A lease is a file `<leases>/<ip>` created with O_EXCL, in one machine-wide directory (`machine_dir()`);
its content is `<state dir>\\n<pod uid>`. The state directory also keeps `<state>/ips/<uid>` (the pod's
address), so a cluster's `down` releases every lease it holds (`release_all`), and a lease whose state
directory is gone (a cluster removed without `down`) is stale and taken over. Linux routes all of
127.0.0.0/8 to `lo`, so processes can bind the address without any network setup. Called by
`processnode.py` and `__main__`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


class Exhausted(RuntimeError):
    """Every address of 127.0.1.1 - 127.0.255.254 is leased."""


_CANDIDATES = tuple(f"127.0.{x}.{y}" for x in range(1, 256) for y in range(1, 255))


def machine_dir() -> Path:
    """The machine-wide lease directory (per user: `$EEP_LOCALCLUSTER_IPS`, else under the temp dir)."""
    env = os.environ.get("EEP_LOCALCLUSTER_IPS")
    path = Path(env) if env else Path(tempfile.gettempdir()) / f"eep-localcluster-ips-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _owner(lease: Path) -> tuple[str, str] | None:
    with contextlib.suppress(OSError, ValueError):
        state, uid = lease.read_text().split("\n", 1)
        return state, uid
    return None


def allocate(state_ips: Path, uid: str, leases: Path | None = None) -> str:
    """The pod's address: its existing lease if it has one, else a free address. `state_ips` is the cluster's
    own `<state>/ips` directory. The search starts after the number of leases held, so hundreds of pods (the
    fake-node benchmark) do not rescan the taken range. Raises `Exhausted`."""
    leases = leases or machine_dir()
    leases.mkdir(parents=True, exist_ok=True)
    state_ips.mkdir(parents=True, exist_ok=True)
    state = str(state_ips.parent.resolve())
    with contextlib.suppress(OSError):
        ip = (state_ips / uid).read_text()
        if _owner(leases / ip) == (state, uid):
            return ip
    candidates = _CANDIDATES
    start = max(0, len(os.listdir(leases)) - 1) % len(candidates)
    for ip in candidates[start:] + candidates[:start]:
        path = leases / ip
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(path)
            if owner is None or Path(owner[0]).exists():
                continue
            path.unlink(missing_ok=True)  # stale: its cluster's state directory is gone
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{state}\n{uid}")
        (state_ips / uid).write_text(ip)
        return ip
    raise Exhausted("no free pod IP in 127.0.1.0 - 127.0.255.255")


def release(state_ips: Path, ip: str, uid: str, leases: Path | None = None) -> None:
    """Drop the lease on `ip` if it still belongs to `uid` of this cluster."""
    leases = leases or machine_dir()
    path = leases / ip
    with contextlib.suppress(OSError):
        if _owner(path) == (str(state_ips.parent.resolve()), uid):
            path.unlink()
    (state_ips / uid).unlink(missing_ok=True)


def release_all(state_ips: Path, leases: Path | None = None) -> None:
    """Drop every lease this cluster holds (its `down`)."""
    if not state_ips.is_dir():
        return
    for entry in state_ips.iterdir():
        with contextlib.suppress(OSError):
            release(state_ips, entry.read_text(), entry.name, leases)
