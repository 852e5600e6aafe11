"""Issue 13, scenario 12: a joiner that dies inside its join, through the operator with the real worker.

Mooncake keeps a joiner that died inside its join registered as healthy for its heartbeat timeout
(`JOINER_REGISTRATION_HOLD_S`, 30 s) and refuses the next registration of its ranks until then. The operator
must wait that out before the next replacement, and keep the budget (and the phase) for real crashes.

Scenario: 2 members x 1 rank of the CPU example (the real worker on mooncake-cpu), backoff 0.5 s,
`maxRestartsPerMember: 2`. Member 1 is SIGKILLed; once its replacement is Joining and has registered with
Mooncake (it logs its simulated weight load, which comes after its groups exist and before `join_group`), the
replacement's processes are SIGKILLed too. Expected: the next replacement is created no sooner than the hold
after that death (its pod's creationTimestamp, and `status.members[1].nextRestartTime`), the cluster ends
Running with member 1 Healthy, it never went Failed, and no group restart.

Before the fix (operator, contract and worker of 0076d16; the process node and test kit of this tree, since
0076d16's process node gives both members one address): the first replacement was refused for Mooncake's
whole registration wait and exited 9, that counted as a crash, and the joiner's death spent the budget:
"RestartBudgetExhausted: member 1 failed after 2 restarts within 600s (maxRestartsPerMember 2)" (no next
replacement; WaitTimeout waiting for next_pod).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Eep, Operators
from kubernetes import client

from eep_contract.v1alpha1 import GROUP, PLURAL, VERSION, Labels
from eep_localcluster import procs
from eep_localcluster.layout import Layout
from eep_testkit import crs

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.mooncake,
    pytest.mark.mooncake_faults,
    pytest.mark.timeout(300),
]

try:
    from eep_contract.exitcodes import JOINER_REGISTRATION_HOLD_S
except ImportError:  # the contract of the "before" run (0076d16) has no name for it yet
    JOINER_REGISTRATION_HOLD_S = 30.0

NAME = "joindeath"
REGISTERED = "simulated weight load"
"""What a rank logs once its groups exist (so it is registered with Mooncake) and before it joins."""


def _worker_rbac(api: Any, ns: str) -> None:
    """The chart's worker ServiceAccount and read-only Role (charts/.../worker-rbac.yaml): workers follow
    their CR's status.membership."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    meta = {"name": crs.WORKER_SA, "namespace": ns}
    core.create_namespaced_service_account(ns, {"metadata": meta})
    rule = {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch"]}
    rbac.create_namespaced_role(ns, {"metadata": meta, "rules": [rule]})
    rbac.create_namespaced_role_binding(
        ns,
        {
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": crs.WORKER_SA},
            "subjects": [{"kind": "ServiceAccount", "name": crs.WORKER_SA, "namespace": ns}],
        },
    )


def _pod_pids(state: Path, node: str, uid: str) -> list[int]:
    """The process-group leaders the process node started for pod `uid` that still run."""
    try:
        pids = [int(x) for x in (Layout(state).node(node).pod(uid) / "pids").read_text().split()]
    except OSError:
        return []
    return [p for p in pids if procs.is_ours(p, state)]


def _kill_pod(state: Path, pod: dict[str, Any]) -> float:
    """SIGKILL every process of `pod` (as a crashed container); returns the wall-clock time of the kill."""
    node, uid = pod["spec"]["nodeName"], pod["metadata"]["uid"]
    pids = _pod_pids(state, node, uid)
    assert pids, f"no process of pod {pod['metadata']['name']} ({uid}) on {node}"
    t = time.time()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    return t


def _log(state: Path, pod: dict[str, Any]) -> str:
    pod_dir = Layout(state).node(pod["spec"]["nodeName"]).pod(pod["metadata"]["uid"])
    return "".join(p.read_text(errors="replace") for p in sorted(pod_dir.glob("*.log")))


def _member_pods(eep: Eep, index: int) -> list[dict[str, Any]]:
    return [p for p in eep.pods(NAME) if p["metadata"]["labels"].get(Labels.MEMBER) == str(index)]


def _created(pod: dict[str, Any]) -> float:
    return datetime.fromisoformat(pod["metadata"]["creationTimestamp"].replace("Z", "+00:00")).timestamp()


def _at(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_retry_after_a_death_inside_the_join_waits_out_the_registration_hold(  # noqa: PLR0917
    local_cluster: Any, kube: Any, namespace: str, eep: Eep, operators: Operators, wait_for: Any
) -> None:
    _worker_rbac(kube, namespace)
    cr = crs.from_example(
        NAME,
        nodes=2,
        recovery={
            "backoffInitialSeconds": 0.5,
            "backoffMaxSeconds": 1,
            "maxRestartsPerMember": 2,
            "rejoinTimeoutSeconds": 120,
        },
    )
    # Groups exist (the rank is registered) this long before it joins: the window to kill it inside its join.
    crs.engine_container(cr)["env"] = [{"name": "EEP_WARMUP_DELAY_S", "value": "6"}]
    eep.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, cr)
    operators.start()
    state = local_cluster.state

    def describe() -> str:
        return eep.describe(NAME) + "\n" + operators.logs()

    phases: set[str] = set()

    def running() -> bool:
        st = eep.status(NAME)
        phases.add(st.get("phase", ""))
        return eep.running(NAME) and st["membership"]["activeRanks"] == [0, 1]

    wait_for(running, 150, describe, interval=1.0)
    first = eep.pod(NAME, 1)
    assert first is not None
    _kill_pod(state, first)

    joiner: dict[str, Any] = {}

    def joining_and_registered() -> bool:
        st = eep.status(NAME)
        phases.add(st.get("phase", ""))
        m = st["members"][1]
        pod = next((p for p in _member_pods(eep, 1) if p["metadata"]["uid"] == m.get("podUid")), None)
        if m.get("state") != "Joining" or pod is None or pod["metadata"]["uid"] == first["metadata"]["uid"]:
            return False
        joiner.update(pod)
        return REGISTERED in _log(state, pod)

    wait_for(joining_and_registered, 90, describe, interval=0.2)
    time.sleep(1.5)  # the coordinator sees its links and holds it Healthy
    assert eep.member(NAME, 1).get("state") == "Joining", describe()
    death = _kill_pod(state, joiner)
    dead = {first["metadata"]["uid"], joiner["metadata"]["uid"]}

    retry: dict[str, Any] = {}
    next_restart: list[float] = []

    def next_pod() -> bool:
        st = eep.status(NAME)
        phases.add(st.get("phase", ""))
        m = st["members"][1]
        at = _at(m.get("nextRestartTime"))
        if at is not None and at > death - 1:
            next_restart.append(at)
        pod = next((p for p in _member_pods(eep, 1) if p["metadata"]["uid"] not in dead), None)
        if pod is None:
            return False
        retry.update(pod)
        return True

    wait_for(next_pod, 90, describe, interval=0.2)
    # creationTimestamp has whole seconds: allow one.
    after = _created(retry) - death
    assert after >= JOINER_REGISTRATION_HOLD_S - 1, (
        f"next replacement created {after:.1f}s after the joiner's death, want >= "
        f"{JOINER_REGISTRATION_HOLD_S - 1:g}s\n{describe()}"
    )
    assert next_restart and max(next_restart) - death >= JOINER_REGISTRATION_HOLD_S - 1, (next_restart, death)

    def recovered() -> bool:
        st = eep.status(NAME)
        phases.add(st.get("phase", ""))
        m = st["members"][1]
        return (
            st.get("phase") == "Running"
            and m.get("state") == "Healthy"
            and m.get("podUid") == retry["metadata"]["uid"]
            and st["membership"]["activeRanks"] == [0, 1]
        )

    wait_for(recovered, 90, describe, interval=0.5)
    st = eep.status(NAME)
    assert "Failed" not in phases, (phases, describe())
    assert st.get("groupRestarts", 0) == 0, st
    assert st["members"][1]["restarts"] <= 2, st["members"][1]
