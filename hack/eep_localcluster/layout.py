"""The state directory's layout: one place that names every file the local cluster writes.

<state>/cluster.json          ports and settings of the running control plane
<state>/kubeconfig            admin (system:masters)
<state>/pki/                  CA, serving and client certs, service-account key
<state>/etcd/                 etcd data
<state>/logs/<component>.log  control-plane logs
<state>/run/<component>.pid   control-plane pids
<state>/ips/<uid>             this cluster's pod IP leases (the leases themselves are machine-wide: ipam.py)
<state>/nodes/<node>/         one agent: agent.pid, agent.log, kubeconfig, pods/<uid>/...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eep_localcluster.pki import Pki

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def cluster_json(self) -> Path:
        return self.root / "cluster.json"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def pki(self) -> Pki:
        return Pki(self.root / "pki")

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def ips(self) -> Path:
        return self.root / "ips"

    @property
    def nodes(self) -> Path:
        return self.root / "nodes"

    def log(self, component: str) -> Path:
        return self.root / "logs" / f"{component}.log"

    def pid(self, component: str) -> Path:
        return self.root / "run" / f"{component}.pid"

    def component_kubeconfig(self, component: str) -> Path:
        return self.root / "run" / f"{component}.kubeconfig"

    def node(self, name: str) -> NodeLayout:
        return NodeLayout(self.nodes / name)


@dataclass(frozen=True)
class NodeLayout:
    root: Path

    @property
    def pid(self) -> Path:
        return self.root / "agent.pid"

    @property
    def log(self) -> Path:
        return self.root / "agent.log"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def pods(self) -> Path:
        return self.root / "pods"

    def pod(self, uid: str) -> Path:
        return self.pods / uid
