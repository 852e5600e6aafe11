"""Table-driven tests of `plan()`: failure signals, member state machine, backoff, budgets, group restarts."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from operator_builders import exited, make_spec, observed, t
from operator_sim import InvariantError, World, check_moves

from eep_contract.v1alpha1 import (
    ConditionStatus,
    ConditionType,
    ElasticEPClusterSpec,
    ElasticEPClusterStatus,
    MemberState,
    Phase,
)
from eep_operator.core import actions as A
from eep_operator.core import podspec, revision
from eep_operator.core.conditions import get_condition
from eep_operator.core.members import Move
from eep_operator.core.observe import Observed, PodObs
from eep_operator.core.planner import backoff_seconds, plan

S = MemberState


def running(spec: ElasticEPClusterSpec) -> World:
    """A world whose cluster reached Running (every member Healthy, incarnation 1)."""
    w = World(spec, ["n0", "n1"])
    w.settle()
    assert w.status.phase == Phase.RUNNING
    return w


def with_pod(obs: Observed, member: int, new: PodObs | None) -> Observed:
    pods = tuple(p for p in obs.pods if p.member != member) + ((new,) if new is not None else ())
    return replace(obs, pods=pods)


def member_pod(obs: Observed, member: int) -> PodObs:
    return next(p for p in obs.pods if p.member == member)


def kinds(p: A.Plan, kind: type) -> list:
    return [a for a in p.actions if isinstance(a, kind)]


# ------------------------------------------------------------------------------------------ failure signals

SIGNALS = [
    ("container exit 137", lambda p: exited(p, 137), "ContainerExit", 137, True),
    (
        "container exit 0",
        lambda p: replace(exited(p, 0, "Completed"), phase="Succeeded"),
        "ContainerExit",
        0,
        True,
    ),
    (
        "phase Failed",
        lambda p: replace(p, phase="Failed", running=False, ready=False),
        "PodFailed",
        None,
        True,
    ),
    ("evicted", lambda p: replace(p, phase="Failed", evicted=True, reason="Evicted"), "Evicted", None, True),
    (
        "deleted by a user",
        lambda p: replace(p, deleting=True, deletion_started=t(100)),
        "PodDeleted",
        None,
        False,
    ),
    ("pod gone", lambda p: None, "PodDeleted", None, False),
    (
        "deleted, then SIGTERM",
        lambda p: replace(exited(p, 143), deleting=True, deletion_started=t(100)),
        "PodDeleted",
        143,
        False,
    ),
    ("node out of service", lambda p: replace(p, node="n-oos"), "NodeLost", None, True),
    ("node deleted", lambda p: replace(p, node="n-gone"), "NodeLost", None, True),
]
VOLUNTARY = {"evicted"}
"""Signals that are not crashes: no backoff (`maxEvictionsPerMember`)."""


@pytest.mark.parametrize(
    ("name", "mutate", "reason", "code", "deletes"), SIGNALS, ids=[s[0] for s in SIGNALS]
)
def test_failure_signal_marks_member_failed(name, mutate, reason, code, deletes) -> None:
    spec = make_spec()
    w = running(spec)
    before = w.status
    obs = w.observed()
    oos = replace(obs.nodes["n0"], name="n-oos", ready=False, out_of_service=True)
    obs = replace(obs, nodes={**obs.nodes, "n-oos": oos})
    victim = member_pod(obs, 2)
    obs = with_pod(obs, 2, mutate(victim))
    p = plan(spec, before, obs, w.now)
    m = p.status.members[2]
    assert m.state == S.FAILED
    assert m.last_exit is not None and m.last_exit.exit_code == code and m.last_exit.pod_uid == victim.uid
    backoff = 0 if name in VOLUNTARY else 1
    assert m.failed_time == w.now and m.next_restart_time == w.now + timedelta(seconds=backoff)
    assert A.RecordFailure(reason) in p.actions
    assert any(
        isinstance(a, A.EmitEvent) and a.reason == f"Member{reason}" and a.member == 2 for a in p.actions
    )
    assert [r for r in range(8) if r not in p.status.membership.active_ranks] == [4, 5]
    assert p.status.membership.epoch == before.membership.epoch + 1
    assert p.status.phase == Phase.DEGRADED
    deletes_seen = [a.uid for a in p.actions if isinstance(a, A.DeletePod | A.ForceDeletePod)]
    assert deletes_seen == ([victim.uid] if deletes else [])
    assert not kinds(p, A.CreatePod)
    # Other members are untouched: survivors never leave activeRanks unless they fail.
    assert all(x.state == S.HEALTHY for x in p.status.members if x.index != 2)


def test_not_ready_healthy_pod_is_not_a_failure() -> None:
    spec = make_spec()
    w = running(spec)
    obs = w.observed()
    obs = with_pod(obs, 1, replace(member_pod(obs, 1), ready=False))
    p = plan(spec, w.status, obs, w.now)
    assert p.status.members[1].state == S.HEALTHY
    assert p.status.membership == w.status.membership


# ------------------------------------------------------------------------------------------ member recovery


def failed_world(spec: ElasticEPClusterSpec, member: int = 1) -> World:
    w = running(spec)
    w.kill(member)
    w.reconcile()
    assert w.status.members[member].state == S.FAILED
    return w


def test_backoff_then_replacement_with_join_flag() -> None:
    spec = make_spec()
    w = failed_world(spec)
    w.tick()  # the kubelet removes the deleted pod
    assert "c-1" not in w.pods
    w.advance(0.5)
    p = w.reconcile()
    assert not kinds(p, A.CreatePod)
    assert p.requeue_after == pytest.approx(0.5)
    w.advance(0.5)
    p = w.reconcile()
    (create,) = kinds(p, A.CreatePod)
    assert create.join and create.member == 1 and create.incarnation == 2
    assert "--rejoin" in create.manifest["spec"]["containers"][0]["command"]
    assert create.manifest["metadata"]["annotations"]["elasticep.io/join"] == "true"
    m = p.status.members[1]
    assert (m.state, m.restarts, m.incarnation, m.pod_uid) == (S.RESTARTING, 1, 2, None)
    assert A.RecordMemberRestart(1) in p.actions
    assert p.status.phase == Phase.RECOVERING


def test_failed_member_waits_for_its_old_pod_to_go() -> None:
    spec = make_spec(maxUnavailableMembers=2)
    w = running(spec)
    assert w.pods["c-1"].node == "n1"
    w.user_delete(1)
    p = w.reconcile()
    assert p.status.members[1].state == S.FAILED  # deleted by someone else
    w.agent_down("n1")  # before its kubelet finished the deletion
    w.tick()
    w.advance(5)  # backoff over, but the old pod is still Terminating on the lost node
    p = w.reconcile()
    assert not kinds(p, A.CreatePod)
    assert not kinds(p, A.DeletePod | A.ForceDeletePod)  # no evidence that its processes stopped


def test_lost_node_is_unreachable_not_failed() -> None:
    """A NotReady node (a kubelet blip, an agent that died while its workers run) says nothing about the
    member's ranks: no failure, no deletion, no replacement, however long, until there is evidence."""
    spec = make_spec(maxUnavailableMembers=2, nodeLostGraceSeconds=20)
    w = running(spec)
    uids = {p.member: p.uid for p in w.pods.values()}
    w.agent_down("n1")  # members 1 and 3
    p = w.reconcile()
    assert [m.state for m in p.status.members] == [S.HEALTHY] * 4
    assert not kinds(p, A.DeletePod | A.ForceDeletePod | A.CreatePod)
    assert p.status.members[1].unreachable_since == w.now
    unreachable = next(c for c in p.status.conditions if c.type == "MembersUnreachable")
    assert unreachable.status == "False"  # within the grace: nothing to report yet
    for _ in range(40):
        w.advance(5)
        p = w.reconcile()
        assert not kinds(p, A.DeletePod | A.ForceDeletePod | A.CreatePod)
    unreachable = next(c for c in p.status.conditions if c.type == "MembersUnreachable")
    assert (
        unreachable.status == "True"
        and "member 1" in unreachable.message
        and "member 3" in unreachable.message
    )
    assert {p.member: p.uid for p in w.pods.values()} == uids
    assert p.status.group_restarts == 0 and p.status.membership.active_ranks == list(range(8))
    w.node_up("n1")
    p = w.reconcile()
    assert p.status.members[1].unreachable_since is None
    assert next(c for c in p.status.conditions if c.type == "MembersUnreachable").status == "False"


@pytest.mark.parametrize("evidence", ["out-of-service", "node deleted", "member 0 says not live"])
def test_lost_node_with_evidence_is_replaced(evidence: str) -> None:
    spec = make_spec(maxUnavailableMembers=2)
    w = running(spec)
    w.agent_down("n1")
    w.reconcile()
    if evidence == "out-of-service":
        w.taint_out_of_service("n1")
    elif evidence == "node deleted":
        w.delete_node("n1")
    obs = w.observed()
    if evidence == "member 0 says not live":
        obs = replace(obs, live_ranks=frozenset({0, 1, 4, 5}))
    p = plan(spec, w.status, obs, w.now)
    assert [p.status.members[i].state for i in (1, 3)] == [S.FAILED, S.FAILED]
    assert sorted(a.member for a in kinds(p, A.ForceDeletePod)) == [1, 3]
    assert p.status.members[1].last_exit is not None and p.status.members[1].last_exit.reason == "NodeLost"
    assert p.status.group_restarts == 0


def test_restarting_to_joining_to_healthy() -> None:
    spec = make_spec()
    w = failed_world(spec)
    w.tick()
    w.advance(1)
    w.reconcile()  # creates the replacement
    epoch = w.status.membership.epoch
    w.tick()  # replacement Running, not yet Ready (not admitted)
    p = w.reconcile()
    assert p.status.members[1].state == S.JOINING
    assert p.status.membership.joining_ranks == [2, 3]
    assert p.status.membership.epoch == epoch + 1
    assert 2 not in p.status.membership.active_ranks
    w.tick()  # admitted -> Ready
    w.advance(2)
    p = w.reconcile()
    m = p.status.members[1]
    assert m.state == S.HEALTHY and m.last_recovery_seconds == pytest.approx(3.0)
    assert p.status.membership.joining_ranks == [] and p.status.membership.active_ranks == list(range(8))
    assert p.status.membership.epoch == epoch + 2
    assert p.status.phase == Phase.RUNNING and p.status.last_recovery_seconds == pytest.approx(3.0)
    (rec,) = kinds(p, A.RecordRecovery)
    assert rec.result == "Succeeded" and rec.seconds == pytest.approx(3.0)


def test_joining_needs_a_published_joining_state_before_healthy() -> None:
    """A replacement already Ready when first seen still goes through Joining (survivors must admit it)."""
    spec = make_spec()
    w = failed_world(spec)
    w.tick()
    w.advance(1)
    w.reconcile()
    pod_ = w.pods["c-1"]
    pod_.phase, pod_.running, pod_.ready, pod_.node = "Running", True, True, "n0"
    p = w.reconcile()
    assert p.status.members[1].state == S.JOINING
    p = w.reconcile()
    assert p.status.members[1].state == S.HEALTHY


@pytest.mark.parametrize(("n", "seconds"), [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 8.0), (500, 8.0)])
def test_backoff_grows_and_is_capped(n: int, seconds: float) -> None:
    assert backoff_seconds(make_spec(), n) == seconds


def test_flapping_member_backoff_grows_then_budget_exhausted() -> None:
    spec = make_spec(maxRestartsPerMember=2)
    w = running(spec)
    delays = []
    for _ in range(2):
        w.kill(1)
        w.reconcile()
        m = w.status.members[1]
        assert m.next_restart_time is not None
        delays.append((m.next_restart_time - w.now).total_seconds())
        w.settle()
    assert delays == [1.0, 2.0]
    w.kill(1)
    p = w.reconcile()
    assert p.status.phase == Phase.FAILED
    ready = get_condition(p.status.conditions, ConditionType.READY)
    assert (
        ready is not None
        and ready.status == ConditionStatus.FALSE
        and ready.reason == "RestartBudgetExhausted"
    )
    assert A.RecordRecovery(result="Failed") in p.actions
    assert any(isinstance(a, A.EmitEvent) and a.reason == "RestartBudgetExhausted" for a in p.actions)
    assert not kinds(p, A.CreatePod)
    w.advance(100)
    p = w.reconcile()
    assert not [a for a in p.actions if isinstance(a, A.KUBE_ACTIONS)]


def test_restarts_outside_the_window_do_not_count() -> None:
    spec = make_spec(maxRestartsPerMember=1, restartWindowSeconds=10)
    w = running(spec)
    w.kill(1)
    w.settle()
    w.advance(11)
    w.kill(1)
    p = w.reconcile()
    assert p.status.phase == Phase.DEGRADED


def test_replacement_never_ready_times_out_and_is_retried() -> None:
    spec = make_spec(rejoinTimeoutSeconds=5)
    w = failed_world(spec)
    w.tick()
    w.advance(1)
    w.reconcile()
    w.tick()
    w.hang(1)
    w.reconcile()
    assert w.status.members[1].state == S.JOINING
    w.advance(4)
    assert w.reconcile().status.members[1].state == S.JOINING
    w.advance(2)
    p = w.reconcile()
    m = p.status.members[1]
    assert m.state == S.FAILED and m.last_exit is not None and m.last_exit.reason == "JoinTimeout"
    assert A.RecordFailure("JoinTimeout") in p.actions
    assert kinds(p, A.DeletePod)
    assert m.failed_time == failed_world_time(w)  # the recovery clock keeps running from the first failure
    w.settle()
    assert w.status.members[1].restarts == 2


def failed_world_time(w: World):
    return w.status.recovery_start_time


# ------------------------------------------------------------------------------------------ group restarts


def test_member_zero_failure_restarts_the_group() -> None:
    spec = make_spec()
    w = running(spec)
    w.kill(0)
    epoch = w.status.membership.epoch
    p = w.reconcile()
    assert A.RecordGroupRestart("MemberZeroLost") in p.actions
    assert all(m.state == S.PENDING and m.incarnation == 2 for m in p.status.members)
    assert p.status.phase == Phase.RESTARTING and p.status.group_restarts == 1
    assert p.status.membership.active_ranks == [] and p.status.membership.epoch == epoch + 1
    assert [a.member for a in kinds(p, A.ForceDeletePod)] == [0]  # its container ended: no grace needed
    assert sorted(a.member for a in kinds(p, A.DeletePod)) == [1, 2, 3]
    assert p.status.members[0].last_exit is not None and p.status.members[0].last_exit.exit_code == 137
    assert not kinds(p, A.CreatePod)
    w.tick()  # old pods go
    w.advance(1)
    p = w.reconcile()
    creates = kinds(p, A.CreatePod)
    assert sorted(c.member for c in creates) == [0, 1, 2, 3] and not any(c.join for c in creates)
    assert all("--rejoin" not in c.manifest["spec"]["containers"][0]["command"] for c in creates)
    w.settle()
    assert w.status.phase == Phase.RUNNING and w.status.last_recovery_seconds is not None


def test_fresh_pods_wait_for_every_old_pod() -> None:
    spec = make_spec()
    w = running(spec)
    w.agent_down("n1")  # members 1 and 3 are on n1
    w.kill(0)
    p = w.reconcile()
    assert A.RecordGroupRestart("MemberZeroLost") in p.actions
    w.tick()
    w.advance(5)
    p = w.reconcile()
    assert not kinds(p, A.CreatePod)  # pods on the lost node are still Terminating
    w.advance(60)
    p = w.reconcile()
    assert not kinds(p, A.CreatePod | A.ForceDeletePod)  # no evidence their processes stopped
    w.taint_out_of_service("n1")
    p = w.reconcile()
    assert sorted(a.member for a in kinds(p, A.ForceDeletePod)) == [1, 3]
    assert not kinds(p, A.CreatePod)
    p = w.reconcile()
    assert len(kinds(p, A.CreatePod)) == 4


@pytest.mark.parametrize(("max_unavailable", "group"), [(1, True), (2, False)])
def test_two_members_failing_at_once(max_unavailable: int, group: bool) -> None:
    spec = make_spec(maxUnavailableMembers=max_unavailable)
    w = running(spec)
    w.kill(1)
    w.kill(2)
    p = w.reconcile()
    assert (A.RecordGroupRestart("TooManyUnavailable") in p.actions) == group
    if not group:
        assert [m.state for m in p.status.members] == [S.HEALTHY, S.FAILED, S.FAILED, S.HEALTHY]
        assert p.status.membership.active_ranks == [0, 1, 6, 7]
    w.settle()
    assert w.status.phase == Phase.RUNNING
    assert [c.join for c in w.created[-2:]] == [not group, not group]


def test_group_restart_mode_restarts_the_group_on_any_failure() -> None:
    spec = make_spec(mode="GroupRestart")
    w = running(spec)
    w.kill(3)
    p = w.reconcile()
    assert A.RecordGroupRestart("GroupRestartMode") in p.actions
    w.settle()
    assert w.status.phase == Phase.RUNNING and not any(c.join for c in w.created)


def test_group_restart_budget() -> None:
    spec = make_spec(mode="GroupRestart", maxRestartsPerMember=2)
    w = running(spec)
    for _ in range(2):
        w.kill(1)
        w.settle()
        assert w.status.phase == Phase.RUNNING
    w.kill(1)
    p = w.reconcile()
    assert p.status.phase == Phase.FAILED
    assert any(isinstance(a, A.EmitEvent) and a.reason == "RestartBudgetExhausted" for a in p.actions)


def test_failure_during_group_start_restarts_the_group() -> None:
    spec = make_spec()
    w = World(spec, ["n0"])
    w.reconcile()
    w.tick()
    w.hang(3)
    w.tick()
    w.reconcile()
    assert [m.state for m in w.status.members] == [S.HEALTHY, S.HEALTHY, S.HEALTHY, S.PENDING]
    w.kill(2)
    p = w.reconcile()
    assert A.RecordGroupRestart("TooManyUnavailable") in p.actions


def test_failed_cluster_resumes_on_spec_change() -> None:
    """Failed members enter the group restart through Failed -> Pending (in the table). The planner used to
    write Failed -> Healthy by hand first; World.reconcile's check then failed with `InvariantError: member
    1: move Healthy -> Pending while it was Failed: a state was written past the transition table`."""
    spec = make_spec(maxRestartsPerMember=0)
    w = running(spec)
    w.kill(1)
    assert w.reconcile().status.phase == Phase.FAILED
    w.generation += 1
    p = w.reconcile()
    assert p.status.phase == Phase.RESTARTING
    w.settle()
    assert w.status.phase == Phase.RUNNING


def test_a_state_written_past_the_table_is_caught() -> None:
    """The simulation's check (run at every step) sees a member state that no move of the plan explains."""
    spec = make_spec()
    w = running(spec)
    w.kill(1)
    p = plan(spec, w.status, w.observed(), w.now)
    assert p.moves == (Move(1, S.HEALTHY, S.FAILED),)
    check_moves(w.status, p)
    forged = p.status.model_copy(deep=True)
    forged.members[1].state = S.RESTARTING  # Healthy -> Restarting: not in the table, and no move says so
    with pytest.raises(InvariantError, match="past the transition table"):
        check_moves(w.status, replace(p, status=forged))
    with pytest.raises(InvariantError, match="past the transition table"):
        check_moves(w.status, replace(p, moves=(Move(1, S.FAILED, S.HEALTHY),)))


# ------------------------------------------------------------------------------------------ start, resume


def test_first_plan_creates_service_and_fresh_pods() -> None:
    spec = make_spec(nodes=3)
    p = plan(spec, ElasticEPClusterStatus(), observed(service=False), t(0))
    kube = [a for a in p.actions if isinstance(a, A.EnsureService | A.CreatePod)]
    assert isinstance(kube[0], A.EnsureService)  # the members' DNS names exist before the members
    creates = kinds(p, A.CreatePod)
    assert [c.member for c in creates] == [0, 1, 2] and not any(c.join for c in creates)
    assert [m.first_rank for m in p.status.members] == [0, 2, 4]
    assert p.status.phase == Phase.PENDING and p.status.world_size == 6 and p.status.membership.epoch == 0


def test_resume_after_crash_between_status_write_and_pod_create() -> None:
    """The status says Restarting (write-ahead) but the pod was never created: create it, same incarnation."""
    spec = make_spec()
    w = failed_world(spec)
    w.tick()
    w.advance(1)
    obs = w.observed()
    p = plan(spec, w.status, obs, w.now)  # "crash": the create is never executed
    (first,) = kinds(p, A.CreatePod)
    p2 = plan(spec, p.status, obs, w.now + timedelta(seconds=3))
    (again,) = kinds(p2, A.CreatePod)
    assert (again.incarnation, again.join) == (first.incarnation, True)
    assert p2.status.members[1].restarts == 1


@pytest.mark.parametrize("state", [S.RESTARTING, S.JOINING])
def test_resume_in_each_recovery_state(state: MemberState) -> None:
    """A new operator with only the status continues where the old one stood."""
    spec = make_spec()
    w = failed_world(spec)
    w.tick()
    w.advance(1)
    w.reconcile()
    if state == S.JOINING:
        w.tick()
        w.reconcile()
    assert w.status.members[1].state == state
    wire = w.status.to_wire()  # what the API server stored
    w.status = ElasticEPClusterStatus.model_validate(wire)
    w.settle()
    assert w.status.phase == Phase.RUNNING and w.status.members[1].restarts == 1


def test_stale_pod_of_old_incarnation_is_deleted() -> None:
    spec = make_spec()
    w = running(spec)
    obs = w.observed()
    stale = replace(member_pod(obs, 1), incarnation=0, uid="stale")
    obs = with_pod(obs, 1, stale)
    p = plan(spec, w.status, obs, w.now)
    assert [a.uid for a in kinds(p, A.DeletePod)] == ["stale"]


def test_condition_times_change_only_on_flip() -> None:
    spec = make_spec()
    w = running(spec)
    ready = get_condition(w.status.conditions, ConditionType.READY)
    w.advance(30)
    w.reconcile()
    again = get_condition(w.status.conditions, ConditionType.READY)
    assert ready is not None and again is not None
    assert again.last_transition_time == ready.last_transition_time
    w.kill(2)
    w.reconcile()
    flipped = get_condition(w.status.conditions, ConditionType.READY)
    assert (
        flipped is not None
        and flipped.status == ConditionStatus.FALSE
        and flipped.last_transition_time == w.now
    )


def test_quiet_plan_is_a_fixed_point() -> None:
    spec = make_spec()
    w = running(spec)
    p = plan(spec, w.status, w.observed(), w.now + timedelta(seconds=5))
    assert p.status == w.status
    assert not [a for a in p.actions if not isinstance(a, A.EmitEvent)] and not p.actions


@pytest.mark.parametrize("loss", ["wiped", "restored from before the replacement"])
def test_a_lost_status_is_rebuilt_from_the_pods(loss: str) -> None:
    """The status is the operator's only memory. Before the fix, a status wiped after one replacement (or a
    backup restored from before it) sent the epoch back (4 -> 1) and deleted the replaced member's pod as an
    older incarnation, then created it again without the join flag beside serving members."""
    spec = make_spec()
    w = running(spec)
    old = w.status.model_copy(deep=True)
    w.kill(1)
    w.settle()
    seen = w.status.membership.epoch
    uids = {p.member: p.uid for p in w.pods.values()}
    assert w.status.members[1].incarnation == 2
    w.status = ElasticEPClusterStatus() if loss == "wiped" else old
    p = w.reconcile()
    assert not kinds(p, A.CreatePod | A.DeletePod | A.ForceDeletePod)
    assert p.status.membership.epoch > seen
    assert [m.state for m in p.status.members] == [S.HEALTHY] * 4
    assert [m.incarnation for m in p.status.members] == [1, 2, 1, 1]
    assert p.status.members[1].restarts >= 1 and len(p.status.members[1].restart_times) == 1
    assert any(isinstance(a, A.EmitEvent) and a.reason == "StatusRebuilt" for a in p.actions)
    w.settle()
    assert {p.member: p.uid for p in w.pods.values()} == uids and w.status.group_restarts == 0


def test_a_lost_status_with_a_member_missing_rejoins_it() -> None:
    """A member whose pod is gone while the others serve comes back as a replacement (join flag), never as a
    fresh-start pod."""
    spec = make_spec()
    w = running(spec)
    w.status = ElasticEPClusterStatus()
    del w.pods["c-2"]
    p = w.reconcile()
    assert p.status.members[2].state == S.RESTARTING
    (create,) = kinds(p, A.CreatePod)
    assert create.member == 2 and create.join
    w.settle()
    assert [c.join for c in w.created if c.member == 2][-1] is True
    assert w.status.group_restarts == 0


def edited(spec: ElasticEPClusterSpec, **changes: Any) -> ElasticEPClusterSpec:
    wire = spec.model_dump(mode="json", by_alias=True)
    for path, value in changes.items():
        node = wire
        *parents, leaf = path.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return ElasticEPClusterSpec.model_validate(wire)


def test_a_replacement_runs_the_groups_revision_not_an_edited_spec() -> None:
    """Scenario 6 of the bad days: before the fix, a spec edited while a member waited in backoff (a new
    image, another coordinator port) gave a replacement rendered from the new spec, which cannot join the
    group that runs the old one (`assert 'img:v2' == 'img'` on the replacement's image)."""
    spec = make_spec(backoffInitialSeconds=5.0)
    w = running(spec)
    w.kill(1)
    w.reconcile()
    w.spec = edited(spec, image="img:v2", elasticEP__coordinatorPort=29999)
    w.generation += 1
    p = w.reconcile()
    pending = next(c for c in p.status.conditions if c.type == "UpdatePending")
    assert pending.status == "True" and "image" in pending.message and "coordinatorPort" in pending.message
    assert any(isinstance(a, A.EmitEvent) and a.reason == "SpecChangePending" for a in p.actions)
    w.tick()
    w.advance(5)
    p = w.reconcile()
    (create,) = kinds(p, A.CreatePod)
    container = create.manifest["spec"]["containers"][0]
    assert container["image"] == "img"
    assert "29999" not in json.dumps(create.manifest)
    assert p.status.members[1].revision == p.status.group_revision != p.status.update_revision
    w.settle()
    assert w.status.group_restarts == 0


def test_raising_restart_generation_applies_the_update_without_spending_the_budget() -> None:
    spec = make_spec(maxRestartsPerMember=0)
    w = running(spec)
    w.spec = edited(spec, image="img:v2", restartGeneration=1)
    w.generation += 1
    p = w.reconcile()
    assert A.RecordGroupRestart("UserRequested") in p.actions
    assert p.status.group_restart_times == [] and p.status.phase != Phase.FAILED
    w.settle()
    assert w.status.phase == Phase.RUNNING and w.status.group_revision == w.status.update_revision
    assert {c.manifest["spec"]["containers"][0]["image"] for c in w.created[-4:]} == {"img:v2"}
    assert next(c for c in w.status.conditions if c.type == "UpdatePending").status == "False"


def test_update_strategy_group_restart_applies_a_change_at_once() -> None:
    spec = edited(make_spec(), updateStrategy__type="GroupRestart")
    w = running(spec)
    w.spec = edited(spec, template__metadata__annotations={"example.com/x": "1"})
    w.generation += 1
    p = w.reconcile()
    assert A.RecordGroupRestart("SpecChanged") in p.actions
    w.settle()
    assert w.status.group_restarts == 1 and w.status.phase == Phase.RUNNING


def test_a_recovery_policy_change_is_not_a_new_revision() -> None:
    spec = make_spec()
    w = running(spec)
    before = w.status.group_revision
    w.spec = edited(spec, recovery__backoffInitialSeconds=9.0)
    w.generation += 1
    p = w.reconcile()
    assert p.status.update_revision == before == p.status.group_revision
    assert next(c for c in p.status.conditions if c.type == "UpdatePending").status == "False"


def test_the_service_follows_the_groups_revision() -> None:
    """Scenario 6: the Service was only created, never reconciled: a group restarted onto another coordinator
    port kept the old port in its Service, and a Service edited by hand stayed edited."""
    spec = make_spec(backoffInitialSeconds=5.0)
    w = running(spec)
    svc = podspec.render_service(spec, cluster="c", namespace="ns", uid="cr-uid")
    obs = replace(w.observed(), service_spec=svc["spec"])
    p = plan(spec, w.status, obs, w.now)
    assert not kinds(p, A.UpdateService)
    edited_by_hand = {**svc["spec"], "ports": [{"name": "http", "port": 1234}]}
    p = plan(spec, w.status, replace(obs, service_spec=edited_by_hand), w.now)
    (update,) = kinds(p, A.UpdateService)
    assert update.manifest["spec"]["ports"] == svc["spec"]["ports"]
    new = edited(spec, elasticEP__coordinatorPort=29999)
    # Under Manual the group (and so its Service) keeps the old port...
    p = plan(new, w.status, replace(obs, generation=2), w.now)
    assert not kinds(p, A.UpdateService)
    # ...until a group restart makes the new spec the group's.
    restart = edited(new, restartGeneration=1)
    p = plan(restart, w.status, replace(obs, generation=3), w.now)
    (update,) = kinds(p, A.UpdateService)
    assert 29999 in [port["port"] for port in update.manifest["spec"]["ports"]]


def test_the_join_clock_starts_when_a_waiting_replacement_is_scheduled() -> None:
    """An unschedulable replacement waits without a timeout; once bound to a node its `rejoinTimeoutSeconds`
    counts from then, not from its creation. Before: `JoinTimeout` at once, the moment it was scheduled."""
    spec = make_spec(rejoinTimeoutSeconds=8.0)
    w = failed_world(spec)
    w.tick()
    w.advance(1)
    w.reconcile()  # the replacement is created
    obs = w.observed()
    pod = member_pod(obs, 1)
    waiting = replace(
        pod, node=None, waiting_reason="Unschedulable", waiting_message="0/3 nodes are available"
    )
    p = plan(spec, w.status, with_pod(obs, 1, waiting), w.now + timedelta(seconds=60))
    assert p.status.members[1].state == S.RESTARTING and p.status.members[1].waiting_reason == "Unschedulable"
    later = w.now + timedelta(seconds=61)
    bound = replace(pod, phase="Running", running=True, scheduled=later)
    p = plan(spec, p.status, with_pod(obs, 1, bound), later + timedelta(seconds=2))
    assert p.status.members[1].state == S.JOINING and p.status.members[1].last_exit.reason != "JoinTimeout"
    p = plan(spec, p.status, with_pod(obs, 1, bound), later + timedelta(seconds=9))
    assert p.status.members[1].state == S.FAILED and p.status.members[1].last_exit.reason == "JoinTimeout"


@pytest.mark.parametrize("reason", ["SchedulingGated", "Unschedulable"])
def test_a_start_waiting_for_admission_is_not_a_failed_start(reason: str) -> None:
    """A gang Kueue has not admitted yet (every pod `SchedulingGated`, none bound) may wait for quota longer
    than `rejoinTimeoutSeconds`: no member fails, nothing is deleted, no budget is spent. Before the fix only
    `Unschedulable` stopped the clock: a gated start failed with `JoinTimeout` and the group restarted."""
    spec = make_spec(nodes=3, rejoinTimeoutSeconds=8.0)
    w = World(spec, ["n0", "n1"])
    p = w.reconcile()  # the start's pods are created
    assert len(kinds(p, A.CreatePod)) == 3
    obs = w.observed()
    gated = replace(
        obs,
        pods=tuple(
            replace(q, node=None, phase="Pending", running=False, waiting_reason=reason) for q in obs.pods
        ),
    )
    p = plan(spec, w.status, gated, w.now + timedelta(seconds=600))
    assert [m.state for m in p.status.members] == [S.PENDING] * 3
    assert not kinds(p, A.DeletePod | A.ForceDeletePod | A.CreatePod)
    assert p.status.group_restarts == 0 and {m.waiting_reason for m in p.status.members} == {reason}


def test_an_eviction_right_after_a_join_is_not_too_many_down() -> None:
    """Found by the soak: a drain's second eviction came the moment member 1's replacement got Ready (the
    PodDisruptionBudget counts it available), before the operator had moved member 1 to Healthy; the plan that
    saw both counted two members down and restarted the whole group (`GroupRestart (TooManyUnavailable)`)."""
    spec = make_spec(maxUnavailableMembers=1)
    w = failed_world(spec, member=1)
    w.tick()
    w.advance(1)
    w.reconcile()  # replacement created
    w.tick()
    w.reconcile()  # running: Joining
    assert w.status.members[1].state == S.JOINING
    w.tick()  # Ready (admitted)
    w.evict(2)
    p = w.reconcile()
    assert not any(isinstance(a, A.RecordGroupRestart) for a in p.actions)
    assert p.status.members[1].state == S.HEALTHY and p.status.members[2].state in (S.FAILED, S.RESTARTING)


def test_a_status_wipe_neither_restarts_the_group_nor_applies_a_pending_edit() -> None:
    """Found by a new user's review: the rebuild forgot `restartGeneration` (a wipe after any user restart
    restarted the whole group: `GroupRestart (UserRequested)`) and the group's spec (a wipe applied a pending
    edit: the next replacement ran `img:v2` beside a group running `img`)."""
    spec = make_spec()
    w = running(spec)
    w.edit_spec(restartGeneration=1)  # a user restart, applied
    w.settle()
    assert w.status.group_restarts == 1
    w.edit_spec(image="img:v2")  # an edit that waits (Manual)
    w.reconcile()
    w.wipe_status()
    p = w.reconcile()
    assert not any(isinstance(a, A.RecordGroupRestart) for a in p.actions)
    assert not kinds(p, A.DeletePod | A.ForceDeletePod | A.CreatePod)
    assert next(c for c in p.status.conditions if c.type == "UpdatePending").status == "True"
    w.kill(2)
    w.settle()  # the replacement must run the group's image (the world checks it)
    assert [c.manifest["spec"]["containers"][0]["image"] for c in w.created if c.join] == ["img"]


def test_the_admission_trigger_is_policy_not_a_revision() -> None:
    """Found by the clean-clone run: turning the SGLang admission trigger on was a new revision, so the
    running group kept it off and a replacement was never admitted (the chart's SGLang admission test)."""
    base = edited(make_spec(), engine__name="sglang", engine__sglang={"modelPath": "m", "version": "0.5.23"})
    on = edited(base, engine__sglang__admissionTrigger={"enabled": True})
    off = edited(base, engine__sglang__admissionTrigger={"enabled": False})
    assert revision.revision(on) == revision.revision(off)
    group = revision.pod_shaping(off)
    assert revision.with_policy(group, on).engine.sglang is not None
    assert revision.with_policy(group, on).engine.sglang.admission_trigger.enabled  # type: ignore[union-attr]


def test_a_pod_gone_from_a_cordoned_node_is_an_eviction() -> None:
    """Found by the clean-clone run: under load a drain's eviction finished before the operator saw the pod's
    DisruptionTarget condition, and the member was counted as a crash (`MemberPodDeleted ... disappeared`),
    spending `maxRestartsPerMember`."""
    spec = make_spec()
    w = running(spec)
    node = w.pods["c-1"].node
    assert node is not None
    del w.pods["c-1"]  # evicted and gone between two looks
    obs = w.observed()
    obs = replace(obs, nodes={**obs.nodes, node: replace(obs.nodes[node], unschedulable=True)})
    p = plan(spec, w.status, obs, w.now)
    m = p.status.members[1]
    assert m.last_exit is not None and m.last_exit.reason == "Evicted" and m.eviction_times == [w.now]
    assert m.state == S.RESTARTING and m.restart_times == []  # replaced at once, no crash budget spent
