"""Property tests: random event sequences through the planner and an in-memory world (operator_sim).

At every step `check_step` asserts: every member state change went through the transition table (the plan's
moves explain it); the epoch only grows (also across a wiped status); no member ever has two live processes
(`check_world`: a node whose agent died keeps its processes); no pod is created without the join flag
while any other member serves (or any old pod lives, or any process serves); a member never gets a second
pod while one exists (one recovery at a time); survivors stay in activeRanks unless they fail. At the end,
with no more faults, every member comes back Healthy or the CR is Failed (no member stays Failed forever).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from operator_builders import make_spec
from operator_sim import World, check_step

from eep_contract.v1alpha1 import ElasticEPClusterSpec, ElasticEPClusterStatus, Kueue, MemberState, Phase
from eep_operator.core.planner import plan

NODES = ["n0", "n1", "n2"]


def events(members: int) -> st.SearchStrategy[tuple[Any, ...]]:
    m = st.integers(0, members - 1)
    n = st.sampled_from(NODES)
    return st.one_of(
        st.tuples(st.just("kill"), m, st.sampled_from([0, 1, 137, 139])),
        st.tuples(st.just("delete"), m),
        st.tuples(st.just("evict"), m),
        st.tuples(st.just("hang"), m),
        st.tuples(st.just("node_down"), n),
        st.tuples(st.just("agent_down"), n),
        st.tuples(st.just("node_up"), n),
        st.tuples(st.just("out_of_service"), n),
        st.tuples(st.just("delete_node"), n),
        st.tuples(st.just("wipe_status")),
        st.tuples(st.just("edit_image"), st.integers(1, 3)),
        st.tuples(st.just("restart_generation")),
        st.tuples(st.just("tick")),
        st.tuples(st.just("advance"), st.floats(0.05, 20.0)),
        st.tuples(st.just("reconcile")),
        st.tuples(st.just("reconcile")),
        st.tuples(st.just("restart_operator")),
        st.tuples(st.just("lost_write")),
        st.tuples(st.just("crash_after_write")),
    )


def apply(w: World, ev: tuple[Any, ...]) -> None:
    kind = ev[0]
    if kind == "kill":
        w.kill(ev[1], ev[2])
    elif kind == "delete":
        w.user_delete(ev[1])
    elif kind == "evict":
        w.evict(ev[1])
    elif kind == "hang":
        w.hang(ev[1])
    elif kind == "node_down":
        w.node_down(ev[1])
    elif kind == "agent_down":
        w.agent_down(ev[1])
    elif kind == "node_up":
        w.node_up(ev[1])
    elif kind == "out_of_service":
        w.taint_out_of_service(ev[1])
    elif kind == "delete_node":
        w.delete_node(ev[1])
    elif kind == "wipe_status":
        w.wipe_status()
    elif kind == "edit_image":
        w.edit_spec(image=f"img:v{ev[1]}")
    elif kind == "restart_generation":
        w.edit_spec(restartGeneration=w.spec.restart_generation + 1)
    elif kind == "tick":
        w.tick()
    elif kind == "advance":
        w.advance(ev[1])
    elif kind == "reconcile":
        w.reconcile()
    elif kind == "restart_operator":
        # A new operator process knows only what the API server stored.
        w.status = ElasticEPClusterStatus.model_validate(w.status.to_wire())
    elif kind == "lost_write":
        plan(w.spec, w.status, w.observed(), w.now)  # a 409: neither status nor actions take effect
    elif kind == "crash_after_write":
        obs = w.observed()
        p = plan(w.spec, w.status, obs, w.now)
        check_step(w.status, p, obs)
        w.write_records(p.status)  # written before the status
        w.status = p.status  # status written, actions never run


def repair(w: World) -> None:
    """No more faults: every node is back (a deleted one registers again, a person lifts the taint)."""
    for node in NODES:
        w.nodes.setdefault(node, False)
        w.out_of_service.discard(node)
        w.node_up(node)


SPECS = st.builds(
    lambda nodes, max_unavail, mode, max_restarts: make_spec(
        nodes=nodes,
        rpn=2,
        maxUnavailableMembers=min(max_unavail, nodes - 1),
        mode=mode,
        maxRestartsPerMember=max_restarts,
        rejoinTimeoutSeconds=15.0,
    ),
    st.integers(1, 5),
    st.integers(0, 3),
    st.sampled_from(["PerMember", "PerMember", "GroupRestart"]),
    st.integers(0, 6),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=SPECS, data=st.data())
def test_invariants_hold_under_random_events(spec: Any, data: st.DataObject) -> None:
    check_random_events(spec, data)


def check_random_events(spec: ElasticEPClusterSpec, data: st.DataObject) -> None:
    """From a running cluster, a random sequence of events, then repair: the epoch never went back and the
    cluster settles (every member Healthy and every rank active, or Failed); the simulation checks the
    invariants after every step."""
    w = World(spec, list(NODES))
    w.settle()  # start from a running cluster (the start itself is covered by settle's own checks)
    seq = data.draw(st.lists(events(spec.nodes), max_size=60))
    epochs = [w.status.membership.epoch]
    for ev in seq:
        apply(w, ev)
        if w.status.members:  # a status the operator wrote (not a wiped one): what workers read
            epochs.append(w.status.membership.epoch)
    repair(w)
    w.settle(max_steps=1000)
    epochs.append(w.status.membership.epoch)
    assert epochs == sorted(epochs)
    st_ = w.status
    assert st_.phase == Phase.FAILED or all(m.state == MemberState.HEALTHY for m in st_.members)
    if st_.phase != Phase.FAILED:
        assert st_.membership.active_ranks == list(range(spec.world_size))
        assert st_.membership.joining_ranks == []


def queued(spec: ElasticEPClusterSpec) -> ElasticEPClusterSpec:
    """The same spec with a Kueue LocalQueue in its template (gang admission): pods carry Kueue's finalizer in
    the simulation, so every deletion waits for the operator to release it."""
    template = {"metadata": {"labels": {Kueue.QUEUE_LABEL: "q"}}}
    return ElasticEPClusterSpec.model_validate(
        {**spec.model_dump(mode="json", by_alias=True), "template": template}
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=SPECS.map(queued), data=st.data())
def test_invariants_hold_for_a_queued_cluster(spec: Any, data: st.DataObject) -> None:
    """As above with gang admission: besides the invariants, the live member pods are always of one Kueue pod
    group (`check_world`), and no deletion stays held by Kueue's finalizer (the group settles)."""
    check_random_events(spec, data)


@settings(max_examples=100, deadline=None)
@given(spec=SPECS, data=st.data())
def test_start_from_nothing_reaches_running(spec: Any, data: st.DataObject) -> None:
    w = World(spec, list(NODES))
    for ev in data.draw(st.lists(events(spec.nodes), max_size=20)):
        apply(w, ev)
    repair(w)
    w.settle(max_steps=1000)
    assert w.done()


def test_a_pod_lost_before_it_was_seen_is_not_recreated_beside_serving_members() -> None:
    """Found by the property test above. Two members start; member 0's pod is deleted before the operator
    ever saw it (no uid in the status) while member 1's pod becomes Ready. Before the fix the planner created
    a fresh member-0 pod beside the serving member 1: `InvariantError: fresh pod for member 0 while others
    serve: Pending epoch=1 0:Pending/i1 1:Healthy/i1`. Now the start counts as failed and the group
    restarts."""
    spec = make_spec(
        nodes=2,
        rpn=2,
        maxUnavailableMembers=0,
        mode="PerMember",
        maxRestartsPerMember=1,
        rejoinTimeoutSeconds=15.0,
    )
    w = World(spec, list(NODES))
    for ev in [("reconcile",), ("tick",), ("delete", 0), ("tick",)]:
        apply(w, ev)
    w.settle(max_steps=1000)  # checks the invariants at every step
    assert w.done()
    assert w.status.group_restarts == 1


@pytest.mark.parametrize("fault", ["agent_down", "node_down"])
def test_a_lost_node_never_gives_a_member_two_live_incarnations(fault: str) -> None:
    """An agent that dies with its workers alive (`agent_down`) looks to the API server exactly like a node
    that powered off (`node_down`). Before the fix the operator force-deleted the pods there after
    `terminatingTimeoutSeconds` and created same-name replacements: `InvariantError: member 1 has 2 live
    incarnations: c-1/i2, c-1/i1`. Now it waits for evidence: member 0's view of the group says the
    powered-off member's ranks are gone (it is replaced) and the live agent-less member's are not (it serves
    on, untouched)."""
    spec = make_spec(nodes=3, rpn=2, maxUnavailableMembers=2, terminatingTimeoutSeconds=3.0)
    w = World(spec, list(NODES))
    w.settle()
    node = w.pods["c-1"].node
    assert node is not None
    getattr(w, fault)(node)
    for _ in range(60):  # 5 minutes of reconciles and kubelet ticks
        w.reconcile()
        w.tick()
        w.advance(5.0)
    incarnations = {m.index: m.incarnation for m in w.status.members}
    assert incarnations == {0: 1, 1: 2 if fault == "node_down" else 1, 2: 1}
    assert w.status.group_restarts == 0
    w.node_up(node)
    w.settle(max_steps=1000)
    assert w.done() and w.status.group_restarts == 0


def test_a_status_lost_during_a_group_restart_waits_for_the_going_pods() -> None:
    """Found by the property test above. A group restart is under way (member 0's pod Terminating), the
    status is wiped, member 0's node agent dies (its process lives on). The first rebuild took the
    Terminating pod for member 0's current one and nothing for serving, and created a fresh member-1 pod:
    `InvariantError: fresh pod for member 1 beside serving processes ['c-0']`."""
    spec = make_spec(nodes=2, rpn=2, maxUnavailableMembers=0, mode="PerMember", maxRestartsPerMember=1)
    w = World(spec, list(NODES))
    w.settle()
    for ev in [("evict", 1), ("reconcile",), ("wipe_status",), ("agent_down", "n0"), ("reconcile",)]:
        apply(w, ev)
    repair(w)
    w.settle(max_steps=1000)  # checks the invariants at every step
    assert w.done()


def test_a_group_restart_whose_status_was_lost_is_carried_out() -> None:
    """Found by the property test above. A start loses member 0's pod, the image is edited, the operator
    decides a group restart (its record of the new spec written, its status written) and crashes before it
    deletes anything; then the status is lost. Before the fix the rebuilt status took the running member 1
    for a serving group and replaced member 0 from the record: `InvariantError: replacement of 0 runs img:v1,
    the group img`. Now the pods' revision (`elasticep.io/revision`) shows that the recorded restart never
    happened, and it is carried out."""
    spec = make_spec(
        nodes=2, rpn=2, maxUnavailableMembers=0, maxRestartsPerMember=1, rejoinTimeoutSeconds=15.0
    )
    w = World(spec, list(NODES))
    for ev in [
        ("reconcile",),
        ("tick",),
        ("delete", 0),
        ("edit_image", 1),
        ("crash_after_write",),
        ("wipe_status",),
    ]:
        apply(w, ev)
    repair(w)
    w.settle(max_steps=1000)
    assert w.done()
    assert {c.manifest["spec"]["containers"][0]["image"] for c in w.created[-2:]} == {"img:v1"}


def test_a_member_is_never_recreated_with_an_incarnation_it_had_after_the_status_and_pods_are_lost() -> None:
    """Found by the property test above (a clean-clone run of 2026-12-01). One member; two restart
    generations raise its incarnation to 3; the status is wiped and its last pod goes with nothing left to
    show its incarnation. Before the fix the planner started the group again with incarnation 1: `member 0
    recreated with an old incarnation 1`. Now the first incarnation is above the CR's incarnation floor (the
    highest incarnation a status named, recorded on the CR before that status)."""
    spec = make_spec(
        nodes=1,
        rpn=2,
        maxUnavailableMembers=0,
        mode="PerMember",
        maxRestartsPerMember=0,
        rejoinTimeoutSeconds=15.0,
    )
    w = World(spec, list(NODES))
    w.settle()
    events = [
        ("restart_generation",),
        ("kill", 0, 0),
        ("reconcile",),
        ("reconcile",),
        ("restart_generation",),
        ("reconcile",),
        ("wipe_status",),
        ("tick",),
    ]
    for ev in events:
        apply(w, ev)
    assert not w.pods and not w.status.members  # nothing left that shows the incarnation
    repair(w)
    w.settle(max_steps=1000)  # checks the invariants at every step, the incarnations among them
    assert w.done()
    assert w.status.members[0].incarnation > 3
