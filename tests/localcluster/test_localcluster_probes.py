"""The process node's probe threads and its sync loop share a container's readiness safely: a probe thread
never writes container state, and a verdict about a process that has exited cannot reach its restart."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from localcluster_helpers import unit_agent_settings

from eep_localcluster import runner
from eep_localcluster.podrun import PodRun
from eep_localcluster.podstatus import ContainerState
from eep_localcluster.processnode import Agent


class FakeProcess:
    """Stands in for a container's process group leader: running until `exit()`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode

    def exit(self, code: int) -> None:
        self.returncode = code


class Node:
    """An agent with no cluster behind it, one pod whose container has a readiness probe every 10 ms, and
    fake processes (pids 1001, 1002, ...) whose probe results come from `verdicts[pid]`."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        settings = unit_agent_settings(tmp_path)
        self.agent = Agent(settings, client.ApiClient(), log=lambda _: None)
        container = {
            "name": "main",
            "image": "local/none",
            "command": ["serve"],
            "readinessProbe": {"exec": {"command": ["check"]}, "periodSeconds": 0.01},
        }
        pod = {
            "metadata": {"uid": "u1", "namespace": "ns", "name": "p"},
            "spec": {"restartPolicy": "Always", "containers": [container]},
        }
        self.run = PodRun(pod, "127.0.1.1", tmp_path / "pod")
        self.run.dir.mkdir(parents=True)
        self.container = self.run.containers[0]
        self.processes: list[FakeProcess] = []
        self.verdicts: dict[int, Callable[[], bool]] = {}
        self.probe_threads: list[threading.Thread] = []
        monkeypatch.setattr(runner, "start", self._start_process)
        monkeypatch.setattr(runner, "probe", lambda spec, *, pid, **_: self.verdicts[pid]())
        monkeypatch.setattr(runner, "signal_group", lambda pgid, sig: None)

    def _start_process(self, argv: list[str], **_: Any) -> FakeProcess:
        proc = FakeProcess(1001 + len(self.processes))
        self.processes.append(proc)
        return proc

    def start(self, verdict: Callable[[], bool]) -> FakeProcess:
        """Start the container (as the sync loop does) on a process whose probes answer `verdict()`."""
        self.verdicts[1001 + len(self.processes)] = verdict
        before = set(threading.enumerate())
        self.agent._start(self.run, self.container)
        self.probe_threads += [t for t in threading.enumerate() if t not in before]
        return self.processes[-1]

    def stop(self) -> None:
        self.run.probe_stop.set()
        for t in self.probe_threads:
            t.join(5)


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    n = Node(tmp_path, monkeypatch)
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def ready_writers(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Names of the threads that assign `ContainerState.ready` during the test."""
    writers: set[str] = set()

    def recording_setattr(self: ContainerState, name: str, value: Any) -> None:
        if name == "ready":
            writers.add(threading.current_thread().name)
        object.__setattr__(self, name, value)

    monkeypatch.setattr(ContainerState, "__setattr__", recording_setattr)
    return writers


def test_readiness_reaches_the_container_only_through_the_sync_loop(
    node: Node, ready_writers: set[str]
) -> None:
    node.start(lambda: True)
    assert node.probe_threads, "the readiness probe runs in a thread of its own"
    assert node.agent.wake.wait(5), "a changed verdict wakes the sync loop"
    assert node.container.ready is False  # reported, not yet applied: the probe thread left it alone
    node.agent._poll(node.run, node.container)
    assert node.container.ready is True
    assert ready_writers == {threading.current_thread().name}


def test_late_verdict_about_an_exited_process_does_not_mark_its_restart_ready(
    node: Node, ready_writers: set[str]
) -> None:
    probing, release = threading.Event(), threading.Event()

    def slow_success() -> bool:
        probing.set()
        release.wait(5)
        return True

    first = node.start(slow_success)
    first_prober = node.probe_threads[-1]
    assert probing.wait(5)
    # The process exits while its probe is under way; the sync loop records that and restarts it.
    first.exit(1)
    node.agent._poll(node.run, node.container)
    assert node.container.running_since is None and node.container.ready is False
    node.start(lambda: False)
    # The first process's probe now succeeds: a verdict about a process that is gone.
    release.set()
    first_prober.join(5)
    assert not first_prober.is_alive()
    node.agent._poll(node.run, node.container)
    assert node.container.running_since is not None
    assert node.container.ready is False
    assert ready_writers == {threading.current_thread().name}
