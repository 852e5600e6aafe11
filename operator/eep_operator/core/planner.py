"""The operator's decision: `plan(spec, status, observed, now) -> Plan`. Pure: no I/O, no clock, no logging.

Called by `eep_operator.reconcile` on every event (CR, pod, node, timer, resume) with what it just observed;
level-triggered, so it recomputes everything from the status (the operator's memory) and the world.

Order of the status write and the actions. The executor writes the new status (compare-and-set on the CR's
resourceVersion) *before* it applies the actions. So the status is a write-ahead record: crash evidence
(`lastExit`) is stored before the pod is removed, a replacement's incarnation is stored before the pod is
created, and an operator that dies between the two finds the intent in the status and repeats the
(idempotent) action. A 409 means another writer got there first: the plan is dropped and recomputed.

Decisions, per member (state machine in `eep_operator.core.members`):
- Only pods whose controller ownerReference is this CR are members (`core.observe`); pods of a deleted CR of
  the same name hold their names until the garbage collector removes them (`Stalled` PreviousClusterPods).
- Failure signals on the member's current pod (the one whose `elasticep.io/incarnation` equals the member's
  `incarnation`): evicted; being deleted although we did not delete it; container terminated (any code:
  pods are `restartPolicy: Never`); phase Failed; gone although we had seen it; its node deleted or tainted
  out-of-service, or NotReady while member 0 reports its ranks not live (`gone_evidence`); not Ready within
  `rejoinTimeoutSeconds` of its binding to a node (not while it waits for capacity or a gang's admission).
- A NotReady node alone is not a failure: its kubelet cannot confirm anything, and the member's processes may
  still serve. The member is Unreachable (`unreachableSince`; past `nodeLostGraceSeconds` the
  `MembersUnreachable` condition), keeps its ranks, and its pod is never force-deleted, until there is
  evidence (above). So a node blip or a control-plane partition changes nothing, and no rank ever has two
  live incarnations.
- A failed member keeps its crash evidence in `lastExit`, leaves `activeRanks`, and waits out its backoff
  (`backoffInitialSeconds * 2^restarts-in-window`, capped at `backoffMaxSeconds`; at least Mooncake's
  registration hold after a death inside a join). Its pod is deleted (at once if every container has ended
  or its node is known gone, else gracefully); a pod stuck Terminating is force-deleted only on a node known
  gone, else reported (`Stalled` PodStuckTerminating). Once the pod name is free and the backoff is over, the
  replacement is created with the join flag (Restarting), rendered from the group's spec revision
  (`status.groupSpec`); when it runs, its ranks go to `joiningRanks` (Joining); when it is Ready, to
  `activeRanks` (Healthy).
- Evictions (a drain, a preemption) have their own budget (`maxEvictionsPerMember`), as does one join
  Mooncake refused (exit JoinRefused); a member that fails with `maxRestartsPerMember` restarts already used
  in `restartWindowSeconds` exhausts the budget: the CR goes to phase Failed and the operator stops acting
  (until the spec changes), but keeps observing and reporting.
- Whole-group restart instead of per-member recovery when: `recovery.mode` is GroupRestart; member 0 fails (it
  hosts Mooncake's coordinator); more than `maxUnavailableMembers` members would be down; or a member fails
  while the group is still starting (there is no running group to join). Every member gets a fresh pod
  without the join flag, created only after every old pod is gone and a backoff. Group restarts have the
  same budget (`maxRestartsPerMember` within the window). A raised `restartGeneration`, or a spec change
  under `updateStrategy: GroupRestart`, restarts the group without budget or backoff; the new spec becomes
  the group's revision.
- The epoch grows by one whenever `activeRanks`/`joiningRanks` change and on every group restart, never more
  than once per plan, and never goes below the CR's epoch floor. A status that does not describe the pods
  (wiped, or restored from an older copy) is rebuilt from them (`_rebuild`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from eep_contract.exitcodes import JOINER_REGISTRATION_HOLD_S, ExitCode, describe
from eep_contract.reasons import FailureReason, GroupRestartReason
from eep_contract.v1alpha1 import (
    Condition,
    ConditionStatus,
    ConditionType,
    ElasticEPClusterSpec,
    ElasticEPClusterStatus,
    ExitRecord,
    Membership,
    MemberState,
    MemberStatus,
    Phase,
    RecoveryMode,
    UpdateStrategyType,
)
from eep_operator.core import gang, members, pause, podspec, revision
from eep_operator.core.actions import (
    Action,
    CreatePod,
    DeletePod,
    EmitEvent,
    EnsurePodDisruptionBudget,
    EnsureService,
    ForceDeletePod,
    Plan,
    RecordFailure,
    RecordGroupRestart,
    RecordMemberRestart,
    RecordRecovery,
    ReleaseKueueFinalizer,
    UpdateService,
)
from eep_operator.core.conditions import get_condition, set_condition
from eep_operator.core.members import DOWN, Move
from eep_operator.core.observe import OUT_OF_SERVICE_TAINT, Observed, PodObs

S = MemberState


@dataclass(frozen=True)
class Failure:
    """A failure signal on a member's current pod, with the evidence to keep."""

    member: int
    reason: str
    exit: ExitRecord


def backoff_seconds(spec: ElasticEPClusterSpec, restarts_in_window: int) -> float:
    """Delay before the next replacement: initial * 2^n, capped at the maximum."""
    rec = spec.recovery
    # Cap the exponent: 2**64 seconds is already past any maximum, and floats overflow further out.
    return float(min(rec.backoff_max_seconds, rec.backoff_initial_seconds * 2 ** min(restarts_in_window, 64)))


def in_window(times: Iterable[datetime], now: datetime, window_s: float) -> list[datetime]:
    """The times within the last `window_s` seconds (the sliding budget window)."""
    start = now - timedelta(seconds=window_s)
    return [t for t in times if t > start]


def ranks(m: MemberStatus) -> list[int]:
    return list(range(m.first_rank, m.first_rank + m.rank_count))


def detect_failure(
    m: MemberStatus, pod: PodObs | None, observed: Observed, spec: ElasticEPClusterSpec, now: datetime
) -> Failure | None:
    """The failure signal on member `m`'s current pod, if any. Only for members with a live pod expected."""
    if m.state not in (S.PENDING, S.HEALTHY, S.RESTARTING, S.JOINING):
        return None

    def fail(reason: str, exit_reason: str, message: str, code: int | None = None) -> Failure:
        uid = pod.uid if pod is not None else m.pod_uid
        rec = ExitRecord(exit_code=code, reason=exit_reason, message=message[-4096:], time=now, pod_uid=uid)
        return Failure(member=m.index, reason=reason, exit=rec)

    if pod is None:
        if m.pod_uid is None:
            return None
        node = observed.nodes.get(m.node) if m.node else None
        if node is not None and node.out_of_service:
            # Gone with its node: deleted by the taint manager before the operator looked (the same loss as
            # a pod still seen on that node).
            return fail(
                FailureReason.NODE_LOST,
                FailureReason.NODE_LOST,
                f"pod {m.pod_name} ({m.pod_uid}) is gone; node {m.node} is tainted {OUT_OF_SERVICE_TAINT}",
            )
        if node is not None and node.unschedulable:
            # Gone before the operator saw its eviction (a fast drain): a pod that vanishes from a cordoned
            # node is taken for what `kubectl drain` does, an eviction, not a crash.
            return fail(
                FailureReason.EVICTED,
                FailureReason.EVICTED,
                f"pod {m.pod_name} ({m.pod_uid}) is gone from cordoned node {m.node}: taken for an eviction",
            )
        return fail(
            FailureReason.POD_DELETED,
            FailureReason.POD_DELETED,
            f"pod {m.pod_name} ({m.pod_uid}) disappeared",
        )
    if _node_lost(pod, observed):
        evidence = gone_evidence(m, pod, observed)
        if evidence is not None:
            return fail(FailureReason.NODE_LOST, FailureReason.NODE_LOST, evidence)
        # The node's kubelet cannot confirm anything now: a Terminating pod or a Ready condition the node
        # controller set to False says nothing about the member's processes, which may still serve. Only what
        # the kubelet reported before it went quiet (a terminated container, phase Failed) is a failure.
        if pod.terminated is None and pod.phase not in ("Failed", "Succeeded"):
            return None
    if pod.taint_deleted:
        return fail(
            FailureReason.NODE_LOST,
            FailureReason.NODE_LOST,
            f"pod {pod.name} was deleted by the taint manager: node {pod.node} carries a NoExecute taint",
        )
    if pod.evicted:
        return fail(
            FailureReason.EVICTED, FailureReason.EVICTED, pod.message or f"pod {pod.name} was evicted"
        )
    if pod.deleting:
        # Deleted by someone else (we delete only pods we no longer count as current). The kubelet's SIGTERM
        # may already show as a terminated container: the deletion is the cause, the exit code is evidence.
        code = pod.terminated.exit_code if pod.terminated is not None else None
        return fail(
            FailureReason.POD_DELETED,
            FailureReason.POD_DELETED,
            f"pod {pod.name} was deleted by someone else",
            code,
        )
    if pod.terminated is not None:
        t = pod.terminated
        meaning = describe(t.exit_code)
        message = t.message if meaning is None else f"worker exit {meaning}. {t.message}".strip()
        return fail(FailureReason.CONTAINER_EXIT, t.reason or "Terminated", message, t.exit_code)
    if pod.phase in ("Failed", "Succeeded"):
        return fail(
            FailureReason.POD_FAILED, pod.reason or pod.phase, pod.message or f"pod phase {pod.phase}"
        )
    if (
        not pod.ready
        and m.state != S.HEALTHY
        # Not bound to a node yet: it waits for the scheduler (capacity: Unschedulable) or for a gate (a
        # gang's admission: SchedulingGated), not for a join.
        and pod.node is not None
        and (since := _join_clock(pod)) is not None
        and (now - since).total_seconds() > spec.recovery.rejoin_timeout_seconds
    ):
        return fail(
            FailureReason.JOIN_TIMEOUT,
            FailureReason.JOIN_TIMEOUT,
            f"pod {pod.name} not Ready within {spec.recovery.rejoin_timeout_seconds:g}s",
        )
    return None


def _join_clock(pod: PodObs) -> datetime | None:
    """When the pod's `rejoinTimeoutSeconds` starts: its creation, or its binding to a node if that came
    later (time spent waiting for capacity is not time spent joining)."""
    if pod.created is None:
        return None
    return max(pod.created, pod.scheduled) if pod.scheduled is not None else pod.created


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _node_lost(pod: PodObs, observed: Observed) -> bool:
    """The pod is bound to a node that is gone, not Ready, or out of service."""
    if pod.node is None:
        return False
    node = observed.nodes.get(pod.node)
    return node is None or not node.ready or node.out_of_service


def gone_evidence(m: MemberStatus, pod: PodObs, observed: Observed) -> str | None:
    """Why the member's processes on a lost node are known to be gone, or None: the node object was
    deleted; it carries Kubernetes' out-of-service taint (non-graceful node shutdown); or member 0, asked
    while the node is lost, reports none of the member's ranks live, for a member that served (Healthy, or
    Failed since): a joining member's ranks are not live yet, so the group's view says nothing about it."""
    node = observed.nodes.get(pod.node) if pod.node else None
    if pod.node is not None and node is None:
        return f"node {pod.node} was deleted"
    if node is not None and node.out_of_service:
        return f"node {pod.node} is tainted {OUT_OF_SERVICE_TAINT}"
    rs = set(ranks(m))
    if (
        m.state in (S.HEALTHY, S.FAILED)
        and m.index != 0
        and observed.live_ranks is not None
        and not rs & observed.live_ranks
    ):
        return f"node {pod.node} is not Ready and member 0 reports ranks {sorted(rs)} not live"
    return None


@dataclass
class _Ctx:
    """Mutable scratch state of one `plan()` call; never escapes it."""

    spec: ElasticEPClusterSpec
    observed: Observed
    now: datetime
    status: ElasticEPClusterStatus
    actions: list[Action] = field(default_factory=list)
    bump_epoch: bool = False
    wakeups: list[float] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    stalls: list[tuple[str, str]] = field(default_factory=list)
    """(reason, message) of everything that keeps the operator from progress in this plan (`Stalled`)."""
    epoch_base: int = 0
    """The epoch the next one counts from, besides the status's own (the CR's epoch floor, the pods')."""
    unreachable: list[str] = field(default_factory=list)
    """One line per member reported unreachable in this plan (`MembersUnreachable`)."""

    def stall(self, reason: str, message: str) -> None:
        self.stalls.append((reason, message))

    def event(
        self, type_: Literal["Normal", "Warning"], reason: str, message: str, member: int | None = None
    ) -> None:
        self.actions.append(
            EmitEvent(
                type=type_, reason=reason, message=message, member=member, epoch=self.status.membership.epoch
            )
        )

    def wake_at(self, when: datetime) -> None:
        self.wakeups.append(max(0.0, (when - self.now).total_seconds()))

    def move(self, m: MemberStatus, target: MemberState) -> None:
        """Change `m`'s state through the transition table (the planner writes states nowhere else)."""
        self.moves.append(members.move(m, target, self.now))


def _init_members(spec: ElasticEPClusterSpec, now: datetime, incarnation: int = 1) -> list[MemberStatus]:
    return [
        MemberStatus(
            index=i,
            first_rank=spec.member_ranks(i).start,
            rank_count=len(spec.member_ranks(i)),
            state=members.INITIAL,
            state_since=now,
            incarnation=incarnation,
        )
        for i in range(spec.member_count)
    ]


def plan(
    spec: ElasticEPClusterSpec, status: ElasticEPClusterStatus, observed: Observed, now: datetime
) -> Plan:
    """Decide the next actions and the new status. See the module docstring for the rules."""
    st = status.model_copy(deep=True)
    ctx = _Ctx(spec=spec, observed=observed, now=now, status=st)
    st.world_size = spec.world_size
    if not observed.pdb_exists:
        for pdb in podspec.render_pdbs(
            spec, cluster=observed.name, namespace=observed.namespace, uid=observed.uid
        ):
            ctx.actions.append(EnsurePodDisruptionBudget(manifest=pdb))
    ctx.epoch_base = observed.epoch_floor
    if observed.refused:
        ctx.stall("APIRequestRefused", observed.refused)
    if _status_lost(st, observed, spec):
        _rebuild(ctx)
    elif len(st.members) != spec.member_count:
        # Above every incarnation a member had (the CR's record outlives a lost status).
        first = max([observed.incarnation_floor, *(m.incarnation for m in st.members)]) + 1
        st.members = _init_members(spec, now, first)
        st.restart_generation = spec.restart_generation
        _adopt_spec(ctx)
        ctx.bump_epoch = bool(status.members)
        ctx.event(
            "Normal",
            "GroupCreating",
            f"creating {spec.member_count} member pods (world size {spec.world_size})",
        )

    if st.phase == Phase.FAILED and observed.generation <= (st.observed_generation or 0):
        # Budget exhausted: stop acting (no pod is created or deleted) but keep observing and reporting,
        # so the status, the Events and the metrics stay true. A spec change is the way out.
        _observe_pods(ctx)
        _track_reachability(ctx)
        for f in _failures(ctx):
            _record_failure(ctx, f)
            m = st.members[f.member]
            ctx.move(m, S.FAILED)
            m.failed_time = m.failed_time or now
            m.next_restart_time = now
        _finish(ctx, status)
        return _result(ctx)
    if st.phase == Phase.FAILED:
        st.phase = Phase.RESTARTING
        st.restart_generation = spec.restart_generation
        st.group_restart_times = []
        for m in st.members:
            m.restart_times = []
        # Every member goes to Pending, Failed ones included (Failed -> Pending is in the table).
        ctx.event("Normal", "SpecChanged", "spec changed after the cluster failed: restarting the group")
        _group_restart(ctx, None)

    _updates(ctx)
    _service(ctx)
    _observe_pods(ctx)
    _track_reachability(ctx)
    failures = _failures(ctx)
    if failures:
        _handle_failures(ctx, failures)
    if st.phase != Phase.FAILED:
        _progress(ctx)
    _finish(ctx, status)
    return _result(ctx)


def _failures(ctx: _Ctx) -> list[Failure]:
    st, observed = ctx.status, ctx.observed
    failures = [
        f
        for m in st.members
        if (f := detect_failure(m, _current_pod(observed, m), observed, ctx.spec, ctx.now)) is not None
    ]
    return failures + _lost_before_seen(st, observed, ctx.now)


def _result(ctx: _Ctx) -> Plan:
    # Every decision of this plan is logged and posted with the epoch the plan results in.
    epoch = ctx.status.membership.epoch
    ctx.actions = [replace(a, epoch=epoch) if isinstance(a, EmitEvent) else a for a in ctx.actions]
    requeue = min(ctx.wakeups) if ctx.wakeups else None
    return Plan(actions=tuple(ctx.actions), status=ctx.status, requeue_after=requeue, moves=tuple(ctx.moves))


def _status_lost(st: ElasticEPClusterStatus, observed: Observed, spec: ElasticEPClusterSpec) -> bool:
    """The status is not the memory of the pods that exist: it has no members while pods of this CR exist
    (wiped, or a backup restored without it), or a pod carries a newer incarnation than its member (a stale
    status restored). The status is written before every pod it leads to, so neither happens otherwise."""
    if not observed.pods:
        return False
    if len(st.members) != spec.member_count:
        return True
    by_index = {m.index: m for m in st.members}
    return any(p.member in by_index and p.incarnation > by_index[p.member].incarnation for p in observed.pods)


def _rebuild(ctx: _Ctx) -> None:
    """Rebuild the members from their pods (which carry member, incarnation, join flag and epoch): a member
    whose pod is Ready is Healthy, a replacement is Joining or Restarting, a fresh-start pod Pending. A member
    whose pods are all gone or going, while some member's pod runs (Ready or not: a pod on a lost node is not
    Ready and may still serve), is Failed, so its next pod is a replacement with the join flag (never a
    fresh-start pod beside serving members); a going pod is an older incarnation, waited for. The epoch
    resumes above everything ever published (the CR's epoch floor, the pods' epochs). Restart budgets keep
    what the pods show (a replacement's creation)."""
    st, o, now, spec = ctx.status, ctx.observed, ctx.now, ctx.spec
    before = {m.index: m for m in st.members}
    serving = any(p.ready or p.running or p.phase == "Running" for p in o.pods if not p.deleting)
    rebuilt: list[MemberStatus] = []
    for m in _init_members(spec, now):
        old = before.get(m.index)
        if old is not None:
            m.state = old.state
        pods = o.pods_of(m.index)
        top = max((p.incarnation for p in pods), default=0)
        pod = next((p for p in pods if p.incarnation == top and not p.deleting), None)
        if pod is not None:
            m.incarnation, m.pod_name, m.pod_uid, m.node = pod.incarnation, pod.name, pod.uid, pod.node
            if pod.ready:
                target = S.HEALTHY
            elif pod.join:
                target = S.JOINING if pod.running or pod.phase == "Running" else S.RESTARTING
            else:
                target = S.PENDING
            if pod.join:
                m.restarts = max(1, pod.incarnation - 1)
                m.restart_times = in_window([pod.created or now], now, spec.recovery.restart_window_seconds)
                m.failed_time = pod.created or now
        elif serving:
            # `_start_replacement` raises the incarnation; the going pod (if any) is waited for meanwhile.
            m.incarnation = max(top, old.incarnation if old else 0, o.incarnation_floor, 1)
            m.pod_name = podspec.pod_name(o.name, m.index)
            target = S.FAILED
            m.failed_time = now
            m.next_restart_time = now
        else:
            # A fresh start, once the going pods of older incarnations are gone (`_progress`: quiet); above
            # every incarnation the member had, even with its pods and the status all gone (the CR's record).
            m.incarnation = max(top + 1, old.incarnation if old else 0, o.incarnation_floor + 1, 1)
            target = S.PENDING
        ctx.moves.append(members.rebuild(m, target, now))
        rebuilt.append(m)
    st.members = rebuilt
    st.phase = Phase.PENDING
    record = o.group_record
    if record is not None:
        st.group_spec = dict(record["spec"])
        st.group_revision = revision.revision_of(st.group_spec)
        st.restart_generation = _int(record.get("restartGeneration"), spec.restart_generation)
    else:
        # No record (an older operator, or the annotation removed too): a raised restartGeneration of the
        # spec is taken as handled, never as a new request to restart a serving group.
        st.restart_generation = max(st.restart_generation, spec.restart_generation)
    ctx.epoch_base = max(ctx.epoch_base, st.membership.epoch, *(p.epoch for p in o.pods))
    ctx.bump_epoch = True
    if any(m.state != S.HEALTHY for m in rebuilt):
        st.recovery_start_time = st.recovery_start_time or now
    states = ", ".join(f"{m.index}:{m.state.value}" for m in rebuilt)
    # Pods of a revision the record does not name: the record was written for a group restart whose status
    # was lost before its pods went (the record is written first). No replacement could join them: finish
    # that restart (voluntarily: its budget was counted in the lost status).
    stale = sorted({p.revision for p in o.pods if not p.deleting and p.revision} - {st.group_revision})
    if record is not None and stale:
        _group_restart(ctx, None, voluntary=True)
        st.phase = Phase.RESTARTING
        states += (
            f"; the running pods are of revision {', '.join(stale)}, the group's record of "
            f"{st.group_revision}: the group restart it records is carried out"
        )
    ctx.event(
        "Warning",
        "StatusRebuilt",
        f"the status did not describe the {len(o.pods)} pods of this cluster (lost or restored from an "
        f"older copy): members rebuilt from their pods ({states}); the epoch resumes above "
        f"{ctx.epoch_base}; restart budgets count only the replacements the pods show"
        + ("" if record is not None else "; no record of the group's spec: the current spec is taken as it"),
    )


def _lost_before_seen(st: ElasticEPClusterStatus, observed: Observed, now: datetime) -> list[Failure]:
    """Pending members whose pod was created and is gone before the operator ever saw it, while another
    member already serves (or is Ready and will serve in this plan). A pod that was never seen has no uid in
    the status, so `detect_failure` cannot tell it from one not created yet; but the pods of a start are
    created together, so beside a serving member a missing one was lost. Creating it again would put a
    fresh-start pod (no join flag) beside serving members: it counts as a failure during the start instead,
    and the group restarts."""
    serving = [
        m.index
        for m in st.members
        if m.state == S.HEALTHY or (m.state == S.PENDING and (p := _current_pod(observed, m)) and p.ready)
    ]
    if not serving:
        return []
    return [
        Failure(
            member=m.index,
            reason=FailureReason.POD_DELETED,
            exit=ExitRecord(
                reason=FailureReason.POD_DELETED,
                message=f"pod {m.pod_name} is gone before it was seen, while other members serve",
                time=now,
            ),
        )
        for m in st.members
        if m.state == S.PENDING
        and m.pod_name
        and m.pod_uid is None
        and not observed.pods_of(m.index)
        and serving != [m.index]
    ]


def _current_pod(observed: Observed, m: MemberStatus) -> PodObs | None:
    pods = [p for p in observed.pods_of(m.index) if p.incarnation == m.incarnation]
    return pods[-1] if pods else None


def _observe_pods(ctx: _Ctx) -> None:
    """Record the current pod's uid/node in the status: from then on, its disappearance is a failure."""
    for m in ctx.status.members:
        pod = _current_pod(ctx.observed, m)
        if pod is not None and m.state != S.FAILED:
            m.pod_name, m.pod_uid, m.node = pod.name, pod.uid, pod.node or m.node
        reason = pod.waiting_reason if pod is not None and m.state != S.FAILED else None
        if reason != m.waiting_reason and reason is not None and pod is not None:
            ctx.event(
                "Warning",
                "MemberWaiting",
                f"member {m.index} (pod {pod.name}) waits: {reason}: {pod.waiting_message}".strip(": "),
                m.index,
            )
        m.waiting_reason = reason
        m.waiting_message = (pod.waiting_message if reason is not None and pod is not None else "")[-4096:]


_UNREACHABLE_RECHECK_S = 5.0
"""While a member's node is lost, look again this often (member 0's view of live ranks has no event)."""


def _track_reachability(ctx: _Ctx) -> None:
    """`unreachableSince` for members whose node is NotReady (a lost node without evidence is not a failure,
    `detect_failure`); past `nodeLostGraceSeconds`, one line each for the `MembersUnreachable` condition."""
    st, o, now = ctx.status, ctx.observed, ctx.now
    grace = ctx.spec.recovery.node_lost_grace_seconds
    for m in st.members:
        pod = _current_pod(o, m)
        if m.state == S.FAILED or pod is None or not _node_lost(pod, o):
            m.unreachable_since = None
            continue
        m.unreachable_since = m.unreachable_since or now
        ctx.wake_at(now + timedelta(seconds=_UNREACHABLE_RECHECK_S))
        if (now - m.unreachable_since).total_seconds() >= grace:
            ctx.unreachable.append(
                f"member {m.index} (pod {pod.name}) on node {pod.node}, not Ready since "
                f"{m.unreachable_since.isoformat(timespec='seconds')}"
            )
        else:
            ctx.wake_at(m.unreachable_since + timedelta(seconds=grace))


def _handle_failures(ctx: _Ctx, failures: list[Failure]) -> None:
    st, spec, now = ctx.status, ctx.spec, ctx.now
    by_index = {m.index: m for m in st.members}
    was_starting = any(m.state == S.PENDING for m in st.members)
    previous = {
        m.index: (m.state, m.last_exit.exit_code if m.last_exit is not None else None) for m in st.members
    }
    for f in failures:
        _record_failure(ctx, f)
    failed_idx = {f.member for f in failures}
    # A joiner whose pod is Ready has joined: it is Healthy as of this plan (`_progress`), so it is not down.
    # (A PodDisruptionBudget counts it as available already: the next eviction may come in the same moment.)
    joined = {
        m.index
        for m in st.members
        if m.state == S.JOINING and (p := _current_pod(ctx.observed, m)) is not None and p.ready
    }
    down_after = sum(
        1 for m in st.members if (m.state in DOWN and m.index not in joined) or m.index in failed_idx
    )
    group_reason: str | None = None
    if spec.recovery.mode == RecoveryMode.GROUP_RESTART:
        group_reason = GroupRestartReason.GROUP_RESTART_MODE
    elif 0 in failed_idx:
        group_reason = GroupRestartReason.MEMBER_ZERO_LOST
    elif was_starting or down_after > spec.recovery.max_unavailable_members:
        group_reason = GroupRestartReason.TOO_MANY_UNAVAILABLE
    if group_reason is not None:
        for f in failures:  # failed first, so the evidence stays with the member that failed
            _mark_failed(ctx, by_index[f.member], backoff=0.0)
        _group_restart(ctx, group_reason)
        return
    for f in failures:
        m = by_index[f.member]
        in_join = previous[m.index][0] in (S.RESTARTING, S.JOINING)
        # A joiner that died inside its join stays registered with Mooncake (as healthy) until its heartbeat
        # times out, and the next registration of its ranks is refused until then: wait it out.
        hold = JOINER_REGISTRATION_HOLD_S if in_join else 0.0
        if f.reason == FailureReason.EVICTED:
            # A drain or a preemption is not a crash: it has its own budget, and past it counts as one.
            evictions = in_window(m.eviction_times, now, spec.recovery.restart_window_seconds)
            if len(evictions) < spec.recovery.max_evictions_per_member:
                m.eviction_times = [*evictions, now]
                m.failure_exempt = True
                _mark_failed(ctx, m, backoff=hold)
                continue
        if f.exit.exit_code == ExitCode.JOIN_REFUSED and previous[m.index][1] != ExitCode.JOIN_REFUSED:
            # Refused because an earlier incarnation is still registered: not a crash (once in a row).
            m.failure_exempt = True
            _mark_failed(ctx, m, backoff=max(hold, JOINER_REGISTRATION_HOLD_S))
            continue
        m.failure_exempt = False
        used = in_window(m.restart_times, now, spec.recovery.restart_window_seconds)
        if len(used) >= spec.recovery.max_restarts_per_member:
            _mark_failed(ctx, m, backoff=0.0)
            _give_up(
                ctx,
                f"member {m.index} failed after {len(used)} restarts within "
                f"{spec.recovery.restart_window_seconds:g}s (maxRestartsPerMember "
                f"{spec.recovery.max_restarts_per_member})",
                m.index,
            )
            return
        _mark_failed(ctx, m, backoff=max(hold, backoff_seconds(spec, len(used))))


def _record_failure(ctx: _Ctx, f: Failure) -> None:
    """Keep the evidence with the member, count it, and say it (Warning Event `Member<reason>`)."""
    m = ctx.status.members[f.member]
    m.last_exit = f.exit
    ctx.actions.append(RecordFailure(reason=f.reason))
    code = "" if f.exit.exit_code is None else f" exit code {f.exit.exit_code},"
    ctx.event(
        "Warning",
        f"Member{f.reason}",
        f"member {m.index} (pod {m.pod_name}) failed:{code} {f.exit.reason}: {f.exit.message}".strip(),
        m.index,
    )


def _mark_failed(ctx: _Ctx, m: MemberStatus, backoff: float) -> None:
    st, now = ctx.status, ctx.now
    in_recovery = m.state in (S.RESTARTING, S.JOINING) and m.failed_time is not None
    ctx.move(m, S.FAILED)
    m.failed_time = m.failed_time if in_recovery else now
    m.next_restart_time = now + timedelta(seconds=backoff)
    st.recovery_start_time = st.recovery_start_time or now
    ctx.event(
        "Normal",
        "BackoffScheduled",
        f"member {m.index}: replacement in {backoff:g}s",
        m.index,
    )


def _give_up(ctx: _Ctx, message: str, member: int | None) -> None:
    st = ctx.status
    st.phase = Phase.FAILED
    st.conditions = set_condition(
        st.conditions,
        Condition(
            type=ConditionType.READY,
            status=ConditionStatus.FALSE,
            reason="RestartBudgetExhausted",
            message=message,
            observed_generation=ctx.observed.generation,
        ),
        ctx.now,
    )
    ctx.actions.append(RecordRecovery(result="Failed"))
    ctx.event("Warning", "RestartBudgetExhausted", f"{message}; the operator stopped acting", member)


def _group_restart(ctx: _Ctx, reason: str | None, *, voluntary: bool = False) -> None:
    """Move every member to Pending with a new incarnation; pods are recreated once all old ones are gone,
    from the current spec (it becomes the group's revision). A `voluntary` restart (asked for by the user or
    the update strategy) neither spends the budget nor waits a backoff."""
    st, spec, now = ctx.status, ctx.spec, ctx.now
    used = in_window(st.group_restart_times, now, spec.recovery.restart_window_seconds)
    if reason is not None and not voluntary and len(used) >= spec.recovery.max_restarts_per_member:
        _give_up(
            ctx,
            f"group restart ({reason}) needed after {len(used)} group restarts within "
            f"{spec.recovery.restart_window_seconds:g}s "
            f"(maxRestartsPerMember {spec.recovery.max_restarts_per_member})",
            None,
        )
        return
    delay = backoff_seconds(spec, len(used)) if reason is not None and not voluntary else 0.0
    _adopt_spec(ctx)
    for m in st.members:
        ctx.move(m, S.PENDING)
        m.incarnation += 1
        m.pod_uid = None
        m.next_restart_time = now + timedelta(seconds=delay)
        m.failed_time = m.failed_time or now
    st.group_restarts += 1
    st.total_restarts += 1
    st.group_restart_times = used if voluntary else [*used, now]
    st.recovery_start_time = st.recovery_start_time or now
    ctx.bump_epoch = True
    if reason is not None:
        ctx.actions.append(RecordGroupRestart(reason=reason))
        ctx.event("Warning", "GroupRestart", f"restarting the whole group ({reason}) in {delay:g}s")


def _adopt_spec(ctx: _Ctx) -> None:
    """The current spec becomes the group's: what its fresh pods and later replacements are rendered from."""
    ctx.status.group_spec = revision.pod_shaping(ctx.spec)
    ctx.status.group_revision = revision.revision(ctx.spec)


def _updates(ctx: _Ctx) -> None:
    """A raised `spec.restartGeneration`, or a new revision under `updateStrategy: GroupRestart`, restarts
    the group (voluntarily: no budget, no backoff). Under Manual a new revision waits (`UpdatePending`)."""
    st, spec = ctx.status, ctx.spec
    st.update_revision = revision.revision(spec)
    if st.group_spec is None:
        _adopt_spec(ctx)  # a group started by an older operator: the spec of now is the best record
    if spec.restart_generation > st.restart_generation:
        st.restart_generation = spec.restart_generation
        _group_restart(ctx, GroupRestartReason.USER_REQUESTED, voluntary=True)
    elif (
        st.update_revision != st.group_revision
        and spec.update_strategy.type == UpdateStrategyType.GROUP_RESTART
    ):
        _group_restart(ctx, GroupRestartReason.SPEC_CHANGED, voluntary=True)


def _service(ctx: _Ctx) -> None:
    """The headless Service, rendered from the group's revision: created if missing, its ports and selector
    put back if they differ (a group restart onto another port, or an edit by hand)."""
    o = ctx.observed
    svc = podspec.render_service(_pod_spec(ctx), cluster=o.name, namespace=o.namespace, uid=o.uid)
    if not o.service_exists:
        ctx.actions.append(EnsureService(manifest=svc))
        return
    if o.service_spec is None:
        return
    want: dict[str, Any] = svc["spec"]
    have = o.service_spec
    if _ports_key(have.get("ports") or []) != _ports_key(want["ports"]) or dict(
        have.get("selector") or {}
    ) != dict(want["selector"]):
        patch = {"ports": want["ports"], "selector": want["selector"]}
        ctx.actions.append(UpdateService(manifest={**svc, "spec": patch}))
        ctx.event("Normal", "ServiceUpdated", f"Service {o.name}: ports and selector set to the group's")


def _ports_key(ports: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """Ports as (name, port, targetPort) with targetPort defaulted to port, as the API server does."""
    return sorted(
        (str(p.get("name")), int(p.get("port") or 0), int(p.get("targetPort") or p.get("port") or 0))
        for p in ports
    )


def _pod_spec(ctx: _Ctx) -> ElasticEPClusterSpec:
    """The spec member pods are rendered from: the group's revision, with the current operator policy."""
    group = ctx.status.group_spec
    if group is None:
        return ctx.spec
    try:
        return revision.with_policy(group, ctx.spec)
    except ValidationError as e:
        ctx.stall("GroupSpecUnreadable", f"status.groupSpec is not a valid spec ({e.error_count()} errors): "
                  "pods are rendered from the current spec")  # fmt: skip
        return ctx.spec


def _remove_pod(ctx: _Ctx, m: MemberStatus, pod: PodObs, why: str) -> None:
    """Delete a pod we no longer want; force-delete it if it is stuck on a lost node."""
    if not pod.deleting:
        if pod.phase in ("Failed", "Succeeded") or (
            _node_lost(pod, ctx.observed) and gone_evidence(m, pod, ctx.observed) is not None
        ):
            # Every container has ended (or its node is known to be gone): nothing is left to stop
            # gracefully, and waiting for a kubelet to confirm would delay the replacement (same pod name).
            ctx.actions.append(ForceDeletePod(member=m.index, name=pod.name, uid=pod.uid))
        else:
            ctx.actions.append(DeletePod(member=m.index, name=pod.name, uid=pod.uid, reason=why))
        return
    kueue = gang.finalizer_to_release(pod.finalizers)
    ended = pod.phase in ("Failed", "Succeeded") or pod.node is None
    if kueue is not None and (
        ended or (_node_lost(pod, ctx.observed) and gone_evidence(m, pod, ctx.observed))
    ):
        # Kueue keeps a group's dead pod until its replacement exists, which one of the same name cannot
        # (core/gang.py): release that hold, and only that one, once nothing runs in the pod (its containers
        # ended, it never ran, or its node is known gone).
        ctx.actions.append(ReleaseKueueFinalizer(member=m.index, name=pod.name, uid=pod.uid, index=kueue))
        return
    if pod.node is None:
        return  # never bound: the API server finishes it
    started = pod.deletion_started or ctx.now
    deadline = started + timedelta(seconds=ctx.spec.recovery.terminating_timeout_seconds)
    if ctx.now < deadline:
        ctx.wake_at(deadline)
        return
    held = f" held by finalizers {', '.join(pod.finalizers)}" if pod.finalizers else ""
    if not _node_lost(pod, ctx.observed):
        # A healthy node's kubelet should have finished it: something holds it. Say what; the pod's next
        # update (a finalizer removed, the container gone) reconciles again.
        ctx.stall(
            "PodStuckTerminating",
            f"pod {pod.name} of member {m.index} is Terminating since "
            f"{started.isoformat(timespec='seconds')} on Ready node {pod.node}"
            + (held or ": its kubelet has not confirmed that the containers stopped (a hung runtime, a "
               "process in uninterruptible sleep)"),
        )  # fmt: skip
        ctx.wake_at(ctx.now + timedelta(seconds=ctx.spec.recovery.terminating_timeout_seconds))
        return
    evidence = gone_evidence(m, pod, ctx.observed)
    if evidence is None and pod.phase not in ("Failed", "Succeeded"):
        # A lost node's processes may still run: a same-name replacement would be a second copy of the
        # member's ranks. `MembersUnreachable` says what evidence would let the operator go on.
        ctx.unreachable.append(
            f"member {m.index}'s old pod {pod.name} is Terminating on node {pod.node}, which is not Ready "
            "(its replacement has the same name)"
        )
        ctx.wake_at(ctx.now + timedelta(seconds=_UNREACHABLE_RECHECK_S))
        return
    if pod.finalizers:
        ctx.stall("PodStuckTerminating", f"pod {pod.name} of member {m.index} on lost node {pod.node}{held}")
    ctx.actions.append(ForceDeletePod(member=m.index, name=pod.name, uid=pod.uid))
    ctx.event(
        "Warning",
        "PodForceDeleted",
        f"pod {pod.name} stuck Terminating on lost node {pod.node}: force-deleted "
        f"({evidence or 'its containers had ended'})",
        m.index,
    )


@dataclass(frozen=True)
class _Seen:
    """What a member's step in `_progress` knows about its pods."""

    pod: PodObs | None
    """The member's current pod (the one of its incarnation), if it exists."""
    any_pod: bool
    """Some pod of the member exists, of any incarnation (its name is taken until it is gone)."""
    quiet: bool
    """No pod of an older incarnation is left anywhere: a fresh (group) start may create pods."""


def _progress(ctx: _Ctx) -> None:
    """Move every member one step forward (`_STEPS`), after removing the pods nobody should keep.

    One step per member per plan: a member that moved is written (published) before it can move again, so
    the survivors read a member's `joiningRanks` before it can become Healthy.
    """
    st, observed = ctx.status, ctx.observed
    # Old pods: a pod whose incarnation is not the member's, and the pod of a failed member.
    for m in st.members:
        for old in observed.pods_of(m.index):
            if old.incarnation != m.incarnation or m.state == S.FAILED:
                _remove_pod(ctx, m, old, "replaced" if m.state != S.FAILED else "member failed")
    # A fresh (group) start only once no pod of an older incarnation is left anywhere: fresh ranks must never
    # meet ranks of the previous group.
    quiet = not observed.foreign_pods and all(
        p.incarnation == by.incarnation for by in st.members for p in observed.pods_of(by.index)
    )
    if observed.foreign_pods:
        names = ", ".join(sorted(p.name for p in observed.foreign_pods))
        ctx.stall(
            "PreviousClusterPods",
            f"pods {names} belong to an earlier ElasticEPCluster of this name; members start once the "
            "garbage collector has removed them",
        )
    foreign_members = {p.member for p in observed.foreign_pods}
    for m in st.members:
        seen = _Seen(
            pod=_current_pod(observed, m),
            any_pod=bool(observed.pods_of(m.index)) or m.index in foreign_members,
            quiet=quiet,
        )
        _STEPS[m.state](ctx, m, seen)


def _step_pending(ctx: _Ctx, m: MemberStatus, seen: _Seen) -> None:
    """Fresh start: create the pod (no join flag) once the start is quiet and the backoff is over; Healthy
    when it is Ready."""
    pod = seen.pod
    if pod is None and m.pod_uid is None and seen.quiet:
        if m.next_restart_time is not None and ctx.now < m.next_restart_time:
            ctx.wake_at(m.next_restart_time)
        else:
            ctx.actions.append(_create(ctx, m, join=False))
    elif pod is not None and pod.ready:
        ctx.move(m, S.HEALTHY)
        m.failed_time = None
        m.next_restart_time = None
        ctx.event("Normal", "MemberHealthy", f"member {m.index} Ready", m.index)
    _wake_for_timeout(ctx, pod)


def _step_healthy(ctx: _Ctx, m: MemberStatus, seen: _Seen) -> None:
    """Nothing to do: a Healthy member leaves only by failing (`detect_failure`) or with its group."""


def _step_failed(ctx: _Ctx, m: MemberStatus, seen: _Seen) -> None:
    """Wait out the backoff, then, once the old pod's name is free, create the replacement (Restarting)."""
    assert m.next_restart_time is not None
    if ctx.now < m.next_restart_time:
        ctx.wake_at(m.next_restart_time)
    elif not seen.any_pod:
        _start_replacement(ctx, m)


def _step_restarting(ctx: _Ctx, m: MemberStatus, seen: _Seen) -> None:
    """Create the replacement if the write-ahead intent was not carried out; Joining once it runs."""
    pod = seen.pod
    if pod is None and m.pod_uid is None and not seen.any_pod:
        ctx.actions.append(_create(ctx, m, join=True))  # write-ahead intent not yet carried out
    elif pod is not None and (pod.running or pod.phase == "Running"):
        ctx.move(m, S.JOINING)
        ctx.event("Normal", "MemberJoining", f"member {m.index} running; survivors admit ranks", m.index)
    _wake_for_timeout(ctx, pod)


def _step_joining(ctx: _Ctx, m: MemberStatus, seen: _Seen) -> None:
    """Healthy once the replacement is Ready (the survivors admitted its ranks)."""
    pod = seen.pod
    if pod is not None and pod.ready:
        ctx.move(m, S.HEALTHY)
        if m.failed_time is not None:
            m.last_recovery_seconds = (ctx.now - m.failed_time).total_seconds()
        m.failed_time = None
        m.next_restart_time = None
        ctx.event(
            "Normal",
            "MemberRecovered",
            f"member {m.index} joined; recovered in {m.last_recovery_seconds or 0:.2f}s",
            m.index,
        )
    _wake_for_timeout(ctx, pod)


_STEPS: Mapping[MemberState, Callable[[_Ctx, MemberStatus, _Seen], None]] = {
    S.PENDING: _step_pending,
    S.HEALTHY: _step_healthy,
    S.FAILED: _step_failed,
    S.RESTARTING: _step_restarting,
    S.JOINING: _step_joining,
}
"""A member's step in `_progress`, by its state: one move along the table (`eep_operator.core.members`)."""


def _wake_for_timeout(ctx: _Ctx, pod: PodObs | None) -> None:
    since = _join_clock(pod) if pod is not None and not pod.ready else None
    if since is not None:
        ctx.wake_at(since + timedelta(seconds=ctx.spec.recovery.rejoin_timeout_seconds + 1))


def _start_replacement(ctx: _Ctx, m: MemberStatus) -> None:
    st, now = ctx.status, ctx.now
    ctx.move(m, S.RESTARTING)
    m.incarnation += 1
    m.restarts += 1
    m.restart_times = in_window(m.restart_times, now, ctx.spec.recovery.restart_window_seconds)
    if not m.failure_exempt:
        m.restart_times.append(now)
    m.failure_exempt = False
    m.pod_uid = None
    m.node = None
    m.next_restart_time = None
    st.total_restarts += 1
    ctx.actions.append(_create(ctx, m, join=True))
    ctx.actions.append(RecordMemberRestart(member=m.index))
    ctx.event(
        "Normal", "MemberRestarting", f"member {m.index}: replacement created with the join flag", m.index
    )


def _create(ctx: _Ctx, m: MemberStatus, *, join: bool) -> CreatePod:
    o = ctx.observed
    name = podspec.pod_name(o.name, m.index)
    m.pod_name = name
    m.revision = ctx.status.group_revision
    spec = _pod_spec(ctx)
    pod_group = None
    if gang.queued(spec):
        # The running members' group (a replacement joins their admitted Workload; the later pods of a start
        # join the start's), else a new one: a start or a whole-group restart.
        live = (p.pod_group for p in o.pods if not p.deleting and p.pod_group)
        pod_group = next(live, None) or gang.new_group_name(o.name, ctx.status.membership.epoch)
    manifest = podspec.render_pod(
        spec,
        cluster=o.name,
        namespace=o.namespace,
        uid=o.uid,
        index=m.index,
        join=join,
        epoch=ctx.status.membership.epoch,
        incarnation=m.incarnation,
        pod_group=pod_group,
        revision=ctx.status.group_revision,
    )
    return CreatePod(member=m.index, name=name, join=join, incarnation=m.incarnation, manifest=manifest)


def _finish(ctx: _Ctx, before: ElasticEPClusterStatus) -> None:
    """Membership, epoch, recovery bookkeeping, phase and conditions from the members' new states."""
    st, now = ctx.status, ctx.now
    active = sorted(r for m in st.members if m.state == S.HEALTHY for r in ranks(m))
    joining = sorted(r for m in st.members if m.state == S.JOINING for r in ranks(m))
    old = before.membership
    changed = active != old.active_ranks or joining != old.joining_ranks
    base = max(old.epoch, ctx.epoch_base)
    epoch = base + 1 if changed or ctx.bump_epoch or base > old.epoch else base
    st.membership = Membership(epoch=epoch, active_ranks=active, joining_ranks=joining)
    st.active_rank_count = len(active)
    st.joining_rank_count = len(joining)
    st.failed_member_count = sum(m.state in (S.FAILED, S.RESTARTING) for m in st.members)
    st.observed_generation = ctx.observed.generation
    all_healthy = all(m.state == S.HEALTHY for m in st.members)
    if all_healthy and st.recovery_start_time is not None and st.phase != Phase.FAILED:
        seconds = (now - st.recovery_start_time).total_seconds()
        st.last_recovery_seconds = seconds
        st.recovery_start_time = None
        ctx.actions.append(RecordRecovery(result="Succeeded", seconds=seconds))
        ctx.event("Normal", "RecoveryCompleted", f"every rank active again after {seconds:.2f}s")
    if st.phase != Phase.FAILED:
        st.phase = _phase(st)
    _set_conditions(ctx)
    if changed or ctx.bump_epoch:
        ctx.event(
            "Normal",
            "MembershipChanged",
            f"epoch {epoch}: {len(active)}/{st.world_size} ranks active, joining {joining or 'none'}",
        )


def _phase(st: ElasticEPClusterStatus) -> Phase:
    states = {m.state for m in st.members}
    if S.PENDING in states:
        return Phase.RESTARTING if st.recovery_start_time is not None else Phase.PENDING
    if S.FAILED in states:
        return Phase.DEGRADED
    if states & {S.RESTARTING, S.JOINING}:
        return Phase.RECOVERING
    return Phase.RUNNING


def _set_conditions(ctx: _Ctx) -> None:
    st, gen = ctx.status, ctx.observed.generation
    healthy = sum(1 for m in st.members if m.state == S.HEALTHY)
    summary = (
        f"{healthy}/{len(st.members)} members healthy, {st.active_rank_count}/{st.world_size} ranks active"
    )

    def cond(ctype: ConditionType, true: bool, reason: str) -> None:
        if ctype == ConditionType.READY and st.phase == Phase.FAILED:
            return  # keeps the RestartBudgetExhausted reason and message
        status = ConditionStatus.TRUE if true else ConditionStatus.FALSE
        new = Condition(type=ctype, status=status, reason=reason, message=summary, observed_generation=gen)
        st.conditions = set_condition(st.conditions, new, ctx.now)

    phase = st.phase.value
    cond(ConditionType.READY, st.phase == Phase.RUNNING, phase)
    cond(ConditionType.DEGRADED, st.phase not in (Phase.PENDING, Phase.RUNNING), phase)
    cond(ConditionType.RECOVERING, st.recovery_start_time is not None and st.phase != Phase.FAILED, phase)
    _pause_condition(ctx)
    unreachable = "; ".join(ctx.unreachable)
    _reported_condition(
        ctx,
        ConditionType.MEMBERS_UNREACHABLE,
        ("MemberUnreachable", f"{unreachable}. Not replaced until its ranks are known to be gone: the node "
         f"deleted, tainted {OUT_OF_SERVICE_TAINT}, or member 0 reporting them not live") if unreachable
        else None,
        "AllReachable",
    )  # fmt: skip
    _reported_condition(ctx, ConditionType.UPDATE_PENDING, _update_pending(ctx), "UpToDate")
    stalled = (ctx.stalls[0][0], "; ".join(msg for _, msg in ctx.stalls)) if ctx.stalls else None
    _reported_condition(ctx, ConditionType.STALLED, stalled, "Progressing")


def _update_pending(ctx: _Ctx) -> tuple[str, str] | None:
    """`UpdatePending`: the spec's revision differs from the group's, or members run different revisions."""
    st = ctx.status
    running = sorted({m.revision for m in st.members if m.revision is not None and m.pod_uid is not None})
    if len(running) > 1:
        return (
            "MixedRevisions",
            f"members run different spec revisions {running}: a group restart aligns them",
        )
    if st.group_revision is None or st.update_revision == st.group_revision or st.group_spec is None:
        return None
    fields = revision.changed_fields(st.group_spec, revision.pod_shaping(ctx.spec))
    return (
        "SpecChangePending",
        f"spec revision {st.update_revision} changes {', '.join(fields) or 'nothing visible'}; the group "
        f"runs revision {st.group_revision}, and its replacements do too (a replacement of another "
        "revision could not join). Apply it with a group restart: raise spec.restartGeneration, or set "
        "spec.updateStrategy.type GroupRestart",
    )


def _reported_condition(
    ctx: _Ctx, ctype: ConditionType, problem: tuple[str, str] | None, ok_reason: str
) -> None:
    """Set a problem condition (True with `problem`'s reason and message, else False) and post a Warning
    Event with the same reason and message whenever the problem is new or its message changed."""
    st = ctx.status
    before = get_condition(st.conditions, ctype)
    status = ConditionStatus.TRUE if problem else ConditionStatus.FALSE
    reason, message = problem or (ok_reason, "")
    new = Condition(
        type=ctype, status=status, reason=reason, message=message[:32768],
        observed_generation=ctx.observed.generation,
    )  # fmt: skip
    st.conditions = set_condition(st.conditions, new, ctx.now)
    if problem and (before is None or before.status != status or before.message != new.message):
        ctx.event("Warning", reason, message[:1024])


def _pause_condition(ctx: _Ctx) -> None:
    """`RecoveryPauseBounded`: the recovery pause the spec implies against `maxRecoveryPauseSeconds`
    (`core.pause`). A Warning Event when it turns False, and again for each new spec generation above it."""
    st, gen = ctx.status, ctx.observed.generation
    v = pause.verdict(ctx.spec)
    before = get_condition(st.conditions, ConditionType.RECOVERY_PAUSE_BOUNDED)
    new = Condition(
        type=ConditionType.RECOVERY_PAUSE_BOUNDED,
        status=v.status,
        reason=v.reason,
        message=v.message,
        observed_generation=gen,
    )
    st.conditions = set_condition(st.conditions, new, ctx.now)
    above = v.status == ConditionStatus.FALSE
    if above and (before is None or before.status != v.status or before.observed_generation != gen):
        ctx.event("Warning", pause.ABOVE, v.message)
