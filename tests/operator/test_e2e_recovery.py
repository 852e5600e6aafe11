"""End to end on the local control plane: the operator (a subprocess) recovers members of real pods.

Member pods run a stand-in (conftest.STANDIN) that serves /ready, so these tests exercise the operator, the
API server, the scheduler, the garbage collector and the process node, not the worker runtime.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import Eep, Operators

from eep_testkit.ports import free_port as _free_port

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def wait_running(eep: Eep, wait_for: Any, name: str, ops: Operators, timeout: float = 60) -> dict[str, Any]:
    wait_for(lambda: eep.running(name), timeout, lambda: eep.describe(name) + "\n" + ops.logs())
    return eep.status(name)


def container_cmd(pod: dict[str, Any]) -> list[str]:
    c = pod["spec"]["containers"][0]
    return list(c.get("command") or []) + list(c.get("args") or [])


def test_single_member_failure_rejoins(
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any
) -> None:
    operators.start()
    name = make_cluster()
    st = wait_running(eep, wait_for, name, operators)
    epoch0 = st["membership"]["epoch"]
    assert st["membership"]["activeRanks"] == [0, 1, 2, 3, 4, 5]
    fresh = eep.pod(name, 1)
    assert fresh is not None and "--rejoin" not in container_cmd(fresh)
    assert fresh["spec"]["restartPolicy"] == "Never" and fresh["spec"]["hostname"] == f"{name}-1"

    t0 = time.monotonic()
    old_uid = eep.exit_member(name, 1, 137)
    seen: set[str] = set()

    def recovered() -> bool:
        m = eep.member(name, 1)
        seen.add(m.get("state", ""))
        return m.get("state") == "Healthy" and m.get("podUid") not in (None, old_uid)

    wait_for(recovered, 30, lambda: eep.describe(name) + operators.logs())
    took = time.monotonic() - t0
    st = eep.status(name)
    m = st["members"][1]
    assert m["lastExit"]["exitCode"] == 137 and m["lastExit"]["podUid"] == old_uid
    assert m["restarts"] == 1 and m["lastRecoverySeconds"] > 0 and st["lastRecoverySeconds"] <= took + 1
    assert st["membership"]["epoch"] >= epoch0 + 3  # failed, joining, healthy
    assert st["membership"]["activeRanks"] == [0, 1, 2, 3, 4, 5] and st["membership"]["joiningRanks"] == []
    assert st["phase"] == "Running"
    replacement = eep.pod(name, 1)
    assert replacement is not None and "--rejoin" in container_cmd(replacement)
    assert replacement["metadata"]["annotations"]["elasticep.io/join"] == "true"
    # Survivors were never touched.
    assert [eep.member(name, i)["restarts"] for i in (0, 2)] == [0, 0]
    reasons = eep.reasons(name)
    for r in ("MemberContainerExit", "MemberRestarting", "MemberJoining", "MemberRecovered"):
        assert r in reasons, reasons


def test_two_members_fail_at_once(eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any) -> None:
    operators.start()
    name = make_cluster(nodes=4, maxUnavailableMembers=2)
    wait_running(eep, wait_for, name, operators)
    uids = {i: eep.exit_member(name, i, 1) for i in (1, 3)}

    def both_back() -> bool:
        ms = eep.status(name)["members"]
        return eep.running(name) and all(ms[i].get("podUid") not in (None, uids[i]) for i in (1, 3))

    wait_for(both_back, 40, lambda: eep.describe(name) + operators.logs())
    st = eep.status(name)
    assert st["groupRestarts"] == 0 and [m["restarts"] for m in st["members"]] == [0, 1, 0, 1]
    for i in (1, 3):
        assert st["members"][i]["lastExit"]["exitCode"] == 1
        pod = eep.pod(name, i)
        assert pod is not None and "--rejoin" in container_cmd(pod)


def test_pod_deleted_by_a_user(eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any) -> None:
    operators.start()
    name = make_cluster()
    wait_running(eep, wait_for, name, operators)
    old = eep.pod(name, 2)
    assert old is not None
    eep.core.delete_namespaced_pod(f"{name}-2", eep.ns)
    wait_for(
        lambda: eep.running(name) and eep.member(name, 2).get("podUid") not in (None, old["metadata"]["uid"]),
        40,
        lambda: eep.describe(name) + operators.logs(),
    )
    m = eep.member(name, 2)
    assert m["lastExit"]["reason"] == "PodDeleted" and m["restarts"] == 1
    pod = eep.pod(name, 2)
    assert pod is not None and "--rejoin" in container_cmd(pod)
    assert "MemberPodDeleted" in eep.reasons(name)


def test_member_zero_failure_restarts_the_group(
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any
) -> None:
    operators.start()
    name = make_cluster()
    wait_running(eep, wait_for, name, operators)
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in eep.pods(name)}
    eep.exit_member(name, 0, 139)
    wait_for(
        lambda: eep.status(name).get("groupRestarts") == 1 and eep.running(name),
        60,
        lambda: eep.describe(name) + operators.logs(),
    )
    pods = eep.pods(name)
    assert len(pods) == 3
    for p in pods:
        assert p["metadata"]["uid"] != before[p["metadata"]["name"]]
        assert "--rejoin" not in container_cmd(p)
        assert p["metadata"]["annotations"]["elasticep.io/join"] == "false"
    st = eep.status(name)
    assert st["members"][0]["lastExit"]["exitCode"] == 139
    assert all(m["restarts"] == 0 for m in st["members"])
    assert "GroupRestart" in eep.reasons(name)


def test_replacement_never_ready_is_retried(
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any, tmp_path: Path
) -> None:
    operators.start()
    delay = tmp_path / "join-delay"
    delay.write_text("inf")
    name = make_cluster(env={"STANDIN_JOIN_DELAY_FILE": str(delay)}, rejoinTimeoutSeconds=3)
    wait_running(eep, wait_for, name, operators)
    eep.exit_member(name, 1)
    wait_for(
        lambda: (
            (eep.member(name, 1).get("lastExit") or {}).get("reason") == "JoinTimeout"
            and eep.member(name, 1).get("restarts", 0) >= 2
        ),
        40,
        lambda: eep.describe(name) + operators.logs(),
    )
    assert "MemberJoinTimeout" in eep.reasons(name)
    delay.write_text("0")  # the next replacement joins
    wait_for(lambda: eep.running(name), 40, lambda: eep.describe(name) + operators.logs())
    assert eep.status(name)["groupRestarts"] == 0


def test_flapping_member_exhausts_its_budget(
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any, free_port: int
) -> None:
    health = _free_port()
    operators.start("--metrics-port", str(free_port), "--health-port", str(health))
    name = make_cluster(maxRestartsPerMember=2, backoffInitialSeconds=0.5)
    wait_running(eep, wait_for, name, operators)
    for _ in (1, 2):
        old = eep.exit_member(name, 1)
        wait_for(
            lambda old=old: eep.running(name) and eep.member(name, 1).get("podUid") not in (None, old),
            30,
            lambda: eep.describe(name) + operators.logs(),
        )
    backoffs = [e["message"] for e in eep.events(name) if e["reason"] == "BackoffScheduled"]
    assert sorted(backoffs) == [
        "[member 1] member 1: replacement in 0.5s",
        "[member 1] member 1: replacement in 1s",
    ]
    eep.exit_member(name, 1)
    wait_for(
        lambda: eep.status(name).get("phase") == "Failed", 20, lambda: eep.describe(name) + operators.logs()
    )
    st = eep.status(name)
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "RestartBudgetExhausted"
    assert "RestartBudgetExhausted" in eep.reasons(name)
    liveness = urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=5)
    assert liveness.status == 200
    metrics = _scrape(free_port)
    line = f'elasticep_recoveries_total{{cluster="{name}",namespace="{eep.ns}",result="Failed"}} 1.0'
    assert line in metrics, metrics
    # The operator stopped acting: no replacement appears.
    time.sleep(3)
    m = eep.member(name, 1)
    assert (m["state"], m["restarts"], eep.status(name)["phase"]) == ("Failed", 2, "Failed")


def _scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


@pytest.fixture
def free_port() -> int:
    return _free_port()
