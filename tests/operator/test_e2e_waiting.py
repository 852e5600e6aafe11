"""End to end: a replacement that waits is not a replacement that runs (issue #13, scenario 11).

A replacement whose container cannot start (a Secret it reads is gone: `CreateContainerConfigError`) or that
no node can take (`Unschedulable`) used to show nothing until `rejoinTimeoutSeconds`, then was deleted and
retried until the cluster was Failed; an unschedulable one spent the crash budget. Before the fix (the
operator of 0076d16, the process node of this change): `WaitTimeout: timed out after 15s waiting for
reported` (phase Recovering, no `waitingReason`, no `MemberWaiting` Event); and for the unschedulable
replacement `WaitTimeout: timed out after 20s waiting for <lambda>` with `MemberJoinTimeout: member 1 (pod
eep-1) failed: JoinTimeout: pod eep-1 not Ready within 8s` in the operator's log.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import Eep, Operators
from kubernetes import client
from test_e2e_recovery import wait_running

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def _secret(eep: Eep, value: str | None) -> None:
    if value is None:
        eep.core.delete_namespaced_secret("creds", eep.ns)
        return
    body = client.V1Secret(metadata=client.V1ObjectMeta(name="creds"), string_data={"token": value})
    eep.core.create_namespaced_secret(eep.ns, body)


def test_a_replacement_waiting_for_a_secret_is_reported_within_seconds(
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any
) -> None:
    _secret(eep, "t0")
    operators.start()
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]
    name = make_cluster(env=env, rejoinTimeoutSeconds=120)
    wait_running(eep, wait_for, name, operators)
    _secret(eep, None)  # the Secret is rotated away under the running group
    old = eep.exit_member(name, 1)
    t0 = time.monotonic()

    def reported() -> bool:
        m = eep.member(name, 1)
        warned = [e for e in eep.events(name) if e["reason"] == "MemberWaiting"]
        return m.get("waitingReason") == "CreateContainerConfigError" and bool(warned)

    wait_for(reported, 15, lambda: eep.describe(name) + operators.logs())
    assert time.monotonic() - t0 < 15
    m = eep.member(name, 1)
    assert 'secret "creds" not found' in m["waitingMessage"] and m.get("podUid") not in (None, old)
    _secret(eep, "t1")
    wait_running(eep, wait_for, name, operators)
    st = eep.status(name)
    assert st["members"][1]["restarts"] == 1 and st["groupRestarts"] == 0
    assert "waitingReason" not in st["members"][1] or st["members"][1]["waitingReason"] is None


def test_an_unschedulable_replacement_waits_without_spending_the_budget(
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any, kubectl: Any
) -> None:
    operators.start()
    name = make_cluster(rejoinTimeoutSeconds=8, maxRestartsPerMember=1)
    wait_running(eep, wait_for, name, operators)
    nodes = [
        n["metadata"]["name"]
        for n in eep.core.api_client.sanitize_for_serialization(eep.core.list_node().items)
    ]
    try:
        for node in nodes:
            kubectl("cordon", node)
        eep.exit_member(name, 1)
        wait_for(
            lambda: eep.member(name, 1).get("waitingReason") == "Unschedulable",
            20,
            lambda: eep.describe(name) + operators.logs(),
        )
        time.sleep(12)  # past rejoinTimeoutSeconds: waiting for capacity is not a failed join
        st = eep.status(name)
        assert st["phase"] != "Failed" and st["members"][1]["restarts"] == 1
        assert st["members"][1]["state"] == "Restarting", st["members"][1]
    finally:
        for node in nodes:
            kubectl("uncordon", node, check=False)
    wait_running(eep, wait_for, name, operators)
    st = eep.status(name)
    assert st["members"][1]["restarts"] == 1 and st["groupRestarts"] == 0
