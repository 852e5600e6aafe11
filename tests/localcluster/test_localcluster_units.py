"""Pure parts of the process node: `$(VAR)` expansion, env resolution, /etc/hosts, phase rules."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest

from eep_localcluster import ipam, podspec, podstatus
from eep_localcluster.podstatus import ContainerState, Termination

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("x$(A)y$(B)", "x1y2"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("$A", "$A"),
    ],
)
def test_expand(text: str, expected: str) -> None:
    assert podspec.expand(text, {"A": "1", "B": "2"}) == expected


def test_container_env_order_field_refs_and_expansion() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "x"}},
        "spec": {"nodeName": "n0"},
    }
    container = {
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
        "env": [
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "ADDR", "value": "$(IP):80"},
            {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ],
        "command": ["run", "--addr=$(ADDR)", "--node=$(NODE)"],
    }
    env = podspec.container_env(
        pod,
        container,
        base={"PATH": "/bin"},
        pod_ip="127.0.1.5",
        host_ip="127.0.0.1",
        key_lookup=lambda kind, name, key: f"{kind}/{name}/{key}",
        map_lookup=lambda kind, name: {"X": "1"},
    )
    assert env == {
        "PATH": "/bin",
        "CM_X": "1",
        "IP": "127.0.1.5",
        "APP": "x",
        "ADDR": "127.0.1.5:80",
        "S": "secret/s/k",
    }
    assert podspec.container_argv(container, env) == ["run", "--addr=127.0.1.5:80", "--node=$(NODE)"]


def test_argv_without_command_is_an_error() -> None:
    with pytest.raises(ValueError, match="command"):
        podspec.container_argv({"args": ["x"]}, {})


def test_hosts_file_lists_pods_with_hostname_and_subdomain() -> None:
    pods = [
        {
            "metadata": {"namespace": "ns"},
            "spec": {"hostname": "c-0", "subdomain": "c"},
            "status": {"podIP": "127.0.1.1"},
        },
        {"metadata": {"namespace": "ns"}, "spec": {"hostname": "x"}, "status": {"podIP": "127.0.1.2"}},
        {"metadata": {"namespace": "ns"}, "spec": {"hostname": "c-1", "subdomain": "c"}, "status": {}},
    ]
    text = podspec.hosts_file(pods)
    assert "127.0.1.1\tc-0.c.ns.svc.cluster.local c-0.c.ns.svc c-0.c.ns c-0.c\n" in text
    assert "127.0.0.1\tkubernetes.default.svc.cluster.local kubernetes.default.svc" in text
    assert "127.0.1.2" not in text and "c-1" not in text


def _term(code: int) -> Termination:
    return Termination(code, None, podstatus.exit_reason(code), "", NOW, NOW)


@pytest.mark.parametrize(
    ("policy", "codes", "expected"),
    [
        ("Never", [0], "Succeeded"),
        ("Never", [137], "Failed"),
        ("Never", [0, 1], "Failed"),
        ("OnFailure", [0], "Succeeded"),
        ("Always", [0], "Running"),
    ],
)
def test_phase_when_all_terminated(policy: str, codes: list[int], expected: str) -> None:
    containers = [ContainerState(f"c{i}", "img", terminated=_term(c)) for i, c in enumerate(codes)]
    assert podstatus.phase(policy, containers) == expected


def test_phase_running_and_pending() -> None:
    assert podstatus.phase("Never", [ContainerState("c", "i")]) == "Pending"
    running = ContainerState("c", "i", running_since=NOW)
    assert podstatus.phase("Never", [running, ContainerState("d", "i", terminated=_term(1))]) == "Running"
    backoff = ContainerState("c", "i", terminated=_term(1), restart_at=NOW)
    assert podstatus.phase("OnFailure", [backoff]) == "Running"


@pytest.mark.parametrize(
    ("policy", "code", "restart"),
    [("Never", 1, False), ("OnFailure", 1, True), ("OnFailure", 0, False), ("Always", 0, True)],
)
def test_should_restart(policy: str, code: int, restart: bool) -> None:
    assert podstatus.should_restart(policy, code) is restart


def test_ready_condition_keeps_transition_time() -> None:
    c = ContainerState("c", "i", running_since=NOW, ready=True)
    first = podstatus.conditions([c], NOW, [])
    later = podstatus.conditions([c], NOW + datetime.timedelta(minutes=1), first)
    assert first == later


def test_ipam_unique_sticky_and_released(tmp_path: Path) -> None:
    ips = [ipam.allocate(tmp_path, f"uid-{i}") for i in range(300)]
    assert len(set(ips)) == 300 and all(
        ip.startswith("127.0.") and not ip.startswith("127.0.0.") for ip in ips
    )
    assert ipam.allocate(tmp_path, "uid-7") == ips[7]
    ipam.release(tmp_path, ips[7], "uid-7")
    ipam.release(tmp_path, ips[8], "someone-else")  # not the owner: kept
    again = ipam.allocate(tmp_path, "uid-new")
    assert again not in set(ips) - {ips[7]}
    assert ipam.allocate(tmp_path, "uid-8") == ips[8]


FAKE_ETCD = r"""#!/usr/bin/env python3
# Stands in for etcd: exits at once on its first start, never answers on its second, then serves /health.
import http.server, pathlib, sys, time
count = pathlib.Path(__file__).with_name("starts")
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
if n == 1:
    sys.exit(1)
if n == 2:
    time.sleep(600)
url = next(a for a in sys.argv if a.startswith("--listen-client-urls=")).split("=", 1)[1]
port = int(url.rsplit(":", 1)[1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b'{"health":"true"}')
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def test_etcd_that_exits_or_hangs_at_start_is_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eep_localcluster import controlplane, procs  # noqa: PLC0415
    from eep_localcluster.layout import Layout  # noqa: PLC0415

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    etcd = bin_dir / "etcd"
    etcd.write_text(FAKE_ETCD)
    etcd.chmod(0o755)
    real_sleep = time.sleep
    # The pauses between attempts (1 s, 2 s) are skipped; the 0.25 s polls stay.
    monkeypatch.setattr(controlplane.time, "sleep", lambda s: None if s >= 1 else real_sleep(s))
    monkeypatch.setattr(controlplane, "ETCD_ATTEMPT_TIMEOUT_S", 5.0)
    layout = Layout(tmp_path / "state")
    for d in ("logs", "run"):
        (layout.root / d).mkdir(parents=True)
    info = controlplane.ClusterInfo(etcd_port=procs.free_port(), apiserver_port=0, node_monitor_grace_s=15)
    try:
        got = controlplane._start_etcd(layout, controlplane.ControlPlaneSettings(bin_dir=bin_dir), info)
        assert (bin_dir / "starts").read_text() == "3"
        assert len(procs.ours(layout.root)) == 1  # the hung one was stopped
        assert controlplane._http_ok(f"http://127.0.0.1:{got.etcd_port}/health")
    finally:
        procs.sweep(layout.root)
