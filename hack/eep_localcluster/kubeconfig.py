"""Write kubeconfig files (embedded certs, so a kubeconfig can be copied anywhere).

Called by `controlplane.py` (admin, controller-manager, scheduler, node agents) and by the agent itself.
"""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from eep_localcluster.pki import CertPair


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca_cert: Path, client: CertPair, user: str) -> None:
    """Write a one-context kubeconfig for `user` authenticating with `client` against `server`."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "eep-local", "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)}}
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(client.cert),
                    "client-key-data": _b64(client.key),
                },
            }
        ],
        "contexts": [{"name": "eep-local", "context": {"cluster": "eep-local", "user": user}}],
        "current-context": "eep-local",
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(path)


def server_of(path: Path) -> str:
    """The API server URL a kubeconfig points at."""
    config = yaml.safe_load(path.read_text())
    return str(config["clusters"][0]["cluster"]["server"])
