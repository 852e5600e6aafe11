"""Shared fixtures for tests that need the local control plane (mark them `@pytest.mark.cluster`).

- `local_cluster` (session, a `ControlPlane`): starts eep-localcluster once per run in a temporary state
  directory, or reuses the one `EEP_KUBECONFIG` points at (its directory is the state directory); applies
  crds/*.yaml and waits for them to be Established; stops the cluster at the end only if it started it.
- `kube`: an ApiClient of the official client (admin). `namespace`: a fresh namespace, deleted after the test.
- `kubectl(*args)`: our pinned kubectl with the cluster's kubeconfig; raises with stderr on failure.
- `wait_for(predicate, timeout, describe)`: polls (`eep_testkit.wait.wait_until`; an exception is "not yet");
  on timeout fails with `describe()` and the agents' logs.

(`ControlPlane` is the handle of the API server and its process nodes; the worker tests' pods on 127.0.0.1
are `eep_testkit.pods.LocalPods`.)
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from eep_localcluster.__main__ import default_bin_dir, main, tools_bin_dir
from eep_testkit import kueue
from eep_testkit.tools import ToolFailed, Tools
from eep_testkit.wait import wait_until

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ControlPlane:
    """The local control plane of this run (eep-localcluster's state directory) and how to reach it."""

    state: Path
    kubeconfig: Path
    kubectl_path: Path
    started_here: bool

    def agent_logs(self, lines: int = 40) -> str:
        """The tails of every node agent's log and of every operator container's log that a node still
        keeps (kopf's per-handler success lines left out): what a failed wait needs to be understood."""
        out = []
        for log in sorted((self.state / "nodes").glob("*/agent.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.parent.name} agent log (last {lines} lines) ---\n" + "\n".join(tail))
        for log in sorted((self.state / "nodes").glob("*/pods/*/operator.log")):
            kept = [x for x in log.read_text(errors="replace").splitlines() if "succeeded." not in x]
            out.append(
                f"--- operator log {log.parent.name} (last {lines} lines) ---\n" + "\n".join(kept[-lines:])
            )
        return "\n".join(out)

    def run(self, *argv: str) -> int:
        return main(["--state", str(self.state), *argv])

    @property
    def tools(self) -> Tools:
        """The pinned kubectl and helm (side by side) with the admin kubeconfig."""
        return Tools(self.kubectl_path.parent, self.kubeconfig)


def _kubectl(cluster: ControlPlane, *args: str, check: bool = True, timeout: float = 60) -> str:
    """kubectl's stdout; a failure fails the test (AssertionError with kubectl's output)."""
    try:
        return cluster.tools.run("kubectl", args, timeout, check)
    except ToolFailed as e:
        raise AssertionError(str(e)) from e


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    kubectl_path = tools_bin_dir() / "kubectl"
    if not kubectl_path.exists():
        pytest.skip(f"{kubectl_path} missing: run `make tools`")
    reuse = os.environ.get("EEP_KUBECONFIG")
    if reuse:
        kubeconfig = Path(reuse).resolve()
        cluster = ControlPlane(kubeconfig.parent, kubeconfig, kubectl_path, started_here=False)
    else:
        if not (default_bin_dir() / "kube-apiserver").exists():
            pytest.skip(f"control plane not built in {default_bin_dir()}: run `make control-plane`")
        state = tmp_path_factory.mktemp("localcluster")
        cluster = ControlPlane(state, state / "kubeconfig", kubectl_path, started_here=True)
        # One more try after a pause: the whole session's cluster tests hang on this one start (see
        # `eep_localcluster.controlplane.ETCD_RETRY` for the start failures seen on this machine).
        for attempt in (1, 2):
            if cluster.run("up", "--exit-with", str(os.getpid())) == 0:
                break
            cluster.run("down")
            if attempt == 2:
                pytest.fail("eep-localcluster up failed")
            time.sleep(10)
    try:
        crds = sorted((REPO / "crds").glob("*.yaml"))
        if crds:
            _kubectl(cluster, "apply", "--server-side", *[f"-f={c}" for c in crds])
            # A CRD just created has no status yet: kubectl wait fails at once on the missing conditions
            # (`.status.conditions accessor error: <nil>`) instead of waiting; try again until it has them.
            deadline = time.monotonic() + 60
            while True:
                try:
                    _kubectl(cluster, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
                    break
                except AssertionError as e:
                    if "accessor error" not in str(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        yield cluster
    finally:
        if cluster.started_here:
            cluster.run("down")


@pytest.fixture(scope="module")
def kueue_up(local_cluster: ControlPlane) -> Iterator[None]:
    """Kueue (`make kueue`, which `make test` runs first) on the session's cluster, for one test module."""
    if not kueue.kueue_built():
        pytest.fail("Kueue is not built: run `make kueue` (make test does)")
    kueue.start_kueue(local_cluster.state)
    try:
        yield
    finally:
        kueue.stop_kueue(local_cluster.state)


@pytest.fixture
def kube(local_cluster: ControlPlane) -> Iterator[Any]:
    api = config.new_client_from_config(config_file=str(local_cluster.kubeconfig))
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def kubectl(local_cluster: ControlPlane) -> Callable[..., str]:
    def run(*args: str, check: bool = True, timeout: float = 60) -> str:
        return _kubectl(local_cluster, *args, check=check, timeout=timeout)

    return run


WaitFor = Callable[..., Any]


@pytest.fixture
def wait_for(local_cluster: ControlPlane) -> WaitFor:
    def wait(
        predicate: Callable[[], Any],
        timeout: float = 30,
        describe: Callable[[], str] | None = None,
        interval: float = 0.25,
    ) -> Any:
        def details() -> str:
            return f"{describe() if describe else ''}\n{local_cluster.agent_logs()}"

        # A transient API error is just "not yet".
        return wait_until(predicate, timeout, interval_s=interval, describe=details, tolerate=(Exception,))

    return wait


@pytest.fixture
def namespace(kube: Any, wait_for: WaitFor) -> Iterator[str]:
    core = client.CoreV1Api(kube)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    # Pods need the namespace's default ServiceAccount, which the controller-manager creates asynchronously.
    wait_for(lambda: core.read_namespaced_service_account("default", name), 30)
    try:
        yield name
    finally:
        core.delete_namespace(name, grace_period_seconds=0)
