"""Fixtures for the operator's end-to-end tests on the local control plane (tests/conftest.py starts it).

- `operators`: starts `eep-operator run` subprocesses for the test's namespace (short lease/resync timings),
  kills them at the end. A subprocess, not a thread, so a test can SIGKILL it like a crashed pod.
- `make_cluster`: creates an ElasticEPCluster whose member pods run a stand-in (STANDIN below) instead of the
  real worker: it serves /ready on $EEP_POD_IP:$EEP_HTTP_PORT, exits with a code on GET /exit/<code>, and,
  when started with the join flag, gets Ready only STANDIN_JOIN_DELAY seconds after it started ("inf": never),
  or as many seconds as the file STANDIN_JOIN_DELAY_FILE says when it is asked (a test changes it while the
  group runs: replacements keep the group's spec, so the spec cannot).
- `eep`: small helpers to read the CR, its pods and Events.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from eep_contract.v1alpha1 import GROUP, PLURAL, VERSION, Labels
from eep_testkit import crs

STANDIN = r"""
import http.server, os, sys, threading
import time
start = time.monotonic()
delay = float(os.environ.get("STANDIN_JOIN_DELAY", "0")) if "--rejoin" in sys.argv else 0.0
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/exit/"):
            self.send_response(200); self.end_headers(); self.wfile.flush()
            threading.Timer(0.05, os._exit, (int(self.path.split("/")[2]),)).start()
            return
        wait = delay
        if "--rejoin" in sys.argv and os.environ.get("STANDIN_JOIN_DELAY_FILE"):
            with open(os.environ["STANDIN_JOIN_DELAY_FILE"]) as f:
                wait = float(f.read())
        ok = self.path == "/healthz" or (self.path == "/ready" and time.monotonic() - start >= wait)
        self.send_response(200 if ok else 503); self.end_headers()
    def log_message(self, *a):
        pass
addr = (os.environ["EEP_POD_IP"], int(os.environ["EEP_HTTP_PORT"]))
http.server.ThreadingHTTPServer(addr, H).serve_forever()
"""


@dataclass
class OperatorProc:
    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Operators:
    kubeconfig: Path
    namespace: str
    tmp: Path
    procs: list[OperatorProc] = field(default_factory=list)

    def start(self, *extra: str) -> OperatorProc:
        log = self.tmp / f"operator-{len(self.procs)}.log"
        argv = [
            sys.executable, "-m", "eep_operator", "run",
            "--namespace", self.namespace,
            "--kubeconfig", str(self.kubeconfig),
            "--metrics-port", "0", "--health-port", "0",
            "--peering", f"eep-{self.namespace}",
            "--lease-duration", "3", "--lease-renew", "0.5",
            "--resync-seconds", "2",
            *extra,
        ]  # fmt: skip
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        op = OperatorProc(proc, log)
        self.procs.append(op)
        return op

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name} ---\n{p.tail()}" for p in self.procs)


@pytest.fixture
def operators(local_cluster: Any, namespace: str, tmp_path: Path) -> Iterator[Operators]:
    ops = Operators(local_cluster.kubeconfig, namespace, tmp_path)
    try:
        yield ops
    finally:
        for op in ops.procs:
            op.stop()


class Eep:
    """Read helpers over the official client."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.ns = namespace

    def cr(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name))

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.cr(name).get("status") or {})

    def member(self, name: str, index: int) -> dict[str, Any]:
        return dict(self.status(name).get("members", [{}] * (index + 1))[index])

    def pods(self, name: str) -> list[dict[str, Any]]:
        api = self.core.api_client
        items = self.core.list_namespaced_pod(self.ns, label_selector=f"{Labels.CLUSTER}={name}").items
        return [api.sanitize_for_serialization(p) for p in items]

    def pod(self, name: str, index: int) -> dict[str, Any] | None:
        return next(
            (p for p in self.pods(name) if p["metadata"]["labels"].get(Labels.MEMBER) == str(index)), None
        )

    def pod_ip(self, name: str, index: int) -> str | None:
        p = self.pod(name, index)
        return None if p is None else (p.get("status") or {}).get("podIP")

    def exit_member(self, name: str, index: int, code: int = 137) -> str:
        """Make the member's stand-in exit with `code`; returns the uid of the pod that exits."""
        p = self.pod(name, index)
        assert p is not None and p["status"].get("podIP"), f"member {index} has no running pod"
        port = self.cr(name)["spec"].get("engine", {}).get("port", 30000)
        urllib.request.urlopen(f"http://{p['status']['podIP']}:{port}/exit/{code}", timeout=5).read()
        return str(p["metadata"]["uid"])

    def events(self, name: str) -> list[dict[str, Any]]:
        api = self.core.api_client
        items = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}").items
        return [api.sanitize_for_serialization(e) for e in items]

    def reasons(self, name: str) -> list[str]:
        return [e.get("reason", "") for e in self.events(name)]

    def running(self, name: str) -> bool:
        st = self.status(name)
        return st.get("phase") == "Running" and all(
            m.get("state") == "Healthy" for m in st.get("members", [])
        )

    def describe(self, name: str) -> str:
        try:
            st = self.status(name)
        except Exception as e:
            return f"<no status: {e}>"
        pods = [
            (p["metadata"]["name"], p["status"].get("phase"), p["metadata"].get("deletionTimestamp"))
            for p in self.pods(name)
        ]
        return json.dumps({"status": st, "pods": pods}, indent=1, default=str)[-6000:]


@pytest.fixture
def eep(kube: Any, namespace: str) -> Eep:
    return Eep(kube, namespace)


def cluster_manifest(name: str, namespace: str, nodes: int = 3, **recovery: Any) -> dict[str, Any]:
    """Pods run the stand-in (STANDIN); short timings."""
    rec = {
        "backoffInitialSeconds": 0.5,
        "backoffMaxSeconds": 4,
        "maxRestartsPerMember": 5,
        "restartWindowSeconds": 600,
        "rejoinTimeoutSeconds": 20,
        "maxUnavailableMembers": 1,
        "terminatingTimeoutSeconds": 3,
    }
    rec.update(recovery)
    return crs.cluster(
        name,
        namespace=namespace,
        image="stand-in",
        nodes=nodes,
        ranks_per_node=2,
        engine={"port": 18080},
        recovery=rec,
        template=crs.pod_template(command=["python3", "-c", STANDIN], terminationGracePeriodSeconds=1),
    )


@pytest.fixture
def make_cluster(eep: Eep, namespace: str) -> Callable[..., str]:
    def make(
        name: str = "eep",
        nodes: int = 3,
        env: dict[str, str] | list[dict[str, Any]] | None = None,
        command: list[str] | None = None,
        pod: dict[str, Any] | None = None,
        **recovery: Any,
    ) -> str:
        """`env` (literal values, or env entries) and `command` go to the engine container, `pod` (PodSpec
        fields) to the template's pod spec."""
        body = cluster_manifest(name, namespace, nodes, **recovery)
        body["spec"]["template"]["spec"].update(pod or {})
        engine = crs.engine_container(body)
        if command is not None:
            engine["command"] = command
        if isinstance(env, dict):
            engine["env"] = [{"name": k, "value": v} for k, v in env.items()]
        elif env:
            engine["env"] = env
        eep.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        return name

    return make


def since(t0: float) -> float:
    return time.monotonic() - t0
