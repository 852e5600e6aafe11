"""Start, check and stop the control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

Each runs as a detached process bound to 127.0.0.1 on free ports, with its pid file and log in the state
directory. Flags follow what controller-runtime's envtest passes, plus what envtest leaves out because it runs
no controllers: RBAC + Node authorization, the admission plugins of a hardened distribution
(`ADMISSION_PLUGINS`), and a controller-manager running every controller (garbage collector, service-account
tokens, node lifecycle with a short grace period). Called by `__main__.py` (`up`, `down`, `status`).
"""

from __future__ import annotations

import functools
import json
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from eep_localcluster import pki as pkimod
from eep_localcluster import procs
from eep_localcluster.kubeconfig import write_kubeconfig
from eep_localcluster.layout import COMPONENTS, Layout


@dataclass(frozen=True)
class ControlPlaneSettings:
    bin_dir: Path
    """Directory holding kube-apiserver, kube-controller-manager, kube-scheduler and etcd."""
    node_monitor_grace_s: int = 15
    """Seconds without a heartbeat (Lease) before the node lifecycle controller marks the Node NotReady."""
    service_cidr: str = "10.96.0.0/16"
    service_ip: str = "10.96.0.1"
    """First IP of `service_cidr`: the `kubernetes` Service's ClusterIP (a SAN of the serving cert)."""
    start_timeout_s: float = 90.0
    """Seconds to wait for etcd and the apiserver to report healthy."""


@dataclass(frozen=True)
class ClusterInfo:
    """What `up` recorded in `<state>/cluster.json`."""

    etcd_port: int
    apiserver_port: int
    node_monitor_grace_s: int

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @staticmethod
    def load(path: Path) -> ClusterInfo | None:
        try:
            return ClusterInfo(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


class StartError(RuntimeError):
    """A component did not become healthy; the message names it and quotes its log tail."""


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _https_ok(url: str, layout: Layout) -> bool:
    ctx = ssl.create_default_context(cafile=str(layout.pki.ca.cert))
    admin = layout.pki.client("admin")
    ctx.load_cert_chain(str(admin.cert), str(admin.key))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _etcd_healthy(layout: Layout, info: ClusterInfo) -> bool:
    return _http_ok(f"http://127.0.0.1:{info.etcd_port}/health")


def _apiserver_ready(layout: Layout, info: ClusterInfo) -> bool:
    return _https_ok(f"{info.server}/readyz", layout)


def healthy(layout: Layout) -> ClusterInfo | None:
    """The running cluster's info when every component is alive and the apiserver is ready, else None."""
    info = ClusterInfo.load(layout.cluster_json)
    if info is None or not layout.kubeconfig.exists():
        return None
    if not all(procs.alive(layout.pid(c), layout.root) for c in COMPONENTS):
        return None
    return info if _apiserver_ready(layout, info) else None


@dataclass(frozen=True)
class Retry:
    """How a component that does not come up is started again: stopped, then after a pause of n seconds
    (n = the failed attempt's number) started on the ports `fresh_ports` picks."""

    attempts: int
    attempt_timeout_s: float
    """Seconds one attempt may take to become healthy (capped by `ControlPlaneSettings.start_timeout_s`)."""
    fresh_ports: Callable[[ClusterInfo], ClusterInfo]


@dataclass(frozen=True)
class Component:
    """One control-plane process as data: what `start` runs and how it knows the process is up."""

    name: str
    """One of `layout.COMPONENTS`; names its log and pid file."""
    argv: Callable[[Layout, ControlPlaneSettings, ClusterInfo], list[str]]
    """Its command line, built again for every attempt."""
    health: Callable[[Layout, ClusterInfo], bool] | None = None
    """True once it serves. None: it has no health endpoint, and counts as up when it is still alive
    `SETTLE_S` after the last component started."""
    prepare: Callable[[Layout], None] | None = None
    """Run before every attempt."""
    retry: Retry | None = None
    """None: a start that fails is final."""


SETTLE_S = 1.0
"""Long enough for a component without a health endpoint to crash on a bad flag."""


def _wait(component: str, check: Callable[[], bool], layout: Layout, timeout_s: float) -> None:
    """Poll `check` every 0.25 s. Raises StartError when the process exits or is not healthy within
    `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if not procs.alive(layout.pid(component), layout.root):
            raise StartError(f"{component} exited:\n{_tail(layout.log(component))}")
        time.sleep(0.25)
    raise StartError(f"{component} not healthy after {timeout_s:.0f}s:\n{_tail(layout.log(component))}")


def _launch(comp: Component, layout: Layout, s: ControlPlaneSettings, info: ClusterInfo) -> ClusterInfo:
    """Start `comp` and, when it has a health check, wait until it is healthy, retrying per `comp.retry`.
    Returns `info` with the ports it ended up on. Raises StartError after the last failed attempt."""
    retry = comp.retry
    attempts = retry.attempts if retry is not None else 1
    timeout_s = min(s.start_timeout_s, retry.attempt_timeout_s) if retry is not None else s.start_timeout_s
    for attempt in range(1, attempts + 1):
        if comp.prepare is not None:
            comp.prepare(layout)
        procs.spawn_detached(
            comp.argv(layout, s, info),
            log=layout.log(comp.name),
            pid_file=layout.pid(comp.name),
            state=layout.root,
        )
        if comp.health is None:
            return info
        try:
            _wait(comp.name, functools.partial(comp.health, layout, info), layout, timeout_s)
            return info
        except StartError as e:
            if retry is None or attempt == attempts:
                raise
            reason = str(e).split(":", 1)[0]
            print(f"{reason} (attempt {attempt}); retrying on fresh ports", file=sys.stderr)
            procs.stop(layout.pid(comp.name), layout.root, grace_s=2.0)
            time.sleep(float(attempt))
            info = retry.fresh_ports(info)
    raise AssertionError("unreachable")


def _prepare_pki(layout: Layout, s: ControlPlaneSettings) -> None:
    p = layout.pki
    pkimod.ensure_ca(p)
    pkimod.ensure_apiserver_cert(p, s.service_ip)
    pkimod.ensure_client_cert(p, "admin", "eep-admin", ("system:masters",))
    pkimod.ensure_client_cert(p, "kube-controller-manager", "system:kube-controller-manager")
    pkimod.ensure_client_cert(p, "kube-scheduler", "system:kube-scheduler")


def _etcd_argv(layout: Layout, s: ControlPlaneSettings, info: ClusterInfo) -> list[str]:
    peer = procs.free_port()
    etcd_url = f"http://127.0.0.1:{info.etcd_port}"
    return [
        str(s.bin_dir / "etcd"),
        "--name=eep",
        f"--data-dir={layout.etcd_data}",
        f"--listen-client-urls={etcd_url}",
        f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-cluster=eep=http://127.0.0.1:{peer}",
        # a throwaway test store: durability buys nothing and fsync is the slowest part on small disks
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


ADMISSION_PLUGINS = (
    # kube-apiserver's default-on set that decides what a workload may create; named here so that the list
    # the tests run against does not silently depend on the binary's defaults.
    "NamespaceLifecycle",
    "LimitRanger",
    "ServiceAccount",
    "PodSecurity",
    "ResourceQuota",
    "Priority",
    "DefaultTolerationSeconds",
    "DefaultStorageClass",
    "StorageObjectInUseProtection",
    "PersistentVolumeClaimResize",
    "RuntimeClass",
    "TaintNodesByCondition",
    "CertificateApproval",
    "CertificateSigning",
    "CertificateSubjectRestriction",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionWebhook",
    "ValidatingAdmissionPolicy",
    # What hardened distributions add: kubeadm, EKS, GKE, RKE2 and the CIS benchmark (1.2.x).
    "NodeRestriction",
    "EventRateLimit",  # CIS; limits in EVENT_RATE_LIMIT
    "ExtendedResourceToleration",  # EKS: GPU pods get the toleration of `nvidia.com/gpu` taints
    "DenyServiceExternalIPs",  # CVE-2020-8554 mitigation
    "OwnerReferencesPermissionEnforcement",  # OpenShift: blockOwnerDeletion needs the owner's finalizers
)
"""Admission plugins the API server runs, on top of its defaults. The README's "Admission" section says why
these and which were left out."""

EVENT_RATE_LIMIT = {
    "apiVersion": "eventratelimit.admission.k8s.io/v1alpha1",
    "kind": "Configuration",
    # The plugin's documented example for the server; per namespace far above what one test or the scale
    # benchmark posts, so an Event is refused (429) only by a client that floods.
    "limits": [
        {"type": "Server", "qps": 5000, "burst": 20000},
        {"type": "Namespace", "qps": 100, "burst": 1000, "cacheSize": 4096},
    ],
}


def _admission_config(layout: Layout) -> Path:
    return layout.root / "run" / "admission.json"


def _write_admission_config(layout: Layout) -> None:
    """The `--admission-control-config-file` (JSON is YAML): EventRateLimit refuses to start without one."""
    config = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "AdmissionConfiguration",
        "plugins": [{"name": "EventRateLimit", "configuration": EVENT_RATE_LIMIT}],
    }
    _admission_config(layout).write_text(json.dumps(config, indent=2) + "\n")


def _apiserver_argv(layout: Layout, s: ControlPlaneSettings, info: ClusterInfo) -> list[str]:
    p = layout.pki
    return [
        str(s.bin_dir / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{info.etcd_port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={info.apiserver_port}",
        f"--cert-dir={layout.root / 'run'}",
        f"--tls-cert-file={p.apiserver.cert}",
        f"--tls-private-key-file={p.apiserver.key}",
        f"--client-ca-file={p.ca.cert}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={p.sa_pub}",
        f"--service-account-signing-key-file={p.sa_key}",
        f"--service-cluster-ip-range={s.service_cidr}",
        "--authorization-mode=Node,RBAC",
        f"--enable-admission-plugins={','.join(ADMISSION_PLUGINS)}",
        f"--admission-control-config-file={_admission_config(layout)}",
        "--allow-privileged=true",
        # loopback addresses are invalid Endpoints; pods reach the apiserver via KUBERNETES_SERVICE_HOST
        "--endpoint-reconciler-type=none",
        # the benchmark drives hundreds of pods from one client; flow control would only add queueing
        "--enable-priority-and-fairness=false",
        "--max-requests-inflight=800",
        "--max-mutating-requests-inflight=400",
        "--profiling=false",
        "--v=1",
    ]


def _apiserver_client_argv(layout: Layout, s: ControlPlaneSettings, name: str) -> list[str]:
    """The start of the command line of a component that only talks to the apiserver: as `system:<name>`,
    serving nothing, and alone (no leader election)."""
    return [
        str(s.bin_dir / name),
        f"--kubeconfig={layout.component_kubeconfig(name)}",
        "--bind-address=127.0.0.1",
        "--secure-port=0",
        "--leader-elect=false",
    ]


def _controller_manager_argv(layout: Layout, s: ControlPlaneSettings, info: ClusterInfo) -> list[str]:
    p = layout.pki
    return [
        *_apiserver_client_argv(layout, s, "kube-controller-manager"),
        "--controllers=*",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={p.sa_key}",
        f"--root-ca-file={p.ca.cert}",
        f"--cluster-signing-cert-file={p.ca.cert}",
        f"--cluster-signing-key-file={p.ca.key}",
        f"--service-cluster-ip-range={s.service_cidr}",
        "--allocate-node-cidrs=false",
        f"--node-monitor-grace-period={s.node_monitor_grace_s}s",
        "--node-monitor-period=2s",
        "--kube-api-qps=200",
        "--kube-api-burst=400",
        "--v=1",
    ]


def _scheduler_argv(layout: Layout, s: ControlPlaneSettings, info: ClusterInfo) -> list[str]:
    return [*_apiserver_client_argv(layout, s, "kube-scheduler"), "--v=1"]


ETCD_RETRY = Retry(
    attempts=5,
    # A healthy etcd answers /health within a second here; one that has not after this is started again.
    attempt_timeout_s=20.0,
    fresh_ports=lambda info: replace(info, etcd_port=procs.free_port()),
)
"""An etcd that exits at once, or is not healthy within `attempt_timeout_s`, is started again on fresh
ports: free ports come from a bind-to-0 probe, which another process can beat. Seen on this machine for tens
of seconds at a time (right after the Mooncake fault tests, and twice while the device tools were called):
etcd gone within a second with an empty log, or alive and never healthy; a clean-clone `make test` lost every
cluster test to it."""

ETCD = Component(
    "etcd",
    _etcd_argv,
    health=_etcd_healthy,
    prepare=lambda layout: shutil.rmtree(layout.etcd_data, ignore_errors=True),
    retry=ETCD_RETRY,
)
CONTROL_PLANE = (
    ETCD,
    Component("kube-apiserver", _apiserver_argv, health=_apiserver_ready, prepare=_write_admission_config),
    # Neither serves health without a secure port.
    Component("kube-controller-manager", _controller_manager_argv),
    Component("kube-scheduler", _scheduler_argv),
)
"""In start order: each after the healthy ones before it."""


def start(layout: Layout, s: ControlPlaneSettings) -> ClusterInfo:
    """Start a fresh control plane in `layout` (etcd data is wiped, key material reused); wait for it.
    Raises StartError naming the component that did not come up."""
    for d in ("logs", "run"):
        (layout.root / d).mkdir(parents=True, exist_ok=True)
    _prepare_pki(layout, s)
    p = layout.pki
    info = ClusterInfo(
        etcd_port=procs.free_port(),
        apiserver_port=procs.free_port(),
        node_monitor_grace_s=s.node_monitor_grace_s,
    )
    write_kubeconfig(layout.kubeconfig, info.server, p.ca.cert, p.client("admin"), "eep-admin")
    for comp in ("kube-controller-manager", "kube-scheduler"):
        write_kubeconfig(
            layout.component_kubeconfig(comp), info.server, p.ca.cert, p.client(comp), f"system:{comp}"
        )
    for component in CONTROL_PLANE:
        info = _launch(component, layout, s, info)
    unchecked = [c.name for c in CONTROL_PLANE if c.health is None]
    time.sleep(SETTLE_S)
    for name in unchecked:
        if not procs.alive(layout.pid(name), layout.root):
            raise StartError(f"{name} exited:\n{_tail(layout.log(name))}")
    info.save(layout.cluster_json)
    return info


def stop(layout: Layout) -> None:
    """Stop the components in reverse start order (clients before the store)."""
    for comp in reversed(COMPONENTS):
        procs.stop(layout.pid(comp), layout.root, grace_s=10.0)
    layout.cluster_json.unlink(missing_ok=True)
