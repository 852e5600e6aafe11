"""Helpers shared by the local-cluster tests: a pod read as plain JSON, a describer for waits, and the
settings of a process-node agent that runs in the test process (no apiserver behind it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from eep_localcluster.settings import AgentSettings

__all__ = ["describer", "get_pod", "unit_agent_settings"]


def get_pod(kube: Any, ns: str, name: str) -> dict[str, Any]:
    """Pod ``ns/name`` as the API server returned it (JSON, not the client's models). Raises ApiException."""
    core: Any = client.CoreV1Api(kube)
    raw = core.read_namespaced_pod(name, ns, _preload_content=False).data
    return dict(json.loads(raw))


def describer(kube: Any, ns: str, name: str) -> Callable[[], str]:
    """What a failed wait prints: the pod's status as YAML, or why it could not be read."""

    def describe() -> str:
        try:
            return yaml.safe_dump(get_pod(kube, ns, name)["status"])
        except ApiException as e:
            return f"pod {ns}/{name}: {e.status} {e.reason}"

    return describe


def unit_agent_settings(tmp_path: Path) -> AgentSettings:
    """Node ``n0``'s agent settings with every path under ``tmp_path`` (for an agent driven in-process)."""
    return AgentSettings(
        name="n0",
        state=tmp_path,
        node_dir=tmp_path / "node",
        ips_dir=tmp_path / "ips",
        apiserver_port=6443,
        ca_cert=tmp_path / "ca.crt",
        venv_bin=tmp_path / "bin",
        host_path="/usr/bin:/bin",
    )
