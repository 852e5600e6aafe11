"""Pure parts of the process node: `$(VAR)` expansion, env resolution, /etc/hosts, phase rules."""

from __future__ import annotations

import datetime
import shutil
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
    leases, mine = tmp_path / "leases", tmp_path / "a" / "ips"
    ips = [ipam.allocate(mine, f"uid-{i}", leases) for i in range(300)]
    assert len(set(ips)) == 300 and all(
        ip.startswith("127.0.") and not ip.startswith("127.0.0.") for ip in ips
    )
    assert ipam.allocate(mine, "uid-7", leases) == ips[7]
    ipam.release(mine, ips[7], "uid-7", leases)
    ipam.release(mine, ips[8], "someone-else", leases)  # not the owner: kept
    again = ipam.allocate(mine, "uid-new", leases)
    assert again not in set(ips) - {ips[7]}
    assert ipam.allocate(mine, "uid-8", leases) == ips[8]


def test_ipam_two_clusters_never_share_an_address(tmp_path: Path) -> None:
    """Two local clusters on one machine (two test sessions) used to hand out the same 127.0.1.1."""
    leases = tmp_path / "leases"
    a, b = tmp_path / "a" / "ips", tmp_path / "b" / "ips"
    first = [ipam.allocate(a, f"uid-{i}", leases) for i in range(5)]
    second = [ipam.allocate(b, f"uid-{i}", leases) for i in range(5)]  # same pod uids, other cluster
    assert not set(first) & set(second)
    ipam.release_all(a, leases)
    assert not list(a.iterdir())
    assert ipam.allocate(b, "uid-0", leases) == second[0]
    # A cluster whose state directory is gone without `down`: its leases are stale and taken over.
    fresh = tmp_path / "fresh-leases"
    c = tmp_path / "c" / "ips"
    taken = ipam.allocate(c, "uid-c", fresh)
    other = ipam.allocate(b, "uid-b", fresh)
    assert other != taken  # c still exists: its lease holds
    ipam.release(b, other, "uid-b", fresh)
    shutil.rmtree(tmp_path / "c")
    assert ipam.allocate(b, "uid-later", fresh) == taken
