"""Node registration and heartbeats for a process node: create/patch the Node (capacity, Ready condition,
addresses, taints), renew its Lease in kube-node-lease every `lease_s`, post Node status every `status_s`.
When the heartbeats stop, the node lifecycle controller marks the Node NotReady. Used by `processnode.py`."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from eep_localcluster.podrun import micro, now_utc
from eep_localcluster.settings import AgentSettings

Obj = dict[str, Any]
SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
HOST_IP = "127.0.0.1"


class NodeHeartbeat:
    def __init__(self, settings: AgentSettings, core: Any, coord: Any, log: Callable[[str], None]) -> None:
        self.s = settings
        self.core = core
        self.coord = coord
        self.log = log

    def register(self) -> None:
        s = self.s
        labels = {
            "kubernetes.io/hostname": s.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "eep.local/process-node": "true",
        }
        taints = []
        for t in s.taints:
            kv, _, effect = t.partition(":")
            key, _, value = kv.partition("=")
            taints.append({"key": key, "value": value, "effect": effect or "NoSchedule"})
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": s.name, "labels": labels},
            "spec": {"taints": taints},
        }
        try:
            self.core.create_node(body)
        except ApiException as e:
            if e.status != 409:
                raise
            self.core.patch_node(s.name, {"metadata": {"labels": labels}}, _content_type=SMP)
        self.node_status()

    def node_status(self) -> None:
        s = self.s
        now = now_utc().strftime("%Y-%m-%dT%H:%M:%SZ")
        capacity = {"cpu": s.cpu, "memory": s.memory, "pods": str(s.max_pods), "ephemeral-storage": "100Gi"}
        if s.gpus:
            capacity["nvidia.com/gpu"] = str(s.gpus)

        def cond(kind: str, ok: bool, reason: str, message: str) -> Obj:
            return {
                "type": kind,
                "status": "True" if ok else "False",
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }

        status: Obj = {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                cond("Ready", True, "KubeletReady", "process node agent is posting ready status"),
                cond("MemoryPressure", False, "KubeletHasSufficientMemory", "ok"),
                cond("DiskPressure", False, "KubeletHasNoDiskPressure", "ok"),
                cond("PIDPressure", False, "KubeletHasSufficientPID", "ok"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": s.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": s.name,
                "systemUUID": s.name,
                "bootID": s.name,
                "kernelVersion": os.uname().release,
                "osImage": "eep-localcluster process node",
                "containerRuntimeVersion": "process://" + ("fake" if s.fake else "unshare"),
                "kubeletVersion": s.kube_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        # Keep lastTransitionTime of conditions whose status did not change.
        with contextlib.suppress(ApiException):
            node = json.loads(self.core.read_node_status(s.name, _preload_content=False).data)
            old = {c["type"]: c for c in node.get("status", {}).get("conditions", [])}
            for c in status["conditions"]:
                prev = old.get(c["type"])
                if prev and prev.get("status") == c["status"]:
                    c["lastTransitionTime"] = prev.get("lastTransitionTime", now)
        self.core.patch_node_status(s.name, {"status": status}, _content_type=SMP)

    def renew_lease(self) -> None:
        s = self.s
        spec = {"holderIdentity": s.name, "leaseDurationSeconds": 40, "renewTime": micro(now_utc())}
        try:
            self.coord.patch_namespaced_lease(s.name, "kube-node-lease", {"spec": spec}, _content_type=MERGE)
        except ApiException as e:
            if e.status != 404:
                raise
            node = json.loads(self.core.read_node(s.name, _preload_content=False).data)
            owner = {"apiVersion": "v1", "kind": "Node", "name": s.name, "uid": node["metadata"]["uid"]}
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": s.name, "namespace": "kube-node-lease", "ownerReferences": [owner]},
                "spec": spec,
            }
            self.coord.create_namespaced_lease("kube-node-lease", body)

    def loop(self, stopping: threading.Event) -> None:
        last_status = time.monotonic()
        while not stopping.wait(self.s.lease_s):
            try:
                self.renew_lease()
                if time.monotonic() - last_status >= self.s.status_s:
                    self.node_status()
                    last_status = time.monotonic()
            except Exception as e:  # the apiserver may be restarting; keep trying
                self.log(f"heartbeat: {type(e).__name__}: {e}")

    # ---- main loop ----
