"""Pod IP leases: each pod gets a unique loopback address 127.0.x.y (x >= 1), shared by every agent of a state
directory. A lease is a file `<state>/ips/<ip>` created with O_EXCL whose content is the pod uid, so two
agents never hand out the same address. Linux routes all of 127.0.0.0/8 to `lo`, so processes can bind the
address without any network setup. Called by `processnode.py`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


class Exhausted(RuntimeError):
    """Every address of 127.0.1.1 - 127.0.255.254 is leased."""


_CANDIDATES = tuple(f"127.0.{x}.{y}" for x in range(1, 256) for y in range(1, 255))


def allocate(root: Path, uid: str) -> str:
    """The pod's address: its existing lease if it has one, else a free address. The search starts after the
    number of leases held, so hundreds of pods (the fake-node benchmark) do not rescan the taken range."""
    by_uid = root / "by-uid"
    by_uid.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        ip = (by_uid / uid).read_text()
        if (root / ip).read_text() == uid:
            return ip
    candidates = _CANDIDATES
    start = max(0, len(os.listdir(root)) - 1) % len(candidates)
    for ip in candidates[start:] + candidates[:start]:
        try:
            fd = os.open(root / ip, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(uid)
        (by_uid / uid).write_text(ip)
        return ip
    raise Exhausted("no free pod IP in 127.0.1.0 - 127.0.255.255")


def release(root: Path, ip: str, uid: str) -> None:
    """Drop the lease on `ip` if it still belongs to `uid`."""
    path = root / ip
    with contextlib.suppress(OSError):
        if path.read_text() == uid:
            path.unlink()
    (root / "by-uid" / uid).unlink(missing_ok=True)
