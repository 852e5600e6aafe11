"""Node lifecycle with process-node agents: a stopped agent makes its Node NotReady, the fake kubelet reports
statuses without processes, and `down` leaves no process behind (even after an abrupt agent death)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from eep_testkit.agents import node_pod_pids, signal_agent

pytestmark = pytest.mark.cluster


def ready_status(kube: Any, name: str) -> str:
    node = json.loads(client.CoreV1Api(kube).read_node(name, _preload_content=False).data)
    return next(c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready")


def taint_keys(kube: Any, name: str) -> list[str]:
    return [t.key for t in client.CoreV1Api(kube).read_node(name).spec.taints or []]


def test_stopped_agent_makes_node_not_ready(local_cluster: Any, kube: Any, wait_for: Any) -> None:
    name = "eep-node-lost"
    taint = ["--taint", "eep.local/test=lost:NoSchedule"]  # keep other tests' pods off this node
    assert local_cluster.run("start-node", name, *taint) == 0
    try:
        assert ready_status(kube, name) == "True"
        assert local_cluster.run("stop-node", name) == 0
        # node-monitor-grace-period is 15s; the node lifecycle controller then sets Ready=Unknown
        wait_for(lambda: ready_status(kube, name) == "Unknown", 60, lambda: ready_status(kube, name))
        # The unreachable taint follows in a separate pass of the controller, moments after the condition
        # (one clean-clone run read the node in between).
        wait_for(
            lambda: "node.kubernetes.io/unreachable" in taint_keys(kube, name),
            30,
            lambda: taint_keys(kube, name),
        )
    finally:
        local_cluster.run("stop-node", name)
        client.CoreV1Api(kube).delete_node(name)


def test_fake_node_reports_running_and_injected_exit(
    local_cluster: Any, kube: Any, namespace: str, wait_for: Any
) -> None:
    name = "eep-fake-test"
    assert local_cluster.run("start-node", name, "--fake", "--taint", "eep.local/fake=true:NoSchedule") == 0
    core = client.CoreV1Api(kube)
    try:
        pod = {
            "metadata": {"name": "f"},
            "spec": {
                "restartPolicy": "Never",
                "nodeSelector": {"kubernetes.io/hostname": name},
                "tolerations": [{"key": "eep.local/fake", "operator": "Exists"}],
                "containers": [{"name": "main", "image": "none", "command": ["does-not-exist"]}],
            },
        }
        core.create_namespaced_pod(namespace, pod)

        def phase() -> str:
            return str(core.read_namespaced_pod("f", namespace).status.phase)

        wait_for(lambda: phase() == "Running", 20, phase)
        p = core.read_namespaced_pod("f", namespace)
        assert p.status.container_statuses[0].ready and p.status.pod_ip.startswith("127.0.")
        core.patch_namespaced_pod(
            "f", namespace, {"metadata": {"annotations": {"eep.local/fake-exit-code": "7"}}}
        )
        wait_for(lambda: phase() == "Failed", 20, phase)
        term = core.read_namespaced_pod("f", namespace).status.container_statuses[0].state.terminated
        assert term.exit_code == 7
        core.delete_namespaced_pod("f", namespace)

        def gone() -> bool:
            try:
                core.read_namespaced_pod("f", namespace)
            except ApiException as e:
                return e.status == 404
            return False

        wait_for(gone, 20)
    finally:
        local_cluster.run("stop-node", name)
        core.delete_node(name)


def _our_processes(state: Path) -> list[str]:
    """Live (non-zombie) processes that carry the state marker or run a control-plane binary for `state`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = (
                Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue
        if f"EEP_LOCALCLUSTER_STATE={state}".encode() in environ or str(state) in cmdline:
            found.append(f"{entry}: {cmdline}")
    return found


@pytest.mark.slow
def test_down_leaves_no_process_even_after_agent_crash(tmp_path: Path) -> None:
    """A second, private cluster: run a pod, SIGKILL its agent (the pod is orphaned), then `down`."""
    state = tmp_path / "cluster"
    cli = [sys.executable, "-m", "eep_localcluster", "--state", str(state)]
    subprocess.run([*cli, "up"], check=True, timeout=120)
    try:
        api = config.new_client_from_config(config_file=str(state / "kubeconfig"))
        core = client.CoreV1Api(api)
        deadline = time.monotonic() + 30
        while True:
            try:
                core.read_namespaced_service_account("default", "default")
                break
            except ApiException:
                assert time.monotonic() < deadline
                time.sleep(0.3)
        core.create_namespaced_pod(
            "default",
            {
                "metadata": {"name": "orphan"},
                "spec": {"containers": [{"name": "c", "image": "none", "command": ["sleep", "300"]}]},
            },
        )
        while core.read_namespaced_pod("orphan", "default").status.phase != "Running":
            assert time.monotonic() < deadline + 30
            time.sleep(0.3)
        pid = int(
            core.read_namespaced_pod("orphan", "default").status.container_statuses[0].container_id[10:]
        )
        agent_pid = int((state / "nodes" / "eep-node-0" / "agent.pid").read_text())
        os.kill(agent_pid, signal.SIGKILL)
        time.sleep(0.5)
        assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep")  # orphaned, still running
    finally:
        subprocess.run([*cli, "down"], check=True, timeout=120)
    assert _our_processes(state) == []


def test_a_restarted_agent_ends_the_processes_it_reports_killed(
    local_cluster: Any, kube: Any, namespace: str, wait_for: Any
) -> None:
    """An agent SIGKILLed while its pods run leaves their processes running (as a kubelet that dies leaves
    its containers). Its restart reported them killed (exit 137) while they still ran, so the operator
    replaced a member whose old process still served: the soak found two live incarnations of every member
    after an agent kill. Now the restarted agent ends them before it says so."""
    state = local_cluster.state
    name = "eep-node-restart"
    assert local_cluster.run("start-node", name, "--taint", "eep.local/test=restart:NoSchedule") == 0
    core = client.CoreV1Api(kube)
    try:
        pod = {
            "metadata": {"name": "r"},
            "spec": {
                "nodeName": name,
                "restartPolicy": "Never",
                "tolerations": [{"key": "eep.local/test", "operator": "Exists"}],
                "containers": [{"name": "c", "image": "local/none", "command": ["sleep", "3600"]}],
            },
        }
        core.create_namespaced_pod(namespace, pod)
        wait_for(lambda: core.read_namespaced_pod("r", namespace).status.phase == "Running", 60, lambda: "")
        uid = core.read_namespaced_pod("r", namespace).metadata.uid
        wait_for(lambda: uid in node_pod_pids(state, name), 20, lambda: str(node_pod_pids(state, name)))
        signal_agent(state, name, signal.SIGKILL)
        time.sleep(1)
        assert uid in node_pod_pids(state, name), "the pod's process died with its agent"
        assert local_cluster.run("start-node", name, "--taint", "eep.local/test=restart:NoSchedule") == 0

        def reported() -> bool:
            st = core.read_namespaced_pod("r", namespace).status
            term = (st.container_statuses or [None])[0]
            return st.phase == "Failed" and term is not None and term.state.terminated is not None

        wait_for(reported, 60, lambda: str(core.read_namespaced_pod("r", namespace).status))
        assert uid not in node_pod_pids(state, name), "reported killed while its process still runs"
        term = core.read_namespaced_pod("r", namespace).status.container_statuses[0].state.terminated
        assert term.exit_code == 137
    finally:
        local_cluster.run("stop-node", name)
        client.CoreV1Api(kube).delete_node(name)
