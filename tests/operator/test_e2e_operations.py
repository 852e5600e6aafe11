"""End to end: the operator process itself (crash and resume, two replicas, spec validation, a malformed
status, node loss)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import Eep, Operators
from test_e2e_recovery import container_cmd, wait_running

from eep_contract.v1alpha1 import GROUP, PLURAL, VERSION

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


@pytest.mark.parametrize("state", ["Failed", "Joining"])
def test_operator_killed_mid_recovery_resumes(
    state: str, eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any
) -> None:
    op = operators.start()
    # Long enough in each state to kill the operator there: backoff for Failed, a slow join for Joining.
    backoff = 4.0 if state == "Failed" else 0.5
    name = make_cluster(env={"STANDIN_JOIN_DELAY": "6"}, backoffInitialSeconds=backoff, backoffMaxSeconds=8)
    wait_running(eep, wait_for, name, operators)
    old = eep.exit_member(name, 2)
    wait_for(
        lambda: eep.member(name, 2).get("state") == state, 30, lambda: eep.describe(name) + operators.logs()
    )
    op.kill()
    operators.start()
    wait_for(
        lambda: eep.running(name) and eep.member(name, 2).get("podUid") not in (None, old),
        40,
        lambda: eep.describe(name) + operators.logs(),
    )
    st = eep.status(name)
    assert st["members"][2]["restarts"] == 1 and st["groupRestarts"] == 0
    pod = eep.pod(name, 2)
    assert pod is not None and "--rejoin" in container_cmd(pod)


def _created_pods(log: str) -> int:
    return log.count("created pod ")


def test_two_operators_only_one_acts(
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any
) -> None:
    a, b = operators.start(), operators.start()
    time.sleep(2)  # both running: one holds the Lease
    name = make_cluster()
    wait_running(eep, wait_for, name, operators)
    created = [_created_pods(p.log.read_text()) for p in (a, b)]
    assert sorted(created) == [0, 3], operators.logs()
    leader, standby = (a, b) if created[0] else (b, a)
    lease = eep.core.api_client.sanitize_for_serialization(
        __import__("kubernetes")
        .client.CoordinationV1Api(eep.core.api_client)
        .read_namespaced_lease(f"eep-{eep.ns}", eep.ns)
    )
    assert lease["spec"]["holderIdentity"].endswith(f"-{leader.proc.pid}")
    # The leader dies: the stand-by takes over within the lease duration and recovers a failure.
    leader.kill()
    old = eep.exit_member(name, 1)
    wait_for(
        lambda: eep.running(name) and eep.member(name, 1).get("podUid") not in (None, old),
        40,
        lambda: eep.describe(name) + operators.logs(),
    )
    assert _created_pods(standby.log.read_text()) == 1


def test_invalid_spec_update_is_rejected(eep: Eep, make_cluster: Any, kubectl: Any) -> None:
    name = make_cluster()
    for patch, message in [
        ('{"spec":{"nodes":5}}', "nodes is immutable"),
        ('{"spec":{"ranksPerNode":4}}', "ranksPerNode is immutable"),
        (
            '{"spec":{"recovery":{"maxUnavailableMembers":3}}}',
            "maxUnavailableMembers must be smaller than nodes",
        ),
        ('{"spec":{"recovery":{"mode":"Sometimes"}}}', "Unsupported value"),
    ]:
        with pytest.raises(AssertionError, match=message):
            kubectl("-n", eep.ns, "patch", "eep", name, "--type=merge", "-p", patch)
    spec = eep.cr(name)["spec"]
    assert (spec["nodes"], spec["ranksPerNode"], spec["recovery"]["maxUnavailableMembers"]) == (3, 2, 1)
    assert spec["recovery"].get("mode", "PerMember") == "PerMember"


def test_malformed_status_is_an_event_and_other_clusters_go_on(
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any
) -> None:
    """A status edited by hand into something the planner cannot act on (a Failed member without
    nextRestartTime; the schema allows it) costs that CR a ReconcileError Event, not the operator: the
    process lives, other CRs are reconciled, and the CR recovers once a person repairs its status.

    Before the fix: `WaitTimeout: timed out after 30s waiting for <lambda>` (no Event), the operator log
    full of `ERROR asyncio Task exception was never retrieved` with the planner's AssertionError."""
    bad = make_cluster("bad", nodes=2)
    body = eep.cr(bad)
    member = {"firstRank": 0, "rankCount": 2, "incarnation": 1}
    body["status"] = {
        "phase": "Degraded",
        "members": [{**member, "index": 0, "state": "Healthy"}, {**member, "index": 1, "state": "Failed"}],
    }
    eep.custom.replace_namespaced_custom_object_status(GROUP, VERSION, eep.ns, PLURAL, bad, body)
    op = operators.start()
    good = make_cluster("good", nodes=2)
    wait_running(eep, wait_for, good, operators)
    wait_for(lambda: "ReconcileError" in eep.reasons(bad), 30, lambda: eep.describe(bad) + operators.logs())
    event = next(e for e in eep.events(bad) if e["reason"] == "ReconcileError")
    assert event["type"] == "Warning" and event["message"].startswith("AssertionError"), event
    assert op.proc.poll() is None, operators.logs()
    assert "Traceback" in op.log.read_text()
    assert eep.status(bad)["members"][1]["state"] == "Failed" and not eep.pods(bad)
    # Repaired by a person (the status cleared): the next event or requeue starts the group afresh.
    body = eep.cr(bad)
    body["status"] = {}
    eep.custom.replace_namespaced_custom_object_status(GROUP, VERSION, eep.ns, PLURAL, bad, body)
    wait_running(eep, wait_for, bad, operators)


def test_deleting_the_cluster_removes_its_pods(
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any
) -> None:
    operators.start()
    name = make_cluster(nodes=2)
    wait_running(eep, wait_for, name, operators)
    eep.custom.delete_namespaced_custom_object("elasticep.io", "v1alpha1", eep.ns, "elasticepclusters", name)
    wait_for(lambda: not eep.pods(name), 60, lambda: eep.describe(name))
    assert not eep.core.list_namespaced_service(eep.ns).items


def test_node_lost_members_recovered_elsewhere(  # noqa: PLR0917
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any, local_cluster: Any, kubectl: Any
) -> None:
    extra = f"eep-node-x{eep.ns[-4:]}"
    assert local_cluster.run("start-node", extra) == 0
    try:
        operators.start()
        # Members go where the scheduler may put them: cordons steer them (replacements keep the group's
        # spec revision, so editing the template would not move them).
        kubectl("cordon", extra)
        name = make_cluster(nodes=3, maxUnavailableMembers=2)
        wait_running(eep, wait_for, name, operators)
        kubectl("cordon", "eep-node-0")
        kubectl("uncordon", extra)
        for i in (1, 2):
            old = eep.exit_member(name, i)
            wait_for(
                lambda i=i, old=old: (
                    eep.running(name) and eep.member(name, i).get("podUid") not in (None, old)
                ),
                30,
                lambda: eep.describe(name) + operators.logs(),
            )
        assert [eep.member(name, i)["node"] for i in (0, 1, 2)] == ["eep-node-0", extra, extra]
        kubectl("uncordon", "eep-node-0")
        assert local_cluster.run("stop-node", extra) == 0
        # A stopped node is only NotReady: its processes may live on, so the operator waits for evidence.
        # Kubernetes' non-graceful node shutdown taint is that evidence (a person or a tool says so).
        kubectl(
            "taint", "node", extra, "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute", "--overwrite"
        )
        t0 = time.monotonic()
        wait_for(
            lambda: (
                eep.running(name) and all(eep.member(name, i).get("node") == "eep-node-0" for i in (1, 2))
            ),
            90,
            lambda: eep.describe(name) + operators.logs(),
        )
        st = eep.status(name)
        assert [st["members"][i]["lastExit"]["reason"] for i in (1, 2)] == ["NodeLost", "NodeLost"]
        assert st["members"][0]["restarts"] == 0 and st["groupRestarts"] == 0
        assert "PodForceDeleted" in eep.reasons(name)
        print(f"node lost -> recovered in {time.monotonic() - t0:.1f}s")
    finally:
        kubectl("uncordon", "eep-node-0", check=False)
        local_cluster.run("stop-node", extra)
        kubectl("delete", "node", extra, "--ignore-not-found", check=False)
