"""Helpers for the bad-days end-to-end tests (test_e2e_baddays.py): node agents signalled like a sick machine,
members placed on a node of their own, and a recorder that watches pods and status while a fault lasts.

- Agents are signalled with the test kit's `eep_testkit.agents.signal_agent` (SIGSTOP/SIGCONT/SIGKILL one
  process-node agent). The agent's pods are separate sessions: SIGKILL leaves their processes running, as a
  dead kubelet leaves its containers; SIGSTOP freezes only the heartbeats and the pod sync.
- `extra_node(cluster, name)`: start one more agent for a test and, whatever happened to it, leave nothing:
  no agent, no pod process, no pod IP lease, no Node, no pod bound to it.
- `move_member(...)`: put one member on a given node through a replacement (the other nodes cordoned).
- `Recorder`: samples the CR's pods and status every `interval_s` in a thread; checks run on every sample
  and collect violations (an invariant a fault must not break), so a wait can stop at the first one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from eep_contract.v1alpha1 import Annotations, Labels, RecoverySpec
from eep_localcluster import ipam, procs
from eep_localcluster.layout import Layout
from eep_testkit.agents import signal_agent

__all__ = [
    "PodView",
    "Recorder",
    "Sample",
    "answers",
    "extra_node",
    "kill_pod_processes",
    "move_member",
    "pod_pids",
    "recovery_fields",
]


def recovery_fields(**fields: Any) -> dict[str, Any]:
    """`fields` (wire names, `nodeLostGraceSeconds=10`) minus those the installed contract's `RecoverySpec`
    does not know: an operator older than a field rejects a spec that carries it, and these tests must also
    run (and fail for the right reason) against the operator before the fix."""
    known = {f.alias or name for name, f in RecoverySpec.model_fields.items()}
    return {k: v for k, v in fields.items() if k in known}


def pod_pids(state: Path, node: str, uid: str) -> list[int]:
    """The process-group leaders the agent of `node` started for pod `uid` that still run."""
    path = Layout(state).node(node).pod(uid) / "pids"
    try:
        pids = [int(x) for x in path.read_text().split()]
    except OSError:
        return []
    return [p for p in pids if procs.is_ours(p, state)]


def kill_pod_processes(state: Path, node: str, uid: str) -> None:
    """SIGKILL what runs for pod `uid` on `node` (what a node shutdown does to its containers) and drop the
    pod's IP lease, which its dead agent can no longer release."""
    for pid in pod_pids(state, node, uid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pod_pids(state, node, uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    layout = Layout(state)
    with contextlib.suppress(OSError):
        ipam.release(layout.ips, (layout.ips / uid).read_text(), uid)


def answers(ip: str, port: int, path: str = "/ready") -> bool:
    """True when a stand-in at `ip:port` answers `path` with 200."""
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}{path}", timeout=3) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def extra_node(cluster: Any, core: Any, name: str) -> Iterator[str]:
    """Start agent `name` (Ready when this yields); on exit stop it and remove every trace of it (see the
    module docstring). `cluster` is tests/conftest.py's `ControlPlane`."""
    assert cluster.run("start-node", name) == 0, f"start-node {name} failed"
    try:
        yield name
    finally:
        with contextlib.suppress(LookupError, ProcessLookupError):
            signal_agent(cluster.state, name, signal.SIGCONT)
        cluster.run("stop-node", name)
        pods_dir = Layout(cluster.state).node(name).pods
        for uid_dir in pods_dir.iterdir() if pods_dir.is_dir() else ():
            kill_pod_processes(cluster.state, name, uid_dir.name)
        with contextlib.suppress(Exception):
            for p in core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={name}").items:
                core.delete_namespaced_pod(p.metadata.name, p.metadata.namespace, grace_period_seconds=0)
        with contextlib.suppress(Exception):
            core.delete_node(name)


def _cordon(core: Any, node: str, on: bool) -> None:
    core.patch_node(node, {"spec": {"unschedulable": on}})


def move_member(
    eep: Any, wait_for: Callable[..., Any], name: str, *, index: int, node: str, describe: Callable[[], str]
) -> None:
    """Put member `index` on `node` through one replacement: every other schedulable node is cordoned while
    the member's stand-in exits and its replacement is scheduled, then uncordoned. Costs one restart."""
    others = [
        n.metadata.name
        for n in eep.core.list_node().items
        if n.metadata.name != node and not n.spec.unschedulable
    ]
    for n in others:
        _cordon(eep.core, n, True)
    _cordon(eep.core, node, False)
    try:
        old = eep.exit_member(name, index)
        wait_for(
            lambda: (
                eep.running(name)
                and eep.member(name, index).get("podUid") not in (None, old)
                and eep.member(name, index).get("node") == node
            ),
            40,
            describe,
        )
    finally:
        for n in others:
            _cordon(eep.core, n, False)


@dataclass(frozen=True)
class PodView:
    """One pod of the CR's label, as a sample saw it."""

    name: str
    uid: str
    member: int | None
    incarnation: int | None
    join: bool
    deleting: bool
    phase: str
    node: str | None
    owner_uid: str | None
    """The uid of the pod's controller ownerReference, if it has one."""
    running: bool
    ip: str | None


def _view(pod: Any) -> PodView:
    meta, status = pod.metadata, pod.status
    labels, annotations = meta.labels or {}, meta.annotations or {}
    member = labels.get(Labels.MEMBER)
    inc = annotations.get(Annotations.INCARNATION)
    owner = next((o.uid for o in meta.owner_references or [] if o.controller), None)
    running = any(cs.state and cs.state.running for cs in (status and status.container_statuses) or [])
    return PodView(
        name=meta.name,
        uid=meta.uid,
        member=int(member) if member is not None and member.isdigit() else None,
        incarnation=int(inc) if inc is not None and inc.isdigit() else None,
        join=annotations.get(Annotations.JOIN) == "true",
        deleting=meta.deletion_timestamp is not None,
        phase=(status and status.phase) or "",
        node=pod.spec.node_name,
        owner_uid=owner,
        running=running,
        ip=(status and status.pod_ip) or None,
    )


@dataclass(frozen=True)
class Sample:
    """What the recorder saw at `t` seconds after it started: the CR's pods and its status (None: no CR)."""

    t: float
    pods: tuple[PodView, ...]
    status: dict[str, Any] | None
    cr_uid: str | None

    def epoch(self) -> int | None:
        st = self.status or {}
        return (st.get("membership") or {}).get("epoch")

    def member_uids(self) -> dict[int, str]:
        """Member index -> the pod uid the status records for it."""
        return {
            int(m["index"]): str(m["podUid"])
            for m in (self.status or {}).get("members") or []
            if m.get("podUid")
        }


Check = Callable[[Sample], list[str]]


@dataclass
class Recorder:
    """Samples `eep.pods(name)` and the CR every `interval_s` in a daemon thread (`with recorder:`); every
    check runs on every sample and its messages (first occurrence, with the time) go to `violations`."""

    eep: Any
    name: str
    checks: list[Check] = field(default_factory=list)
    interval_s: float = 0.3
    samples: list[Sample] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0

    def __enter__(self) -> Recorder:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="recorder")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # an API hiccup is a missed sample, not a failure
                self._sample()
            self._stop.wait(self.interval_s)

    def _sample(self) -> None:
        items = self.eep.core.list_namespaced_pod(
            self.eep.ns, label_selector=f"{Labels.CLUSTER}={self.name}"
        ).items
        try:
            cr = self.eep.cr(self.name)
        except client.ApiException as e:
            if e.status != 404:
                raise
            cr = None
        s = Sample(
            t=round(time.monotonic() - self._t0, 1),
            pods=tuple(_view(p) for p in items),
            status=None if cr is None else dict(cr.get("status") or {}),
            cr_uid=None if cr is None else cr["metadata"]["uid"],
        )
        self.samples.append(s)
        for check in self.checks:
            for msg in check(s):
                if not any(v.endswith(msg) for v in self.violations):
                    self.violations.append(f"+{s.t}s: {msg}")

    def wait_sample(self, timeout_s: float = 10) -> None:
        """Return once one more sample was taken after this call."""
        n, deadline = len(self.samples), time.monotonic() + timeout_s
        while len(self.samples) <= n and time.monotonic() < deadline:
            time.sleep(0.05)
