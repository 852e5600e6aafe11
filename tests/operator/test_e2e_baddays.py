"""End to end on the local control plane: the operator on a real cluster's bad days (issue 13, scenarios 1,
2, 3, 4, 5 and 8). A node agent frozen or killed while its pods' processes live on, the status wiped, a pod
stuck Terminating behind a finalizer, a member dying after the cluster gave up, and pods that look like
members but are not this CR's.

A `Recorder` (baddays_helpers.py) samples pods and status while each fault lasts; its checks are the issue's
invariants (epoch never decreases, never two live incarnations of one rank, no fresh-start pod beside serving
members), so a test fails at the first sample that breaks one, with the time it happened.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from baddays_helpers import (
    Check,
    Recorder,
    Sample,
    answers,
    extra_node,
    kill_pod_processes,
    move_member,
    pod_pids,
    recovery_fields,
)
from conftest import STANDIN, Eep, Operators
from test_e2e_recovery import container_cmd, wait_running

from eep_contract.v1alpha1 import GROUP, PLURAL, VERSION, Labels
from eep_testkit.agents import running_agents, signal_agent

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

PORT = 18080
"""The stand-ins' engine port (conftest.cluster_manifest)."""
BLIP_S = 25.0
"""How long a node agent stays frozen: past the controller-manager's 15 s grace (the Node goes NotReady),
short of the operator's default `nodeLostGraceSeconds` (30 s)."""


def _uids(eep: Eep, name: str, ignore: str = "") -> dict[int, str]:
    """Member index -> uid of its pod, from the pods themselves (but the pod named `ignore`)."""
    return {
        int(p["metadata"]["labels"][Labels.MEMBER]): p["metadata"]["uid"]
        for p in eep.pods(name)
        if p["metadata"]["name"] != ignore
    }


def _untouched(baseline: dict[int, str], ignore: str = "") -> Check:
    """Every member keeps the pod it had: none deleted, none replaced, no second pod beside it (but the pod
    named `ignore`)."""

    def check(s: Sample) -> list[str]:
        out = []
        for i, uid in baseline.items():
            mine = [p for p in s.pods if p.member == i and p.name != ignore]
            for p in mine:
                if p.uid != uid:
                    out.append(
                        f"member {i}: another pod {p.name} ({p.uid}, join={p.join}) beside/after {uid}"
                    )
                elif p.deleting:
                    out.append(f"member {i}: its pod {p.name} ({uid}) is being deleted")
            if not any(p.uid == uid for p in mine):
                out.append(f"member {i}: its pod {uid} is gone")
        return out

    return check


def _single_pod(index: int, uid: str) -> Check:
    """No other pod of member `index` than `uid` (while that pod's process may still serve)."""

    def check(s: Sample) -> list[str]:
        return [
            f"member {index}: a second pod {p.name} ({p.uid}, join={p.join}) beside {uid}"
            for p in s.pods
            if p.member == index and p.uid != uid
        ]

    return check


def _epoch_not_below(floor: int) -> Check:
    def check(s: Sample) -> list[str]:
        e = s.epoch()
        return [] if e is None or e >= floor else [f"epoch went back to {e} (was {floor})"]

    return check


def _no_fresh_pod_beside_serving(known: set[str]) -> Check:
    """No pod without the join flag is created while another member pod runs."""

    def check(s: Sample) -> list[str]:
        return [
            f"fresh-start pod {p.name} ({p.uid}, no join flag) created beside serving pods"
            for p in s.pods
            if p.uid not in known and not p.join and any(q.running and q.uid != p.uid for q in s.pods)
        ]

    return check


def _wait_or_violation(
    wait_for: Callable[..., Any],
    rec: Recorder,
    done: Callable[[], bool],
    timeout: float,
    describe: Callable[[], str],
) -> None:
    """Wait until `done()` or the recorder saw a violation, then fail on the violations."""
    wait_for(lambda: bool(rec.violations) or done(), timeout, describe)
    assert not rec.violations, "\n".join(rec.violations)


def _hold(rec: Recorder, seconds: float) -> None:
    """Let `seconds` pass (less if a violation shows up), then fail on the violations."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not rec.violations:
        time.sleep(0.2)
    rec.wait_sample()
    assert not rec.violations, "\n".join(rec.violations)


def _node_ready(eep: Eep, node: str) -> bool:
    n: Any = eep.core.read_node(node)
    return any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])


def _condition(st: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((c for c in st.get("conditions") or [] if c.get("type") == ctype), None)


def _all_answer(eep: Eep, name: str) -> list[str]:
    """The member pods whose stand-in does not answer /ready."""
    return [
        p["metadata"]["name"]
        for p in eep.pods(name)
        if not answers((p.get("status") or {}).get("podIP") or "0.0.0.0", PORT)
    ]


@pytest.fixture
def node_name(eep: Eep) -> str:
    return f"eep-node-x{eep.ns[-4:]}"


@pytest.fixture
def describe(eep: Eep, operators: Operators) -> Callable[[str], Callable[[], str]]:
    def make(name: str) -> Callable[[], str]:
        return lambda: eep.describe(name) + "\n" + operators.logs()

    return make


# ---- 1. a node blip restarts nothing ----


@pytest.fixture
def frozen(local_cluster: Any) -> Iterator[list[str]]:
    """Nodes whose agent the test SIGSTOPs; SIGCONT at the end whatever happened."""
    nodes: list[str] = []
    try:
        yield nodes
    finally:
        for n in nodes:
            with contextlib.suppress(LookupError, ProcessLookupError):
                signal_agent(local_cluster.state, n, signal.SIGCONT)


def _blip(  # noqa: PLR0917
    eep: Eep,
    wait_for: Callable[..., Any],
    local_cluster: Any,
    frozen: list[str],
    nodes: list[str],
    name: str,
    describe: Callable[[], str],
) -> None:
    """Freeze `nodes`' agents for BLIP_S, thaw them, and check that nothing was restarted."""
    before = eep.status(name)
    baseline = _uids(eep, name)
    restarts = [m["restarts"] for m in before["members"]]
    with Recorder(
        eep, name, checks=[_untouched(baseline), _epoch_not_below(before["membership"]["epoch"])]
    ) as rec:
        stopped = time.monotonic()
        for n in nodes:
            signal_agent(local_cluster.state, n, signal.SIGSTOP)
            frozen.append(n)
        wait_for(lambda: not any(_node_ready(eep, n) for n in nodes), 40, describe)  # the blip is seen
        _hold(rec, max(3.0, stopped + BLIP_S - time.monotonic()))
        for n in nodes:
            signal_agent(local_cluster.state, n, signal.SIGCONT)
        wait_for(lambda: all(_node_ready(eep, n) for n in nodes), 40, describe)
        _hold(rec, 6)
    st = eep.status(name)
    assert st["phase"] == "Running" and st["groupRestarts"] == 0, describe()
    assert [m["restarts"] for m in st["members"]] == restarts
    assert _uids(eep, name) == baseline
    assert _all_answer(eep, name) == []


def test_node_blip_restarts_nothing(  # noqa: PLR0917
    eep: Eep,
    operators: Operators,
    make_cluster: Any,
    wait_for: Any,
    local_cluster: Any,
    frozen: list[str],
    node_name: str,
    describe: Any,
) -> None:
    """Member 1 alone on a node whose agent is frozen for 25 s (the Node goes NotReady, the stand-in serves
    on): no member is replaced, no group restart.

    Before the fix: ``AssertionError: +16.6s: member 1: its pod eep-1 (...) is being deleted`` (NodeLost at
    the first reconcile that saw the Node NotReady).
    """
    with extra_node(local_cluster, eep.core, node_name):
        eep.core.patch_node(node_name, {"spec": {"unschedulable": True}})
        operators.start()
        name = make_cluster(nodes=3, **recovery_fields(terminatingTimeoutSeconds=3))
        wait_running(eep, wait_for, name, operators)
        move_member(eep, wait_for, name, index=1, node=node_name, describe=describe(name))
        assert eep.member(name, 1)["node"] == node_name and eep.member(name, 0)["node"] != node_name
        _blip(eep, wait_for, local_cluster, frozen, [node_name], name, describe(name))


def test_control_plane_partition_restarts_nothing(  # noqa: PLR0917
    eep: Eep,
    operators: Operators,
    make_cluster: Any,
    wait_for: Any,
    local_cluster: Any,
    frozen: list[str],
    describe: Any,
) -> None:
    """Every node agent frozen for 25 s (to the control plane every node is NotReady at once, while the
    data plane serves): nothing is restarted.

    Before the fix: ``AssertionError: +18.2s: member 0: its pod eep-0 (...) is being deleted``, members 1
    and 2 likewise (a group restart: member 0 NodeLost).
    """
    operators.start()
    name = make_cluster(nodes=3, **recovery_fields(terminatingTimeoutSeconds=3))
    wait_running(eep, wait_for, name, operators)
    nodes = running_agents(local_cluster.state)
    assert nodes, "no node agent runs"
    _blip(eep, wait_for, local_cluster, frozen, nodes, name, describe(name))


# ---- 2. two copies of one rank ----


def test_dead_agent_with_a_live_rank_is_unreachable_not_replaced(  # noqa: PLR0917
    eep: Eep,
    operators: Operators,
    make_cluster: Any,
    wait_for: Any,
    local_cluster: Any,
    node_name: str,
    kubectl: Any,
    describe: Any,
) -> None:
    """Member 2 on a node whose agent is SIGKILLed: its stand-in lives on. Without evidence that its ranks are
    gone the operator reports it Unreachable and creates no second pod; once the node is tainted out of
    service (and the process is gone, as a shutdown does) the member is replaced with the join flag.

    Before the fix: ``AssertionError: +19.8s: member 2: a second pod eep-2 (..., join=True) beside ...`` (the
    old pod force-deleted after terminatingTimeoutSeconds and replaced while its process still serves).
    """
    with extra_node(local_cluster, eep.core, node_name):
        eep.core.patch_node(node_name, {"spec": {"unschedulable": True}})
        operators.start()
        name = make_cluster(nodes=3, **recovery_fields(terminatingTimeoutSeconds=3, nodeLostGraceSeconds=10))
        wait_running(eep, wait_for, name, operators)
        move_member(eep, wait_for, name, index=2, node=node_name, describe=describe(name))
        baseline = _uids(eep, name)
        old = eep.pod(name, 2)
        assert old is not None and old["spec"]["nodeName"] == node_name
        old_uid, old_ip = old["metadata"]["uid"], old["status"]["podIP"]
        pids = pod_pids(local_cluster.state, node_name, old_uid)
        assert pids, "no process recorded for member 2's pod"
        restarts = [m["restarts"] for m in eep.status(name)["members"]]

        checks = [_untouched({0: baseline[0], 1: baseline[1]}), _single_pod(2, old_uid)]
        with Recorder(eep, name, checks=checks) as rec:
            signal_agent(local_cluster.state, node_name, signal.SIGKILL)
            time.sleep(1)
            assert pod_pids(local_cluster.state, node_name, old_uid) == pids
            assert answers(old_ip, PORT), "the stand-in died with its agent"

            def reported() -> bool:
                st = eep.status(name)
                cond = _condition(st, "MembersUnreachable") or {}
                warned = any(
                    e["reason"] == "MemberUnreachable" and e["type"] == "Warning" for e in eep.events(name)
                )
                return bool(
                    st["members"][2].get("unreachableSince")
                    and cond.get("status") == "True"
                    and node_name in cond.get("message", "")
                    and warned
                )

            _wait_or_violation(wait_for, rec, reported, 75, describe(name))
            _hold(rec, 5)  # still no second pod while the old rank may serve
            assert answers(old_ip, PORT)
            assert eep.member(name, 2)["state"] != "Failed", describe(name)()

        # Evidence the Kubernetes way: the node is shut down (its processes gone) and tainted out of service.
        kill_pod_processes(local_cluster.state, node_name, old_uid)
        kubectl("taint", "node", node_name, "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute")
        wait_for(
            lambda: eep.running(name) and eep.member(name, 2).get("podUid") not in (None, old_uid),
            90,
            describe(name),
        )
        st = eep.status(name)
        assert st["groupRestarts"] == 0
        assert [m["restarts"] for m in st["members"]][:2] == restarts[:2]
        pod = eep.pod(name, 2)
        assert pod is not None and "--rejoin" in container_cmd(pod)
        assert {i: u for i, u in _uids(eep, name).items() if i != 2} == {0: baseline[0], 1: baseline[1]}
        cond = _condition(st, "MembersUnreachable")
        assert cond is None or cond["status"] == "False", cond


# ---- 3. memory lost ----


def test_status_wiped_is_rebuilt_without_going_back(  # noqa: PLR0917
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any, kubectl: Any, describe: Any
) -> None:
    """The status cleared after one replacement: the operator rebuilds it from its pods. The epoch never
    goes below what it was, no pod is deleted or created, and an Event says the status was rebuilt.

    Before the fix: ``AssertionError: +0.9s: epoch went back to 1 (was 6)`` and ``+0.9s: member 1: its pod
    eep-1 (...) is being deleted`` (to be recreated without the join flag).
    """
    operators.start()
    name = make_cluster(nodes=3)
    wait_running(eep, wait_for, name, operators)
    old = eep.exit_member(name, 1)
    wait_for(
        lambda: eep.running(name) and eep.member(name, 1).get("podUid") not in (None, old),
        40,
        describe(name),
    )
    st = eep.status(name)
    epoch = st["membership"]["epoch"]
    baseline = _uids(eep, name)
    checks = [
        _epoch_not_below(epoch),
        _untouched(baseline),
        _no_fresh_pod_beside_serving(set(baseline.values())),
    ]
    with Recorder(eep, name, checks=checks) as rec:
        wipe = ("--subresource=status", "--type=merge", "-p", '{"status":null}')
        kubectl("-n", eep.ns, "patch", "eep", name, *wipe)

        def rebuilt() -> bool:
            said = any("rebuil" in f"{e['reason']} {e['message']}".lower() for e in eep.events(name))
            return said and eep.running(name) and eep.status(name)["membership"]["epoch"] >= epoch

        _wait_or_violation(wait_for, rec, rebuilt, 40, describe(name))
        _hold(rec, 4)
    st = eep.status(name)
    assert st["phase"] == "Running" and st["groupRestarts"] == 0
    assert {m["index"]: m["podUid"] for m in st["members"]} == baseline
    assert st["membership"]["activeRanks"] == [0, 1, 2, 3, 4, 5]


# ---- 4. a pod stuck Terminating on a healthy node ----


def test_pod_stuck_terminating_on_a_healthy_node_is_reported(  # noqa: PLR0917
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any, kubectl: Any, describe: Any
) -> None:
    """Member 1's pod is held by a finalizer when its stand-in exits: after terminatingTimeoutSeconds a
    Warning Event `PodStuckTerminating` and the condition `Stalled` name the pod and the finalizer; once the
    finalizer is removed the member is replaced and `Stalled` turns False.

    Before the fix: ``WaitTimeout: timed out after 20s waiting for reported`` (member 1 stays Failed beside
    its pod Terminating, no Event, no condition).
    """
    hold = "example.com/hold"
    operators.start()
    name = make_cluster(nodes=3, **recovery_fields(terminatingTimeoutSeconds=3))
    wait_running(eep, wait_for, name, operators)
    pod = f"{name}-1"
    kubectl(
        "-n",
        eep.ns,
        "patch",
        "pod",
        pod,
        "--type=merge",
        "-p",
        json.dumps({"metadata": {"finalizers": [hold]}}),
    )
    try:
        old = eep.exit_member(name, 1)

        def reported() -> bool:
            events = [
                e for e in eep.events(name) if e["reason"] == "PodStuckTerminating" and e["type"] == "Warning"
            ]
            cond = _condition(eep.status(name), "Stalled") or {}
            return bool(
                any(pod in e["message"] and hold in e["message"] for e in events)
                and cond.get("status") == "True"
                and pod in cond.get("message", "")
                and hold in cond.get("message", "")
            )

        wait_for(reported, 3 + 17, describe(name))
    finally:
        kubectl("-n", eep.ns, "patch", "pod", pod, "--type=json", "-p",
                '[{"op":"remove","path":"/metadata/finalizers"}]', check=False)  # fmt: skip
    wait_for(
        lambda: eep.running(name) and eep.member(name, 1).get("podUid") not in (None, old),
        40,
        describe(name),
    )
    st = eep.status(name)
    cond = _condition(st, "Stalled")
    assert cond is not None and cond["status"] == "False", cond
    assert st["groupRestarts"] == 0 and st["members"][1]["restarts"] == 1


# ---- 5. frozen after Failed ----


def test_failed_cluster_keeps_reporting(
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any, describe: Any
) -> None:
    """With the budget spent (phase Failed) a later death of member 2 is still observed and reported: member
    2 Failed, its ranks out of `activeRanks`, a Warning Event; but no pod is created.

    Before the fix: ``WaitTimeout: timed out after 20s waiting for reported`` (member 2 stays Healthy,
    `activeRankCount` 4: ranks 4 and 5 still active).
    """
    operators.start()
    name = make_cluster(nodes=3, maxRestartsPerMember=0)
    wait_running(eep, wait_for, name, operators)
    eep.exit_member(name, 1)
    wait_for(lambda: eep.status(name).get("phase") == "Failed", 30, describe(name))
    before = {p["metadata"]["uid"] for p in eep.pods(name)}
    warned_before = len(
        [e for e in eep.events(name) if e["type"] == "Warning" and "[member 2]" in e["message"]]
    )
    eep.exit_member(name, 2)

    def reported() -> bool:
        st = eep.status(name)
        warned = [e for e in eep.events(name) if e["type"] == "Warning" and "[member 2]" in e["message"]]
        return (
            st["members"][2]["state"] == "Failed"
            and not {4, 5} & set(st["membership"]["activeRanks"])
            and len(warned) > warned_before
        )

    wait_for(reported, 20, describe(name))
    time.sleep(3)
    st = eep.status(name)
    assert st["phase"] == "Failed"
    assert {p["metadata"]["uid"] for p in eep.pods(name)} <= before, (
        "a pod was created after the cluster failed"
    )
    assert st["membership"]["activeRanks"] == [0, 1]


# ---- 8. pods that are not ours ----

STUBBORN = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + STANDIN
"""The stand-in, deaf to SIGTERM: a pod deleted by the garbage collector lingers Terminating for its grace
period, as an engine that takes a while to shut down does."""


def test_recreated_cluster_does_not_adopt_the_old_pods(
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any, describe: Any
) -> None:
    """The CR deleted in the background and created again at once (same name): the new CR never counts the old
    CR's pods (still Terminating under the garbage collector) as its members; it starts its own pods once they
    are gone, with no group restart.

    Before the fix: ``assert st["groupRestarts"] == 0`` fails: the garbage collector's deletions of the old
    pods were counted as the new CR's failures (``MemberPodDeleted: pod eep-0 was deleted by someone else``
    for members 0-2) and the group restarted.
    """
    operators.start()
    stubborn: dict[str, Any] = {
        "command": ["python3", "-c", STUBBORN],
        "pod": {"terminationGracePeriodSeconds": 5},
    }
    name = make_cluster(nodes=3, **stubborn)
    wait_running(eep, wait_for, name, operators)
    old_uid = eep.cr(name)["metadata"]["uid"]
    old_pods = set(_uids(eep, name).values())

    def not_adopted(s: Sample) -> list[str]:
        if s.cr_uid in (None, old_uid):
            return []
        out = [
            f"the new CR counts the old CR's pod {uid} as member {i}"
            for i, uid in s.member_uids().items()
            if uid in old_pods
        ]
        new = [p.name for p in s.pods if p.owner_uid == s.cr_uid]
        left = [p.name for p in s.pods if p.owner_uid == old_uid]
        if new and left:
            out.append(f"new pods {sorted(new)} beside the old CR's {sorted(left)}")
        return out

    with Recorder(eep, name, checks=[not_adopted]) as rec:
        eep.custom.delete_namespaced_custom_object(
            GROUP, VERSION, eep.ns, PLURAL, name, propagation_policy="Background"
        )

        def gone() -> bool:
            try:
                return bool(eep.cr(name)["metadata"]["uid"] != old_uid)
            except Exception as e:
                return getattr(e, "status", None) == 404

        wait_for(gone, 30, describe(name))
        make_cluster(nodes=3, **stubborn)
        new_uid = eep.cr(name)["metadata"]["uid"]
        assert any(p.owner_uid == old_uid for p in rec.samples[-1].pods), "the old pods went too fast to test"

        def fresh() -> bool:
            pods = eep.pods(name)
            owners = {o["uid"] for p in pods for o in p["metadata"].get("ownerReferences") or []}
            return eep.running(name) and owners == {new_uid} and len(pods) == 3

        _wait_or_violation(wait_for, rec, fresh, 60, describe(name))
    st = eep.status(name)
    assert st["groupRestarts"] == 0 and all(m["restarts"] == 0 for m in st["members"]), describe(name)()
    assert not {m.get("podUid") for m in st["members"]} & old_pods


def test_copied_pod_is_not_a_member(
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any, describe: Any
) -> None:
    """A copy of member 1's pod (same labels and annotations, no controller ownerReference: what
    `kubectl debug --copy-to` makes) runs and exits: the real member 1 is never touched.

    Before the fix: ``AssertionError: +0.5s: member 1 is recorded as pod ... (the copy)``.
    """
    operators.start()
    name = make_cluster(nodes=3)
    wait_running(eep, wait_for, name, operators)
    baseline = _uids(eep, name)
    core: Any = eep.core  # raw dicts in, typed models out
    real = eep.pod(name, 1)
    assert real is not None
    copy_name = f"{name}-1-copy"
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": copy_name,
            "labels": real["metadata"].get("labels") or {},
            "annotations": real["metadata"].get("annotations") or {},
        },
        "spec": {k: v for k, v in real["spec"].items() if k != "nodeName"},
    }

    def copy_status() -> Any:
        return core.read_namespaced_pod(copy_name, eep.ns).status

    def statused_as_real(s: Sample) -> list[str]:
        uid = s.member_uids().get(1)
        return [] if uid in (None, baseline[1]) else [f"member 1 is recorded as pod {uid} (the copy)"]

    with Recorder(eep, name, checks=[statused_as_real, _untouched(baseline, ignore=copy_name)]) as rec:
        core.create_namespaced_pod(eep.ns, body)
        wait_for(lambda: answers(copy_status().pod_ip or "0.0.0.0", PORT), 30, describe(name))
        _hold(rec, 3)
        assert answers(copy_status().pod_ip, PORT, "/exit/1")  # answers, then exits
        wait_for(lambda: copy_status().phase == "Failed" or bool(rec.violations), 20, describe(name))
        _hold(rec, 6)
    st = eep.status(name)
    assert st["phase"] == "Running" and st["members"][1]["restarts"] == 0, describe(name)()
    assert _uids(eep, name, ignore=copy_name) == baseline, describe(name)()
