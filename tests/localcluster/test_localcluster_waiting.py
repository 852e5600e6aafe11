"""Containers that wait instead of run, as on a kubelet: CreateContainerConfigError while the env names a
missing Secret/ConfigMap (the container starts with the values once it appears), ErrImagePull then
ImagePullBackOff for an image with no local mapping, ContainerCreating while a secret volume's object is
missing. The pod stays Pending with Ready False and the container never exits.

The cluster tests run on the real control plane (`cluster` marker on each: the pure tables below run in
`make test-unit` too)."""

from __future__ import annotations

import base64
import datetime
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from localcluster_helpers import describer, get_pod, unit_agent_settings

from eep_localcluster import podspec, runner
from eep_localcluster.podstatus import ContainerState, Termination, phase
from eep_localcluster.processnode import Agent

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
UNMAPPED = "registry.invalid/eep/missing:1"


# ---- pure rules ----


@pytest.mark.parametrize(
    ("image", "host"),
    [
        ("busybox", "docker.io"),
        ("library/busybox:1", "docker.io"),
        ("ghcr.io/org/worker:0.1.0", "ghcr.io"),
        ("localhost/x", "localhost"),
        ("registry.invalid:5000/x", "registry.invalid:5000"),
        ("local/none", "docker.io"),
    ],
)
def test_registry_host(image: str, host: str) -> None:
    assert podspec.registry_host(image) == host


@pytest.mark.parametrize(
    ("container", "reason", "message"),
    [
        ({"image": "stand-in", "command": ["x"]}, None, ""),
        ({"image": "lmsysorg/sglang:v0.5.23", "command": ["python3"]}, None, ""),
        ({"image": "local/none"}, "ErrImagePull", 'image "local/none": the process node runs'),
        ({"image": UNMAPPED, "command": ["x"]}, "ErrImagePull", "lookup registry.invalid: no such host"),
        ({"image": "r.invalid:5000/x", "command": ["x"]}, "ErrImagePull", "lookup r.invalid: no such host"),
        (
            {"image": UNMAPPED, "command": ["x"], "imagePullPolicy": "Never"},
            "ErrImageNeverPull",
            f'Container image "{UNMAPPED}" is not present with pull policy of Never',
        ),
        ({"image": "x", "command": ["x"], "imagePullPolicy": "Never"}, None, ""),
    ],
)
def test_image_mapping(container: dict[str, Any], reason: str | None, message: str) -> None:
    got = podspec.image_waiting(container)
    if reason is None:
        assert got is None
    else:
        assert got is not None and got.reason == reason and message in got.message


def _env(container: dict[str, Any], objects: dict[tuple[str, str], dict[str, str]]) -> dict[str, str]:
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {}}
    return podspec.container_env(
        pod,
        container,
        base={},
        pod_ip="127.0.1.1",
        host_ip="127.0.0.1",
        key_lookup=lambda kind, name, key: objects.get((kind, name), {}).get(key),
        map_lookup=lambda kind, name: objects.get((kind, name)),
    )


def _key_ref(kind: str, name: str, key: str, **extra: Any) -> dict[str, Any]:
    return {"name": "V", "valueFrom": {kind: {"name": name, "key": key, **extra}}}


@pytest.mark.parametrize(
    ("container", "message"),
    [
        ({"env": [_key_ref("secretKeyRef", "s", "k")]}, 'secret "s" not found'),
        ({"env": [_key_ref("secretKeyRef", "have", "k")]}, "couldn't find key k in Secret ns/have"),
        ({"env": [_key_ref("configMapKeyRef", "cm", "k")]}, 'configmap "cm" not found'),
        ({"env": [_key_ref("configMapKeyRef", "have", "k")]}, "couldn't find key k in ConfigMap ns/have"),
        ({"envFrom": [{"secretRef": {"name": "s"}}]}, 'secret "s" not found'),
        ({"envFrom": [{"configMapRef": {"name": "cm"}}]}, 'configmap "cm" not found'),
    ],
)
def test_missing_refs_are_config_errors_with_the_kubelets_message(
    container: dict[str, Any], message: str
) -> None:
    objects = {("secret", "have"): {"other": "1"}, ("configmap", "have"): {"other": "1"}}
    with pytest.raises(podspec.ConfigError) as e:
        _env(container, objects)
    assert str(e.value) == message


def test_optional_refs_may_be_missing() -> None:
    container = {
        "envFrom": [
            {"configMapRef": {"name": "cm", "optional": True}},
            {"secretRef": {"name": "s", "optional": True}},
        ],
        "env": [
            _key_ref("secretKeyRef", "s", "k", optional=True),
            _key_ref("configMapKeyRef", "have", "k", optional=True),
        ],
    }
    assert _env(container, {("configmap", "have"): {"other": "1"}}) == {}


def _volume_pod(volumes: list[dict[str, Any]], mounted: list[str]) -> dict[str, Any]:
    mounts = [{"name": n, "mountPath": f"/m/{n}"} for n in mounted]
    return {"spec": {"containers": [{"name": "c", "volumeMounts": mounts}], "volumes": volumes}}


@pytest.mark.parametrize(
    ("volume", "mounted", "message"),
    [
        (
            {"secret": {"secretName": "s"}},
            True,
            'MountVolume.SetUp failed for volume "v" : secret "s" not found',
        ),
        ({"configMap": {"name": "cm"}}, True, 'volume "v" : configmap "cm" not found'),
        ({"secret": {"secretName": "s", "optional": True}}, True, None),
        ({"secret": {"secretName": "s"}}, False, None),
        ({"secret": {"secretName": "have", "items": [{"key": "k", "path": "k"}]}}, True, "secret key: k"),
        ({"configMap": {"name": "have", "items": [{"key": "other", "path": "o"}]}}, True, None),
        ({"emptyDir": {}}, True, None),
    ],
)
def test_volume_waiting(volume: dict[str, Any], mounted: bool, message: str | None) -> None:
    objects = {("secret", "have"): {"other": "1"}, ("configmap", "have"): {"other": "1"}}
    pod = _volume_pod([{"name": "v", **volume}], ["v"] if mounted else [])
    got = podspec.volume_waiting(pod, lambda kind, name: objects.get((kind, name)))
    if message is None:
        assert got is None
    else:
        assert got is not None and got.reason == "ContainerCreating" and message in got.message


def test_a_start_that_cannot_happen_waits_and_is_no_restart() -> None:
    c = ContainerState("c", UNMAPPED)
    c.cannot_start("ErrImagePull", "no such host", NOW)
    assert c.as_status()["state"] == {
        "waiting": {"reason": "ErrImagePull", "message": "no such host"},
        "running": None,
        "terminated": None,
    }
    c.pull_backing_off()
    c.pull_backing_off()  # once: the message is not wrapped twice
    waiting = c.as_status()["state"]["waiting"]
    assert waiting == {
        "reason": "ImagePullBackOff",
        "message": f'Back-off pulling image "{UNMAPPED}": no such host',
    }
    assert c.restart_count == 0 and phase("Never", [c]) == "Pending"
    # A restart that waits (the Secret went away after a run) keeps the pod Running, as in the kubelet.
    again = ContainerState("c", "i", restart_count=1)
    again.last_terminated = Termination(1, None, "Error", "", NOW, NOW)
    again.cannot_start("CreateContainerConfigError", 'secret "s" not found', NOW)
    assert phase("Always", [again]) == "Running"
    assert not again.as_status()["ready"]


class FakeProcess:
    pid = 4242

    def poll(self) -> int | None:
        return None


def test_the_agent_retries_a_waiting_start_and_a_broken_pod_stalls_nobody(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sync loop, no cluster: a pod the agent cannot take on (no spec) is logged and skipped; a container
    whose Secret is missing waits, is tried again without counting a restart and with its probes still armed,
    and starts once the Secret is there. Before the fix: `KeyError: 'spec'` out of `sync()`, `needs` never
    adopted."""
    monkeypatch.setenv("EEP_LOCALCLUSTER_IPS", str(tmp_path / "leases"))
    (tmp_path / "ca.crt").write_text("")
    settings = unit_agent_settings(tmp_path)
    logs: list[str] = []
    agent = Agent(settings, client.ApiClient(), log=logs.append)
    secrets: dict[str, dict[str, str]] = {}
    started: list[list[str]] = []
    monkeypatch.setattr(agent, "_lookup_data", lambda kind, name, ns: secrets.get(name))
    monkeypatch.setattr(agent, "_refresh_token", lambda run: None)
    monkeypatch.setattr(agent, "_patch_status", lambda run: None)

    def start(argv: list[str], **_: Any) -> FakeProcess:
        started.append(argv)
        return FakeProcess()

    monkeypatch.setattr(runner, "start", start)
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]
    container = {"name": "main", "image": "local/none", "command": ["serve"], "env": env}
    needs = {
        "metadata": {"uid": "u1", "namespace": "ns", "name": "needs"},
        "spec": {"restartPolicy": "Always", "containers": [container]},
    }
    broken = {"metadata": {"uid": "u0", "namespace": "ns", "name": "broken"}}
    monkeypatch.setattr(agent.mine, "snapshot", lambda: [broken, needs])
    agent.mine.synced.set()

    agent.sync()
    assert any("ns/broken" in line for line in logs), logs
    c = agent.runs["u1"].containers[0]
    assert (c.waiting_reason, c.waiting_message) == ("CreateContainerConfigError", 'secret "creds" not found')
    assert c.retry_at is not None and not started
    c.retry_at = NOW  # due
    agent.sync()
    assert c.waiting_reason == "CreateContainerConfigError" and c.restart_count == 0 and not started
    assert not agent.runs["u1"].probe_stop.is_set()

    secrets["creds"] = {"token": "s3cret"}
    c.retry_at = NOW
    agent.sync()
    assert started == [["serve"]] and c.running_since is not None and c.retry_at is None
    assert c.restart_count == 0 and agent.runs["u1"].procs["main"].env["TOKEN"] == "s3cret"


# ---- on the local control plane ----


def pod_obj(name: str, container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "local/none", "command": ["sleep", "300"], **container}],
            **spec,
        },
    }


def waiting_with(kube: Any, ns: str, name: str, reason: str, message: str) -> Any:
    """A predicate: the pod's first container waits with `reason` and `message`; returns the pod then."""

    def check() -> dict[str, Any] | None:
        pod = get_pod(kube, ns, name)
        statuses = pod["status"].get("containerStatuses") or [{}]
        waiting = (statuses[0].get("state") or {}).get("waiting") or {}
        return pod if waiting.get("reason") == reason and waiting.get("message") == message else None

    return check


def assert_waits(pod: dict[str, Any], reason: str) -> None:
    status = pod["status"]
    cs = status["containerStatuses"][0]
    assert status["phase"] == "Pending", status
    assert cs["state"]["waiting"]["reason"] == reason and not cs["state"].get("terminated"), cs
    assert cs["ready"] is False and cs["started"] is False and cs["restartCount"] == 0, cs
    assert not cs.get("lastState"), cs
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"


def environ(pod: dict[str, Any]) -> dict[str, str]:
    pid = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().partition("=")[::2] for p in pairs if p)


def running_and_ready(kube: Any, ns: str, name: str) -> Any:
    def check() -> dict[str, Any] | None:
        pod = get_pod(kube, ns, name)
        cs = (pod["status"].get("containerStatuses") or [{}])[0]
        return pod if pod["status"].get("phase") == "Running" and cs.get("ready") else None

    return check


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.cluster
def test_missing_secret_key_ref_waits_then_starts_with_the_value(
    kube: Any, namespace: str, wait_for: Any
) -> None:
    """Before the fix: `WaitTimeout: timed out after 60s waiting for check`, the container `terminated:
    {exitCode: 128, reason: ContainerCannotRun, message: secret 'creds' key 'token' not found}`, phase
    Failed."""
    core: Any = client.CoreV1Api(kube)  # dict bodies, not the typed models
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]
    # The readiness probe shows the probes still work for a start that had to wait.
    probe = {"exec": {"command": ["true"]}, "periodSeconds": 1}
    core.create_namespaced_pod(namespace, pod_obj("needs-secret", {"env": env, "readinessProbe": probe}))
    describe = describer(kube, namespace, "needs-secret")
    missing = waiting_with(
        kube, namespace, "needs-secret", "CreateContainerConfigError", 'secret "creds" not found'
    )
    assert_waits(wait_for(missing, 60, describe), "CreateContainerConfigError")
    time.sleep(3)  # several retries later: still waiting, nothing ran, nothing exited
    assert_waits(get_pod(kube, namespace, "needs-secret"), "CreateContainerConfigError")

    secret = {"metadata": {"name": "creds"}, "data": {"other": b64("x")}}
    core.create_namespaced_secret(namespace, secret)
    no_key = f"couldn't find key token in Secret {namespace}/creds"
    wait_for(
        waiting_with(kube, namespace, "needs-secret", "CreateContainerConfigError", no_key), 30, describe
    )

    core.patch_namespaced_secret("creds", namespace, {"data": {"token": b64("s3cret")}})
    pod = wait_for(running_and_ready(kube, namespace, "needs-secret"), 30, describe)
    assert environ(pod)["TOKEN"] == "s3cret"
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0


@pytest.mark.cluster
def test_missing_config_map_env_from_waits_then_starts(kube: Any, namespace: str, wait_for: Any) -> None:
    """Before the fix: `WaitTimeout: timed out after 60s waiting for check`, the container `terminated:
    {exitCode: 128, reason: ContainerCannotRun, message: configmap 'settings' not found}`, phase Running,
    never retried."""
    core: Any = client.CoreV1Api(kube)  # dict bodies, not the typed models
    container = {"envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}]}
    core.create_namespaced_pod(namespace, pod_obj("needs-cm", container, restartPolicy="Always"))
    describe = describer(kube, namespace, "needs-cm")
    missing = waiting_with(
        kube, namespace, "needs-cm", "CreateContainerConfigError", 'configmap "settings" not found'
    )
    assert_waits(wait_for(missing, 60, describe), "CreateContainerConfigError")

    core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"}, "data": {"MODE": "fast"}})
    pod = wait_for(running_and_ready(kube, namespace, "needs-cm"), 30, describe)
    assert environ(pod)["CFG_MODE"] == "fast"
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0


@pytest.mark.cluster
def test_optional_refs_and_a_missing_secret_volume(kube: Any, namespace: str, wait_for: Any) -> None:
    """Optional refs to missing objects start at once without those variables; a pod that mounts a missing
    Secret waits in ContainerCreating until it exists. Before the fix: the optional pod ran (that part
    passed), then `WaitTimeout: timed out after 60s waiting for check` with the volume pod Running (secret
    volumes were ignored)."""
    core: Any = client.CoreV1Api(kube)  # dict bodies, not the typed models
    optional = {
        "envFrom": [{"secretRef": {"name": "nope", "optional": True}}],
        "env": [
            {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": True}}},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}},
        ],
    }
    core.create_namespaced_pod(namespace, pod_obj("optional", optional))
    mounts = {"volumeMounts": [{"name": "certs", "mountPath": "/var/run/eep-test-certs"}]}
    volume_pod = pod_obj("mounts", mounts, volumes=[{"name": "certs", "secret": {"secretName": "certs"}}])
    core.create_namespaced_pod(namespace, volume_pod)

    pod = wait_for(running_and_ready(kube, namespace, "optional"), 60, describer(kube, namespace, "optional"))
    assert not {"A", "B"} & set(environ(pod))
    setup = 'MountVolume.SetUp failed for volume "certs" : secret "certs" not found'
    waits = waiting_with(kube, namespace, "mounts", "ContainerCreating", setup)
    assert_waits(wait_for(waits, 60, describer(kube, namespace, "mounts")), "ContainerCreating")
    core.create_namespaced_secret(namespace, {"metadata": {"name": "certs"}, "data": {"ca": b64("x")}})
    wait_for(running_and_ready(kube, namespace, "mounts"), 30, describer(kube, namespace, "mounts"))


@pytest.mark.cluster
def test_unmapped_images_wait_in_image_pull_back_off_and_never_run(
    kube: Any, namespace: str, wait_for: Any
) -> None:
    """Before the fix: `AssertionError: {'phase': 'Running', ...}`: the image under `.invalid` ran (and
    `no-command` ended `terminated: {reason: ContainerCannotRun}`)."""
    core: Any = client.CoreV1Api(kube)  # dict bodies, not the typed models
    seen: dict[str, list[tuple[str, str, str]]] = {}
    w: Any = watch.Watch()  # type: ignore[no-untyped-call]
    stream = w.stream(core.list_namespaced_pod, namespace, timeout_seconds=60)
    core.create_namespaced_pod(namespace, pod_obj("unmapped", {"image": UNMAPPED}))
    no_command = pod_obj("no-command", {})
    del no_command["spec"]["containers"][0]["command"]
    core.create_namespaced_pod(namespace, no_command)
    deadline = time.monotonic() + 60
    try:
        for event in stream:
            pod = event["raw_object"]
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                for kind, state in (cs.get("state") or {}).items():
                    if state is not None:
                        reason = str(state.get("reason", ""))
                        seen.setdefault(pod["metadata"]["name"], []).append(
                            (kind, reason, state.get("message", ""))
                        )
                assert pod["status"]["phase"] == "Pending" and cs["restartCount"] == 0, pod["status"]
            reasons = [r for _, r, _ in seen.get("unmapped", [])]
            # Two full rounds of pull and back-off: retried, never run.
            if reasons.count("ErrImagePull") >= 2 and reasons.count("ImagePullBackOff") >= 2:
                break
            if time.monotonic() > deadline:
                break
    finally:
        w.stop()
    for name in ("unmapped", "no-command"):
        kinds = {kind for kind, _, _ in seen.get(name, [])}
        assert kinds == {"waiting"}, f"{name} ran: {sorted(kinds)} ({seen.get(name)})"
    pulls = [(r, m) for _, r, m in seen["unmapped"] if r != "ContainerCreating"]
    assert pulls[0][0] == "ErrImagePull" and "registry.invalid: no such host" in pulls[0][1], pulls
    assert [r for r, _ in pulls].count("ImagePullBackOff") >= 2, pulls
    back_off = next(m for r, m in pulls if r == "ImagePullBackOff")
    assert back_off.startswith(f'Back-off pulling image "{UNMAPPED}": failed to pull and unpack image'), (
        back_off
    )

    pulls = [(r, m) for _, r, m in seen["no-command"] if r != "ContainerCreating"]
    assert pulls and pulls[0][0] == "ErrImagePull" and "set `command`" in pulls[0][1], pulls
    # The pod's image is mutable: a mapped one lets the waiting container start, as a kubelet would.
    core.patch_namespaced_pod(
        "unmapped", namespace, {"spec": {"containers": [{"name": "main", "image": "local/x"}]}}
    )
    pod = wait_for(running_and_ready(kube, namespace, "unmapped"), 60, describer(kube, namespace, "unmapped"))
    assert pod["status"]["containerStatuses"][0]["image"] == "local/x"
