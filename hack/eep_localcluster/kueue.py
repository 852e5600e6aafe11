"""Kueue (sigs.k8s.io/kueue, built by `hack/build-kueue.sh`) as a local process on the local control plane.

`start` installs Kueue's CRDs, writes its Configuration, starts the manager (pid file and log beside the
control plane's: `<state>/run/kueue.pid`, `<state>/logs/kueue.log`), waits until its webhook server serves,
then installs its webhooks pointing at `https://127.0.0.1:<port>` with our CA as `caBundle` (Kueue's
internalCertManagement is off; its serving cert, from our PKI, lies in its certDir). `stop` removes the
webhooks first, so that a stopped Kueue refuses nothing, then the process. Called by `__main__.py`
(`kueue up|down|status`) and by `eep_testkit.kueue`.

Only the `pod` integration is on, and only for namespaces labelled `MANAGED_LABEL=MANAGED_VALUE`: both the
pod webhooks' `namespaceSelector` (the API server does not even call Kueue for other namespaces) and Kueue's
`managedJobsNamespaceSelector` say so; `manageJobsWithoutQueueName` is off, so inside such a namespace only
pods with the `kueue.x-k8s.io/queue-name` label are gated. The webhooks of the other integrations (Jobs,
Deployments, StatefulSets, ...) are not installed.

Files under `<state>/kueue/`: `config.yaml`, `kubeconfig` (user `eep-kueue`, group `system:masters`: Kueue's
RBAC is not installed), `certs/tls.crt|tls.key`, `kueue.json` (ports of the running manager).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from eep_localcluster import pki, procs
from eep_localcluster.kubeconfig import write_kubeconfig
from eep_localcluster.layout import Layout

__all__ = [
    "COMPONENT",
    "MANAGED_LABEL",
    "MANAGED_VALUE",
    "KueueError",
    "KueueInfo",
    "KueueSettings",
    "running",
    "start",
    "stop",
    "wait_pod_webhook",
]

COMPONENT = "kueue"
"""Names its log (`<state>/logs/kueue.log`) and pid file (`<state>/run/kueue.pid`)."""
MANAGED_LABEL = "eep.local/kueue"
MANAGED_VALUE = "enabled"
"""A namespace labelled `eep.local/kueue=enabled` is Kueue's; every other namespace is untouched."""
KUEUE_NAMESPACE = "kueue-system"
"""Kueue's own namespace (its Configuration's `namespace`); created, holds nothing here."""
WEBHOOKS = ("eep-kueue-mutating", "eep-kueue-validating")
"""Names of the MutatingWebhookConfiguration and the ValidatingWebhookConfiguration `start` installs."""
POD_WEBHOOKS = ("mpod.kb.io", "vpod.kb.io")
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GATE = "kueue.x-k8s.io/admission"
"""The scheduling gate Kueue's pod webhook adds and its pod controller removes on admission."""
METRICS_CERT_DIR = "/etc/kueue/metrics/certs"
"""Where Kueue v0.17 reads its metrics server's cert when internalCertManagement is off; the path is
compiled in (cmd/kueue/main.go), so our cert dir is bind-mounted over it in the manager's mount namespace."""
_MANAGER = "eep-localcluster"


@dataclass(frozen=True)
class KueueSettings:
    home: Path
    """`hack/build-kueue.sh`'s output: bin/kueue, crds/*.yaml, webhook/manifests.yaml."""
    start_timeout_s: float = 90.0
    """Seconds to wait for the CRDs to be Established and for the manager to report ready."""
    log_level: int = 2
    """Kueue's `--zap-log-level` (0 info ... 5 the pod controller's every step)."""


@dataclass(frozen=True)
class KueueInfo:
    """What `start` recorded in `<state>/kueue/kueue.json`."""

    webhook_port: int
    health_port: int

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @staticmethod
    def load(path: Path) -> KueueInfo | None:
        try:
            return KueueInfo(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


class KueueError(RuntimeError):
    """Kueue did not come up; the message says which step and quotes the manager's log tail."""


def _dir(layout: Layout) -> Path:
    return layout.root / "kueue"


def _info_path(layout: Layout) -> Path:
    return _dir(layout) / "kueue.json"


def _api(layout: Layout) -> Any:
    return config.new_client_from_config(config_file=str(layout.kubeconfig))  # type: ignore[no-untyped-call]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _prepare_files(layout: Layout, s: KueueSettings, info: KueueInfo) -> Path:
    """Certs, kubeconfig and config.yaml for a manager on `info`'s ports; returns the config's path."""
    d = _dir(layout)
    certs = d / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    pki.ensure_local_serving_cert(
        layout.pki, pki.CertPair(certs / "tls.crt", certs / "tls.key"), "kueue-webhook"
    )
    pair = pki.ensure_client_cert(layout.pki, COMPONENT, "eep-kueue", ("system:masters",))
    server = json.loads(layout.cluster_json.read_text())["apiserver_port"]
    write_kubeconfig(d / "kubeconfig", f"https://127.0.0.1:{server}", layout.pki.ca.cert, pair, "eep-kueue")
    cfg = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{info.health_port}"},
        "metrics": {"bindAddress": "0"},  # off: nothing scrapes it here
        "webhook": {"host": "127.0.0.1", "port": info.webhook_port, "certDir": str(certs)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "managedJobsNamespaceSelector": {"matchLabels": {MANAGED_LABEL: MANAGED_VALUE}},
        "integrations": {"frameworks": ["pod"]},
        # The on-demand visibility API is an aggregated API server of its own; nothing here reads it.
        "featureGates": {"VisibilityOnDemand": False},
    }
    path = d / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _apply(patch: Callable[..., Any], name: str, body: dict[str, Any]) -> None:
    """Server-side apply (the CRDs are too large for a last-applied annotation)."""
    patch(name, body, field_manager=_MANAGER, force=True, _content_type="application/apply-patch+yaml")


def _install_crds(api: Any, s: KueueSettings) -> None:
    ext: Any = client.ApiextensionsV1Api(api)  # reads as plain models, no narrowing
    names = []
    for path in sorted((s.home / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        _apply(ext.patch_custom_resource_definition, crd["metadata"]["name"], crd)
        names.append(crd["metadata"]["name"])
    deadline = time.monotonic() + s.start_timeout_s
    for name in names:
        while True:
            conds = ext.read_custom_resource_definition(name).status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conds):
                break
            if time.monotonic() > deadline:
                raise KueueError(f"CRD {name} not Established after {s.start_timeout_s:.0f}s")
            time.sleep(0.2)


def _ensure_namespace(api: Any, name: str) -> None:
    try:
        core: Any = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": name}})
    except ApiException as e:
        if e.status != 409:
            raise


def webhook_configurations(manifests: str, port: int, ca_pem: bytes) -> Iterator[tuple[str, dict[str, Any]]]:
    """Kueue's webhook manifests (config/components/webhook/manifests.yaml) made local: (kind, object) for
    the mutating and the validating configuration, keeping only the webhooks of Kueue's own kinds and of
    pods; each calls `https://127.0.0.1:<port><its path>`, trusting `ca_pem`; the pod webhooks only for
    namespaces labelled `MANAGED_LABEL=MANAGED_VALUE`. Pure."""
    names = dict(
        zip(("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"), WEBHOOKS, strict=True)
    )
    for doc in yaml.safe_load_all(manifests):
        if not doc:
            continue
        out = copy.deepcopy(doc)
        out["metadata"] = {"name": names[doc["kind"]], "labels": {"eep.local/installed-by": _MANAGER}}
        kept = []
        for hook in out.get("webhooks") or []:
            groups = {g for rule in hook.get("rules") or [] for g in rule.get("apiGroups") or []}
            if hook["name"] in POD_WEBHOOKS:
                hook["namespaceSelector"] = {"matchLabels": {MANAGED_LABEL: MANAGED_VALUE}}
            elif "kueue.x-k8s.io" not in groups:
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {
                "url": f"https://127.0.0.1:{port}{path}",
                "caBundle": base64.b64encode(ca_pem).decode(),
            }
            kept.append(hook)
        out["webhooks"] = kept
        yield doc["kind"], out


def _install_webhooks(api: Any, layout: Layout, s: KueueSettings, info: KueueInfo) -> None:
    adm = client.AdmissionregistrationV1Api(api)
    manifests = (s.home / "webhook" / "manifests.yaml").read_text()
    for kind, obj in webhook_configurations(manifests, info.webhook_port, layout.pki.ca.cert.read_bytes()):
        patch = (
            adm.patch_mutating_webhook_configuration
            if kind == "MutatingWebhookConfiguration"
            else adm.patch_validating_webhook_configuration
        )
        _apply(patch, obj["metadata"]["name"], obj)


def _remove_webhooks(api: Any) -> None:
    adm = client.AdmissionregistrationV1Api(api)
    for delete, name in (
        (adm.delete_mutating_webhook_configuration, WEBHOOKS[0]),
        (adm.delete_validating_webhook_configuration, WEBHOOKS[1]),
    ):
        try:
            delete(name)
        except ApiException as e:
            if e.status != 404:
                raise


def _argv(s: KueueSettings, config_path: Path, certs: Path) -> list[str]:
    """The manager in a private mount namespace where our cert dir hides `METRICS_CERT_DIR` (the empty
    mount point is created on the host once, as the process node does for pods' mount targets)."""
    script = f'set -e; mkdir -p {METRICS_CERT_DIR}; mount --bind "$0" {METRICS_CERT_DIR}; exec "$@"'
    kueue = [str(s.home / "bin" / "kueue"), f"--config={config_path}", f"--zap-log-level={s.log_level}"]
    unshare = ["/usr/bin/unshare", "--mount", "--propagation", "private", "--"]
    return [*unshare, "/bin/sh", "-c", script, str(certs), *kueue]


def _ready(info: KueueInfo) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{info.health_port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def running(layout: Layout) -> KueueInfo | None:
    """The running manager's ports when its process is alive and ready, else None."""
    info = KueueInfo.load(_info_path(layout))
    if info is None or not procs.alive(layout.pid(COMPONENT), layout.root):
        return None
    return info if _ready(info) else None


def start(layout: Layout, s: KueueSettings) -> KueueInfo:
    """Install Kueue on the running control plane of `layout` and start its manager; a running, ready one
    is reused. Returns its ports. Raises KueueError when a CRD is not Established or the manager exits or is
    not ready within `s.start_timeout_s`; ApiException on a refused API call."""
    if not (s.home / "bin" / "kueue").exists():
        raise KueueError(f"{s.home / 'bin' / 'kueue'} missing: run `make kueue`")
    found = running(layout)
    if found is not None:
        return found
    stop(layout)
    info = KueueInfo(webhook_port=procs.free_port(), health_port=procs.free_port())
    config_path = _prepare_files(layout, s, info)
    api = _api(layout)
    try:
        _install_crds(api, s)
        _ensure_namespace(api, KUEUE_NAMESPACE)
        env = {**os.environ, "KUBECONFIG": str(_dir(layout) / "kubeconfig")}
        procs.spawn_detached(
            _argv(s, config_path, _dir(layout) / "certs"),
            log=layout.log(COMPONENT),
            pid_file=layout.pid(COMPONENT),
            state=layout.root,
            env=env,
        )
        deadline = time.monotonic() + s.start_timeout_s
        while not _ready(info):
            if not procs.alive(layout.pid(COMPONENT), layout.root):
                raise KueueError(f"kueue exited:\n{_tail(layout.log(COMPONENT))}")
            if time.monotonic() > deadline:
                raise KueueError(
                    f"kueue not ready after {s.start_timeout_s:.0f}s:\n{_tail(layout.log(COMPONENT))}"
                )
            time.sleep(0.25)
        _install_webhooks(api, layout, s, info)
        info.save(_info_path(layout))
        return info
    finally:
        api.close()


def stop(layout: Layout) -> None:
    """Remove Kueue's webhooks (when the API server answers), then stop the manager. CRDs and Kueue's objects
    stay; pods that still carry Kueue's finalizer stay until someone removes it."""
    if layout.kubeconfig.exists():
        api = _api(layout)
        try:
            _remove_webhooks(api)
        except (ApiException, urllib3.exceptions.HTTPError):  # a control plane that is already down
            pass
        finally:
            api.close()
    procs.stop(layout.pid(COMPONENT), layout.root, grace_s=10.0)
    _info_path(layout).unlink(missing_ok=True)


def wait_pod_webhook(api: Any, namespace: str, timeout_s: float = 30.0) -> None:
    """Wait until the API server calls Kueue's pod webhook for `namespace` (which must carry
    `MANAGED_LABEL=MANAGED_VALUE`): a dry-run pod with a queue-name label comes back gated. The API server
    picks up a new webhook configuration asynchronously; a pod created before that would run ungated.
    Raises KueueError after `timeout_s`."""
    core: Any = client.CoreV1Api(api)
    probe = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "kueue-probe-", "labels": {QUEUE_LABEL: "probe"}},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/none", "command": ["true"]}]},
    }
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            pod = core.create_namespaced_pod(namespace, probe, dry_run="All")
            if any(g.name == GATE for g in pod.spec.scheduling_gates or []):
                return
            last = "created without the gate"
        except ApiException as e:
            last = f"{e.status} {e.reason}"
        time.sleep(0.25)
    raise KueueError(f"Kueue's pod webhook not active in {namespace} after {timeout_s:.0f}s ({last})")
