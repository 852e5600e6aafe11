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


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    env: dict[str, str]


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
