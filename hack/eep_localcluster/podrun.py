"""What the agent holds for one pod it runs: the pod JSON, its IP, its directory, container states, processes.
Used by `processnode.py`."""

from __future__ import annotations

import datetime
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eep_localcluster.podstatus import ContainerState

Obj = dict[str, Any]


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def micro(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Readiness:
    """The readiness verdict about one start of one container. Its probe thread is the only writer; the
    agent's sync loop reads it and is the only writer of `ContainerState.ready`. A restarted container gets a
    new `Readiness`, so a late verdict about a process that has exited cannot reach its successor."""

    def __init__(self, ready: bool) -> None:
        self._lock = threading.Lock()
        self._ready = ready

    def set(self, ready: bool) -> bool:
        """Record the verdict; True when it differs from the one before."""
        with self._lock:
            changed = ready != self._ready
            self._ready = ready
            return changed

    def get(self) -> bool:
        with self._lock:
            return self._ready


@dataclass
class Proc:
    """One start of one container: its process (the group leader), its environment, its readiness."""

    popen: subprocess.Popen[bytes]
    env: dict[str, str]
    readiness: Readiness


class PodRun:
    """Everything the agent holds for one pod it runs."""

    def __init__(self, pod: Obj, ip: str, pod_dir: Path) -> None:
        self.uid: str = pod["metadata"]["uid"]
        self.ns: str = pod["metadata"]["namespace"]
        self.name: str = pod["metadata"]["name"]
        self.pod = pod
        self.ip = ip
        self.dir = pod_dir
        self.start_time = now_utc()
        self.containers = [ContainerState(c["name"], c.get("image", "")) for c in pod["spec"]["containers"]]
        self.procs: dict[str, Proc] = {}
        self.kill_deadline: float | None = None
        self.last_status: Obj | None = None
        self.token_at = 0.0
        self.probe_stop = threading.Event()
        self.hosts_text = ""

    def spec_of(self, name: str) -> Obj:
        return next(c for c in self.pod["spec"]["containers"] if c["name"] == name)

    @property
    def hosts(self) -> Path:
        return self.dir / "hosts"

    @property
    def sa_dir(self) -> Path:
        return self.dir / "serviceaccount"
