"""The node agent's settings, parsed once by `__main__.py` (`eep-localcluster node`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class AgentSettings:
    name: str
    """Node name."""
    state: Path
    """The cluster's state directory (the marker every pod process carries)."""
    node_dir: Path
    """This agent's directory: pods/<uid>/ with hosts, sa/, logs, termination files."""
    ips_dir: Path
    """Shared pod-IP lease directory."""
    apiserver_port: int
    ca_cert: Path
    venv_bin: Path
    """Put first on every container's PATH: how an image's commands resolve on this host."""
    host_path: str
    """The rest of PATH for containers."""
    inherit_env: dict[str, str] = field(default_factory=dict)
    """Host variables passed to every container (e.g. LD_LIBRARY_PATH), before the pod's own env."""
    cpu: str = "8"
    memory: str = "32Gi"
    max_pods: int = 110
    gpus: int = 0
    """`nvidia.com/gpu` capacity (0: not advertised)."""
    lease_s: float = 2.0
    """Seconds between Lease renewals."""
    status_s: float = 10.0
    """Seconds between Node status heartbeats."""
    fake: bool = False
    taints: tuple[str, ...] = ()
    """`key=value:Effect` taints registered with the Node (e.g. keep test pods off a fake node)."""
    kube_version: str = "v1.36.3"
