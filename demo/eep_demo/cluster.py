"""Thin I/O against the local control plane for the demo: CR status sampling, member-0 address, killing a
member pod's processes. (helm and kubectl: `eep_testkit.tools`.)

Called by `eep_demo.scenario`. Everything here talks to the API server with the admin kubeconfig or to
/proc; the decisions (what the samples mean) live in `eep_demo.timeline`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from eep_contract.env import POD_NAME, MemberEnv
from eep_contract.v1alpha1 import GROUP, PLURAL, VERSION
from eep_demo.timeline import MemberSample, StatusSample
from eep_testkit.membership import membership_of
from eep_testkit.pump import Pump

# The kubernetes client carries no annotations; one Any-typed handle keeps mypy --strict quiet.
k8s: Any = kubernetes
NAMESPACE = MemberEnv.names()["namespace"]
"""The member pod's variable naming its cluster's namespace."""

__all__ = [
    "Kube",
    "PodEndpoint",
    "StatusSampler",
    "find_pod_processes",
    "kill_pod_processes",
    "sample_of",
]

Clock = Callable[[], float]


class Kube:
    """API handles for one kubeconfig."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.api = k8s.config.new_client_from_config(config_file=str(kubeconfig))
        self.core = k8s.client.CoreV1Api(self.api)
        self.custom = k8s.client.CustomObjectsApi(self.api)

    def close(self) -> None:
        self.api.close()

    def get_cr(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            resp = self.core.read_namespaced_pod(name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        obj: dict[str, Any] = json.loads(resp.data)
        return obj

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        resp = self.core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
        items: list[dict[str, Any]] = json.loads(resp.data)["items"]
        return items

    def ensure_namespace(self, namespace: str) -> bool:
        """Create the namespace if missing; True when created here."""
        try:
            self.core.read_namespace(namespace)
            return False
        except ApiException as exc:
            if exc.status != 404:
                raise
        self.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        return True


def sample_of(obj: dict[str, Any], t: float) -> StatusSample:
    """A StatusSample of a CR object (raw JSON) observed at `t`. Raises ValueError when its membership does
    not parse."""
    status = obj.get("status") or {}
    membership = membership_of(obj)
    members = tuple(
        MemberSample(
            index=int(m.get("index", -1)),
            state=str(m.get("state", "Pending")),
            pod_uid=m.get("podUid"),
            restarts=int(m.get("restarts", 0)),
        )
        for m in status.get("members") or []
    )
    spec = obj.get("spec") or {}
    world = int(status.get("worldSize") or int(spec.get("nodes", 0)) * int(spec.get("ranksPerNode", 8)))
    return StatusSample(
        t=t,
        phase=str(status.get("phase", "Pending")),
        epoch=membership.epoch,
        active_ranks=len(membership.active_ranks),
        world_size=world,
        members=members,
    )


class StatusSampler:
    """Polls the CR every `interval_s` in a thread; keeps every sample and the latest object."""

    def __init__(
        self, kube: Kube, namespace: str, name: str, interval_s: float = 0.2, clock: Clock = time.monotonic
    ) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.interval_s = interval_s
        self.clock = clock
        self.samples: list[StatusSample] = []
        self.latest: dict[str, Any] | None = None
        self._lock = threading.Lock()
        # A transient API error is a missing sample, not a crash: the pump counts it and carries on.
        self._pump = Pump(
            self._sample, name="status-sampler", interval_s=interval_s, error_backoff_s=interval_s
        )

    @property
    def errors(self) -> int:
        """Samples missed: the API did not answer, or the status did not parse."""
        return self._pump.errors

    def start(self) -> None:
        self._pump.start()

    def stop(self) -> None:
        self._pump.stop(10)

    def snapshot(self) -> list[StatusSample]:
        with self._lock:
            return list(self.samples)

    def _sample(self) -> None:
        obj = self.kube.get_cr(self.namespace, self.name)
        t = self.clock()
        if obj is not None:
            sample = sample_of(obj, t)
            with self._lock:
                self.latest = obj
                self.samples.append(sample)


class PodEndpoint:
    """Member 0's serving address from its pod's status.podIP (the host has no cluster DNS)."""

    def __init__(self, kube: Kube, namespace: str, pod_name: str, port: int) -> None:
        self.kube, self.namespace, self.pod_name, self.port = kube, namespace, pod_name, port
        self._url: str | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def url(self) -> str | None:
        with self._lock:
            if self._url is None and time.monotonic() - self._checked > 0.5:
                self._checked = time.monotonic()
                try:
                    pod = self.kube.pod(self.namespace, self.pod_name)
                except Exception:
                    pod = None
                ip = ((pod or {}).get("status") or {}).get("podIP")
                running = ((pod or {}).get("status") or {}).get("phase") == "Running"
                deleting = ((pod or {}).get("metadata") or {}).get("deletionTimestamp")
                if ip and running and not deleting:
                    self._url = f"http://{ip}:{self.port}"
            return self._url

    def invalidate(self) -> None:
        with self._lock:
            self._url = None


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def find_pod_processes(namespace: str, pod_name: str) -> dict[int, int]:
    """{pid: pgid} of every process whose environment names this pod (its name, from the downward API, and
    its cluster's namespace, which the operator renders into every member container: `eep_contract.env`)."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        env = _environ(pid)
        if env.get(POD_NAME) == pod_name and env.get(NAMESPACE) == namespace:
            with contextlib.suppress(ProcessLookupError):
                found[pid] = os.getpgid(pid)
    return found


def kill_pod_processes(namespace: str, pod_name: str) -> dict[int, int]:
    """SIGKILL the process group(s) of a member pod's container: what a crashed rank or a lost GPU looks like
    to the node. Returns what was killed; empty when no process was found."""
    found = find_pod_processes(namespace, pod_name)
    for pgid in sorted(set(found.values())):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    for pid in found:  # a process outside the group (should not happen) goes too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return found
