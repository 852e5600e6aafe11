"""Process-node agents treated like a sick machine: signalled, started, stopped and removed without a trace.

The agent's pods run in sessions of their own, so signalling the agent alone is what a kubelet fault looks
like: SIGSTOP freezes only its heartbeats and pod sync (the Node goes NotReady, the pods' processes serve
on), SIGKILL leaves the pods' processes running as a dead kubelet leaves its containers. `stop_node` is the
CLI's `stop-node` (the agent stops its pods first: a lost node).

Used by bench/soak.py and tests/operator/test_e2e_baddays.py. Every function takes the local cluster's state
directory (`eep_localcluster.layout`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from eep_localcluster import ipam, procs
from eep_localcluster.layout import Layout

__all__ = [
    "agent_pid",
    "node_pod_pids",
    "remove_node",
    "running_agents",
    "signal_agent",
    "start_node",
    "stop_node",
]


def agent_pid(state: Path, node: str) -> int | None:
    """The pid of `node`'s agent, or None when it does not run."""
    pid = procs.read_pid(Layout(state).node(node).pid)
    return pid if pid is not None and procs.is_ours(pid, state) else None


def running_agents(state: Path) -> list[str]:
    """The nodes whose agent runs now, sorted."""
    layout = Layout(state)
    if not layout.nodes.is_dir():
        return []
    return sorted(p.name for p in layout.nodes.iterdir() if procs.alive(layout.node(p.name).pid, state))


def signal_agent(state: Path, node: str, sig: signal.Signals) -> int:
    """Send `sig` to `node`'s agent process only (never to its pods' processes); returns the agent's pid.
    Raises LookupError when the agent does not run."""
    pid = agent_pid(state, node)
    if pid is None:
        raise LookupError(f"the agent of node {node} does not run")
    os.kill(pid, sig)
    return pid


def _cli(state: Path, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "eep_localcluster", "--state", str(state), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)


def start_node(state: Path, node: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    """`eep-localcluster start-node NODE` (again: with the options it had); waits until the Node is Ready.
    Raises subprocess.TimeoutExpired after `timeout_s` seconds."""
    return _cli(state, "start-node", node, timeout_s=timeout_s)


def stop_node(state: Path, node: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """`eep-localcluster stop-node NODE`: the agent stops its pods' processes and exits (a lost node).
    Raises subprocess.TimeoutExpired after `timeout_s` seconds."""
    return _cli(state, "stop-node", node, timeout_s=timeout_s)


def node_pod_pids(state: Path, node: str) -> dict[str, list[int]]:
    """Pod uid -> the process-group leaders any agent of `node` started for it that still run (the pods'
    `pids` files: they outlive a killed agent)."""
    pods = Layout(state).node(node).pods
    out: dict[str, list[int]] = {}
    for uid_dir in sorted(pods.iterdir()) if pods.is_dir() else ():
        try:
            pids = [int(x) for x in (uid_dir / "pids").read_text().split()]
        except (OSError, ValueError):
            continue
        live = [p for p in pids if procs.is_ours(p, state)]
        if live:
            out[uid_dir.name] = live
    return out


def remove_node(state: Path, core: Any, node: str, timeout_s: float = 10) -> None:
    """Stop `node`'s agent (SIGCONT first, in case it was frozen) and remove every trace of it: its pods'
    processes, their pod IP leases, the pods bound to it and the Node object. `core` is a kubernetes
    `CoreV1Api`. Never raises for what is already gone."""
    with contextlib.suppress(LookupError, ProcessLookupError):
        signal_agent(state, node, signal.SIGCONT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        stop_node(state, node)
    for pids in node_pod_pids(state, node).values():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while node_pod_pids(state, node) and time.monotonic() < deadline:
        time.sleep(0.1)
    layout = Layout(state)
    pods = layout.node(node).pods
    for uid_dir in pods.iterdir() if pods.is_dir() else ():
        with contextlib.suppress(OSError):
            ipam.release(layout.ips, (layout.ips / uid_dir.name).read_text(), uid_dir.name)
    with contextlib.suppress(Exception):  # the API may refuse or time out: the next `down` sweeps it
        for p in core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items:
            core.delete_namespaced_pod(p.metadata.name, p.metadata.namespace, grace_period_seconds=0)
    with contextlib.suppress(Exception):
        core.delete_node(node)
