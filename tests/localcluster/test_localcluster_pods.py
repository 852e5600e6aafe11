"""The process node on the real control plane: pods scheduled by kube-scheduler run as local processes with
kubelet-like status, deletion, probes, service-account tokens, /etc/hosts names, garbage collection."""

from __future__ import annotations

import os
import signal
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from localcluster_helpers import describer, get_pod

pytestmark = pytest.mark.cluster


def pod_obj(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "local/none", "command": command}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "containers": [container],
            **spec,
        },
    }


def running_pid(pod: dict[str, Any]) -> int:
    cid = pod["status"]["containerStatuses"][0]["containerID"]
    assert cid.startswith("process://")
    return int(cid.removeprefix("process://"))


def create_and_wait_running(kube: Any, ns: str, body: dict[str, Any], wait_for: Any) -> dict[str, Any]:
    client.CoreV1Api(kube).create_namespaced_pod(ns, body)
    name = body["metadata"]["name"]

    def running() -> dict[str, Any] | None:
        pod = get_pod(kube, ns, name)
        return pod if pod["status"].get("phase") == "Running" else None

    return dict(wait_for(running, 60, describer(kube, ns, name)))


def test_plain_pod_is_scheduled_and_runs_as_a_process(kube: Any, namespace: str, wait_for: Any) -> None:
    pod = create_and_wait_running(kube, namespace, pod_obj("sleeper", ["sleep", "300"]), wait_for)
    assert pod["spec"]["nodeName"].startswith("eep-node-")  # bound by kube-scheduler, not by us
    pid = running_pid(pod)

    def execed() -> bool:  # the mount-namespace setup shell execs the command right after starting
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"300"]

    wait_for(execed, 10, lambda: Path(f"/proc/{pid}/cmdline").read_text())
    assert os.getpgid(pid) == pid  # its own process group
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")  # its own mount namespace
    ip = pod["status"]["podIP"]
    assert ip.startswith("127.0.") and not ip.startswith("127.0.0.")
    cs = pod["status"]["containerStatuses"][0]
    assert cs["ready"] and "running" in cs["state"]


def test_sigkill_reports_exit_137_and_failed(kube: Any, namespace: str, wait_for: Any) -> None:
    pod = create_and_wait_running(kube, namespace, pod_obj("victim", ["sleep", "300"]), wait_for)
    os.kill(running_pid(pod), signal.SIGKILL)

    def failed() -> dict[str, Any] | None:
        p = get_pod(kube, namespace, "victim")
        return p if p["status"]["phase"] == "Failed" else None

    p = wait_for(failed, 40, describer(kube, namespace, "victim"))
    term = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 137 and term["signal"] == 9 and term["reason"] == "Error"
    assert term["startedAt"] and term["finishedAt"]


def test_restart_policy_on_failure_restarts(kube: Any, namespace: str, wait_for: Any) -> None:
    body = pod_obj("flaky", ["sh", "-c", "exit 3"], restartPolicy="OnFailure")
    client.CoreV1Api(kube).create_namespaced_pod(namespace, body)

    def restarted() -> bool:
        cs = get_pod(kube, namespace, "flaky")["status"]["containerStatuses"][0]
        return bool(cs["restartCount"] >= 1 and cs["lastState"]["terminated"]["exitCode"] == 3)

    wait_for(restarted, 60, describer(kube, namespace, "flaky"))
    assert get_pod(kube, namespace, "flaky")["status"]["phase"] == "Running"


def test_termination_messages(kube: Any, namespace: str, wait_for: Any) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_pod(namespace, pod_obj("ok", ["sh", "-c", "echo all-good > /dev/termination-log"]))
    fallback = pod_obj(
        "bad",
        ["sh", "-c", "echo boom-detail; exit 3"],
        container={"terminationMessagePolicy": "FallbackToLogsOnError"},
    )
    core.create_namespaced_pod(namespace, fallback)

    def terminated(name: str) -> Any:
        def check() -> Any:
            p = get_pod(kube, namespace, name)
            return p if p["status"]["phase"] in ("Succeeded", "Failed") else None

        return wait_for(check, 60, describer(kube, namespace, name))

    ok = terminated("ok")["status"]
    assert ok["phase"] == "Succeeded"
    t = ok["containerStatuses"][0]["state"]["terminated"]
    assert (t["exitCode"], t["reason"], t["message"].strip()) == (0, "Completed", "all-good")
    bad = terminated("bad")["status"]
    assert bad["phase"] == "Failed"
    t = bad["containerStatuses"][0]["state"]["terminated"]
    assert t["exitCode"] == 3 and "boom-detail" in t["message"]


def test_readiness_probe_http(kube: Any, namespace: str, wait_for: Any) -> None:
    core = client.CoreV1Api(kube)
    env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    server = ["python3", "-m", "http.server", "8080", "--bind", "$(POD_IP)"]

    def probe(port: int) -> dict[str, Any]:
        get = {"path": "/", "port": port}
        return {"readinessProbe": {"httpGet": get, "periodSeconds": 1, "failureThreshold": 1}, "env": env}

    core.create_namespaced_pod(namespace, pod_obj("web", server, container=probe(8080)))
    core.create_namespaced_pod(namespace, pod_obj("web-wrong-port", server, container=probe(9999)))

    def ready(name: str) -> Any:
        def check() -> bool:
            conds = get_pod(kube, namespace, name)["status"].get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

        check.__name__ = f"{name} Ready"
        return check

    wait_for(ready("web"), 60, describer(kube, namespace, "web"))
    wrong = get_pod(kube, namespace, "web-wrong-port")
    assert wrong["status"]["phase"] == "Running" and not ready("web-wrong-port")()
    # the server really binds the pod IP (and only it)
    ip = get_pod(kube, namespace, "web")["status"]["podIP"]
    with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as r:
        assert r.status == 200


def test_delete_sends_sigterm_then_pod_is_gone(
    kube: Any, namespace: str, wait_for: Any, tmp_path: Path
) -> None:
    marker = tmp_path / f"term-{uuid.uuid4().hex}"
    script = (
        "import signal, sys, time, pathlib\n"
        "def bye(*_):\n"
        f"    pathlib.Path({str(marker)!r}).write_text('TERM')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        f"pathlib.Path({str(marker)!r}).write_text('READY')\n"
        "time.sleep(300)\n"
    )
    pod = create_and_wait_running(kube, namespace, pod_obj("graceful", ["python3", "-c", script]), wait_for)
    pid = running_pid(pod)
    # delete only once the handler is installed (python starts slowly on a busy machine)
    wait_for(
        lambda: marker.exists() and marker.read_text() == "READY", 20, describer(kube, namespace, "graceful")
    )
    client.CoreV1Api(kube).delete_namespaced_pod("graceful", namespace)

    def gone() -> bool:
        try:
            get_pod(kube, namespace, "graceful")
        except ApiException as e:
            return e.status == 404
        return False

    wait_for(gone, 40, describer(kube, namespace, "graceful"))
    assert marker.read_text() == "TERM"
    assert not Path(f"/proc/{pid}").exists()


def test_owned_object_is_garbage_collected(kube: Any, namespace: str, wait_for: Any) -> None:
    core = client.CoreV1Api(kube)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "child", "ownerReferences": [ref]}})
    core.delete_namespaced_config_map("owner", namespace)

    def child_gone() -> bool:
        try:
            core.read_namespaced_config_map("child", namespace)
        except ApiException as e:
            return e.status == 404
        return False

    wait_for(child_gone, 30)


def test_in_cluster_config_works_inside_a_pod(kube: Any, namespace: str, wait_for: Any) -> None:
    rbac = client.RbacAuthorizationV1Api(kube)
    rule = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "cm-reader"}, "rules": [rule]})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "cm-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}],
        },
    )
    client.CoreV1Api(kube).create_namespaced_config_map(namespace, {"metadata": {"name": "hello"}})
    script = (
        "from kubernetes import client, config\n"
        "from kubernetes.client.rest import ApiException\n"
        "config.load_incluster_config()\n"
        "core = client.CoreV1Api()\n"
        "ns = open('/var/run/secrets/kubernetes.io/serviceaccount/namespace').read()\n"
        "import time\n"
        "for _ in range(50):  # the RoleBinding reaches the RBAC cache asynchronously\n"
        "    try:\n"
        "        names = sorted(c.metadata.name for c in core.list_namespaced_config_map(ns).items)\n"
        "        break\n"
        "    except ApiException:\n"
        "        time.sleep(0.2)\n"
        "try:\n"
        "    core.list_namespaced_secret(ns); secrets = 'allowed'\n"
        "except ApiException as e:\n"
        "    secrets = str(e.status)\n"
        "open('/dev/termination-log', 'w').write(','.join(names) + ' secrets=' + secrets)\n"
    )
    client.CoreV1Api(kube).create_namespaced_pod(namespace, pod_obj("incluster", ["python", "-c", script]))

    def done() -> Any:
        p = get_pod(kube, namespace, "incluster")
        return p if p["status"]["phase"] in ("Succeeded", "Failed") else None

    p = wait_for(done, 60, describer(kube, namespace, "incluster"))
    term = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert p["status"]["phase"] == "Succeeded", term
    assert "hello" in term["message"].split(" ")[0].split(",")
    assert term["message"].endswith("secrets=403")  # the pod's own identity, not admin


def test_pods_resolve_each_others_hostname_subdomain(kube: Any, namespace: str, wait_for: Any) -> None:
    core = client.CoreV1Api(kube)

    def peer(me: str, other: str) -> dict[str, Any]:
        fq = f"{other}.grp.{namespace}.svc.cluster.local"
        script = (
            "import socket, time\n"
            "for _ in range(600):\n"
            "    try:\n"
            f"        ips = {{socket.gethostbyname(n) for n in ({fq!r}, {other + '.grp'!r})}}\n"
            "        break\n"
            "    except OSError:\n"
            "        time.sleep(0.1)\n"
            "open('/dev/termination-log', 'w').write(','.join(sorted(ips)) + ' ' + "
            "socket.gethostbyname('kubernetes.default.svc'))\n"
        )
        body = pod_obj(me, ["python3", "-c", script], hostname=me, subdomain="grp")
        return body

    core.create_namespaced_pod(namespace, peer("a", "b"))
    core.create_namespaced_pod(namespace, peer("b", "a"))

    def finished(name: str) -> Any:
        def check() -> Any:
            p = get_pod(kube, namespace, name)
            return p if p["status"]["phase"] in ("Succeeded", "Failed") else None

        return wait_for(check, 60, describer(kube, namespace, name))

    a, b = finished("a"), finished("b")
    for me, other in ((a, b), (b, a)):
        term = me["status"]["containerStatuses"][0]["state"]["terminated"]
        assert me["status"]["phase"] == "Succeeded", term
        assert term["message"] == f"{other['status']['podIP']} 127.0.0.1"


def test_exec_probes_run_inside_the_pod_and_liveness_restarts(
    kube: Any, namespace: str, wait_for: Any
) -> None:
    core = client.CoreV1Api(kube)
    # The token exists only inside the pod's mount namespace (on the host the mount point is empty).
    has_token = {
        "exec": {"command": ["sh", "-c", "test -s /var/run/secrets/kubernetes.io/serviceaccount/token"]}
    }
    ready_probe = {**has_token, "periodSeconds": 1}
    core.create_namespaced_pod(
        namespace, pod_obj("exec-ready", ["sleep", "300"], container={"readinessProbe": ready_probe})
    )
    failing = {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 1}
    core.create_namespaced_pod(
        namespace,
        pod_obj("unlively", ["sleep", "300"], restartPolicy="Always", container={"livenessProbe": failing}),
    )

    def ready() -> bool:
        return bool(get_pod(kube, namespace, "exec-ready")["status"]["containerStatuses"][0]["ready"])

    wait_for(ready, 60, describer(kube, namespace, "exec-ready"))

    def restarted() -> bool:
        cs = get_pod(kube, namespace, "unlively")["status"]["containerStatuses"][0]
        return bool(cs["restartCount"] >= 1 and cs["lastState"]["terminated"]["exitCode"] == 137)

    wait_for(restarted, 60, describer(kube, namespace, "unlively"))
