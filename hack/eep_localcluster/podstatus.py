"""Container state as the process node tracks it, and the pure rules that turn it into Pod status like a
kubelet: phase from `restartPolicy`, restart decisions with back-off, conditions, containerStatuses.

No I/O and no clock reads: callers pass `now`. Called by `processnode.py`; tested as tables in
tests/localcluster/test_localcluster_units.py.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]


def ts(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Termination:
    exit_code: int
    signal: int | None
    reason: str
    message: str
    started_at: datetime.datetime | None
    finished_at: datetime.datetime

    def as_state(self) -> Obj:
        state: Obj = {"exitCode": self.exit_code, "reason": self.reason, "finishedAt": ts(self.finished_at)}
        if self.started_at is not None:
            state["startedAt"] = ts(self.started_at)
        if self.signal is not None:
            state["signal"] = self.signal
        if self.message:
            state["message"] = self.message
        return {"terminated": state}


@dataclass
class ContainerState:
    """One container of one pod. `running_since` is set while a process runs; `terminated` holds the last
    exit; `waiting_reason` explains why nothing runs yet (ContainerCreating, CrashLoopBackOff, and for a start
    that could not happen: CreateContainerConfigError, ErrImagePull, ImagePullBackOff, ErrImageNeverPull).
    `retry_at` is set while such a start waits to be tried again; it is not a restart (restartCount stays).
    `pull_failures` counts failed image pulls in a row (the pull back-off)."""

    name: str
    image: str
    restart_count: int = 0
    running_since: datetime.datetime | None = None
    terminated: Termination | None = None
    last_terminated: Termination | None = None
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    ready: bool = False
    restart_at: datetime.datetime | None = None
    container_id: str = ""
    retry_at: datetime.datetime | None = None
    pull_failures: int = 0
    extra: Obj = field(default_factory=dict)

    def cannot_start(self, reason: str, message: str, retry_at: datetime.datetime) -> None:
        """A start that could not happen (volume, image, configuration): wait with `reason` and `message`,
        and try again at `retry_at`. Nothing ran, so nothing terminated and restartCount stays."""
        self.running_since, self.terminated, self.restart_at, self.ready = None, None, None, False
        self.waiting_reason, self.waiting_message, self.retry_at = reason, message, retry_at

    def pull_backing_off(self) -> None:
        """The kubelet's next look after a failed pull, until the retry: ImagePullBackOff, with the pull's
        error in the message (`Back-off pulling image "x": <error>`)."""
        if self.waiting_reason == "ErrImagePull":
            self.waiting_reason = "ImagePullBackOff"
            self.waiting_message = f'Back-off pulling image "{self.image}": {self.waiting_message}'

    def as_status(self) -> Obj:
        if self.running_since is not None:
            state: Obj = {"running": {"startedAt": ts(self.running_since)}}
        elif self.terminated is not None and self.restart_at is None:
            state = self.terminated.as_state()
        else:
            waiting: Obj = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        # Strategic merge would keep a previous state's key (running next to terminated); null deletes it.
        state = {kind: state.get(kind) for kind in ("waiting", "running", "terminated")}
        status: Obj = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": self.ready and self.running_since is not None,
            "started": self.running_since is not None,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": self.last_terminated.as_state() if self.last_terminated else {},
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status


def exit_reason(exit_code: int) -> str:
    return "Completed" if exit_code == 0 else "Error"


def should_restart(restart_policy: str, exit_code: int) -> bool:
    """Kubelet's rule for regular containers."""
    if restart_policy == "Always":
        return True
    if restart_policy == "OnFailure":
        return exit_code != 0
    return False


def backoff_s(restart_count: int, *, base_s: float = 1.0, cap_s: float = 30.0) -> float:
    """Delay before restart number `restart_count + 1`: doubling from `base_s` (kubelet: 10s with a
    300s cap; shorter here so tests see restarts quickly)."""
    return float(min(cap_s, base_s * (2 ** min(restart_count, 16))))


def phase(restart_policy: str, containers: list[ContainerState]) -> str:
    """Pod phase from container states: Succeeded/Failed once every container has terminated for good,
    Running once any container started (a restart that waits, e.g. on a missing Secret, counts as started, as
    in the kubelet), Pending before."""
    if not containers:
        return "Pending"
    final = [c.terminated for c in containers if c.running_since is None and c.restart_at is None]
    if all(t is not None for t in final) and len(final) == len(containers):
        codes = [t.exit_code for t in final if t is not None]
        if all(code == 0 for code in codes):
            return "Succeeded" if restart_policy != "Always" else "Running"
        return "Failed" if restart_policy == "Never" else "Running"
    started = any(
        c.running_since is not None or c.terminated is not None or c.last_terminated is not None
        for c in containers
    )
    return "Running" if started else "Pending"


def conditions(containers: list[ContainerState], now: datetime.datetime, previous: list[Obj]) -> list[Obj]:
    """Initialized / PodReadyToStartContainers / ContainersReady / Ready; lastTransitionTime changes only
    when a condition's status flips."""
    all_ready = bool(containers) and all(c.ready and c.running_since is not None for c in containers)
    wanted = {
        "PodReadyToStartContainers": True,
        "Initialized": True,
        "ContainersReady": all_ready,
        "Ready": all_ready,
    }
    prev = {c.get("type"): c for c in previous}
    out = []
    for kind, ok in wanted.items():
        status = "True" if ok else "False"
        old = prev.get(kind)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else None
        cond: Obj = {"type": kind, "status": status, "lastTransitionTime": since or ts(now)}
        if not ok and kind in ("ContainersReady", "Ready"):
            cond["reason"] = "ContainersNotReady"
        out.append(cond)
    return out


def pod_status(
    *,
    restart_policy: str,
    containers: list[ContainerState],
    pod_ip: str,
    host_ip: str,
    start_time: datetime.datetime,
    now: datetime.datetime,
    previous_conditions: list[Obj],
) -> Obj:
    """The status body the agent patches onto pods/status."""
    status: Obj = {
        "phase": phase(restart_policy, containers),
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": ts(start_time),
        "conditions": conditions(containers, now, previous_conditions),
        "containerStatuses": [c.as_status() for c in containers],
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return status
