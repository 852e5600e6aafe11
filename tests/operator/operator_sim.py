"""An in-memory world for simulating the planner: pods, their processes, nodes and a clock, no API server.

Used only by the planner's unit and property tests (the real API server is used by test_e2e_*). It models what
matters to the planner: pod names are unique (AlreadyExists), graceful deletion finishes only on a Ready node,
force deletion always does, a replacement becomes Ready only after the status admitted its ranks.

Processes are apart from pod objects, as on a real node: a pod's process runs from its start until it is
killed, its graceful deletion finishes, or its node powers off. A node whose agent dies (`agent_down`) is
NotReady while its processes live on; a pod force-deleted there keeps its process until the agent is back.
Member 0 answers the group view (`Observed.live_ranks`) while its process lives: the ranks of members whose
process lives and that were admitted. `check_world` asserts that no member ever has two live processes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from eep_contract.v1alpha1 import (
    Annotations,
    ElasticEPClusterSpec,
    ElasticEPClusterStatus,
    Kueue,
    MemberState,
    Phase,
)
from eep_operator.core import actions as A
from eep_operator.core import gang, members
from eep_operator.core.observe import NodeObs, Observed, PodObs, Termination
from eep_operator.core.planner import plan

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NAME, NS, UID = "c", "ns", "cr-uid"


@dataclass
class SimPod:
    name: str
    uid: str
    member: int
    incarnation: int
    join: bool
    created: datetime
    node: str | None = None
    phase: str = "Pending"
    running: bool = False
    ready: bool = False
    terminated: Termination | None = None
    deleting: bool = False
    deletion_started: datetime | None = None
    evicted: bool = False
    hang: bool = False
    process: bool = False
    """Its process runs (started, not yet killed)."""
    served: bool = False
    """Its ranks were admitted into the group once (it got Ready); the data plane's view, not the API's."""
    epoch: int = 0
    pod_group: str | None = None
    """Its Kueue pod group (label), for a queued cluster."""
    finalizers: tuple[str, ...] = ()
    """Kueue's finalizer on a queued cluster's pods: a deleted pod stays (its process ended) until it goes."""
    revision: str | None = None
    """The spec revision it was rendered from (its annotation)."""

    def obs(self) -> PodObs:
        return PodObs(
            name=self.name,
            uid=self.uid,
            member=self.member,
            incarnation=self.incarnation,
            join=self.join,
            phase=self.phase,
            ready=self.ready,
            running=self.running,
            terminated=self.terminated,
            deleting=self.deleting,
            deletion_started=self.deletion_started,
            evicted=self.evicted,
            reason="Evicted" if self.evicted else "",
            node=self.node,
            created=self.created,
            epoch=self.epoch,
            owner_uid=UID,
            pod_group=self.pod_group,
            finalizers=self.finalizers,
            revision=self.revision,
        )


class InvariantError(AssertionError):
    pass


@dataclass
class World:
    spec: ElasticEPClusterSpec
    node_names: list[str]
    now: datetime = T0
    pods: dict[str, SimPod] = field(default_factory=dict)
    nodes: dict[str, bool] = field(default_factory=dict)
    out_of_service: set[str] = field(default_factory=set)
    orphans: list[SimPod] = field(default_factory=list)
    """Processes whose pod object is gone while their node's agent was down (they die when it is back)."""
    epoch_floor: int = 0
    """The CR's `elasticep.io/epoch-floor` annotation, written before each status that raises the epoch."""
    incarnation_floor: int = 0
    """The CR's `elasticep.io/incarnation-floor` annotation, written before each status that raises it."""
    group_record: dict[str, object] | None = None
    """The CR's `elasticep.io/group-spec` annotation (the reconciler writes it before the status)."""
    group_image: str | None = None
    """The image of the running group's fresh pods: every replacement must run it."""
    service: bool = False
    status: ElasticEPClusterStatus = field(default_factory=ElasticEPClusterStatus)
    generation: int = 1
    created: list[A.CreatePod] = field(default_factory=list)
    max_incarnation: dict[int, int] = field(default_factory=dict)
    last_requeue: float | None = None
    _uids: itertools.count[int] = field(default_factory=itertools.count)
    _rr: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.nodes = dict.fromkeys(self.node_names, True)

    # ---------------------------------------------------------------- the operator's side
    def observed(self) -> Observed:
        return Observed(
            name=NAME,
            namespace=NS,
            uid=UID,
            generation=self.generation,
            pods=tuple(
                sorted((p.obs() for p in self.pods.values()), key=lambda p: (p.member, p.incarnation))
            ),
            nodes={n: NodeObs(n, r, n in self.out_of_service) for n, r in self.nodes.items()},
            service_exists=self.service,
            epoch_floor=self.epoch_floor,
            incarnation_floor=self.incarnation_floor,
            group_record=self.group_record,
            live_ranks=self.group_view(),
        )

    def group_view(self) -> frozenset[int] | None:
        """Member 0's view: None unless its process runs; else the ranks of admitted, running processes."""
        leader = [p for p in self.processes() if p.member == 0 and p.served]
        if not leader:
            return None
        rpn = self.spec.ranks_per_node
        return frozenset(
            r for p in self.processes() if p.served for r in range(p.member * rpn, (p.member + 1) * rpn)
        )

    def processes(self) -> list[SimPod]:
        return [p for p in [*self.pods.values(), *self.orphans] if p.process]

    def reconcile(self) -> A.Plan:
        """One plan + execute, checking the invariants of the transition."""
        obs = self.observed()
        before = self.status
        p = plan(self.spec, before, obs, self.now)
        check_step(before, p, obs)
        serving = [x.name for x in self.processes() if x.served]
        for c in (a for a in p.actions if isinstance(a, A.CreatePod)):
            image = c.manifest["spec"]["containers"][0]["image"]
            if not c.join:
                self.group_image = image
            elif image != self.group_image:
                raise InvariantError(f"replacement of {c.member} runs {image}, the group {self.group_image}")
            if not c.join and serving:
                # What the workers see, not what the status says: a lost status says nothing serves.
                raise InvariantError(f"fresh pod for member {c.member} beside serving processes {serving}")
            # The same incarnation again is the retry of a write-ahead intent; an older one is a bug.
            if c.incarnation < self.max_incarnation.get(c.member, 0):
                raise InvariantError(f"member {c.member} recreated with an old incarnation {c.incarnation}")
            self.max_incarnation[c.member] = max(self.max_incarnation.get(c.member, 0), c.incarnation)
        self.write_records(p.status)  # the reconciler's write-ahead records on the CR
        self.status = p.status
        self.last_requeue = p.requeue_after
        self.execute(p.actions)
        check_world(self)
        return p

    def execute(self, actions: tuple[A.Action, ...]) -> None:
        for a in actions:
            if isinstance(a, A.EnsureService):
                self.service = True
            elif isinstance(a, A.CreatePod):
                if a.name in self.pods:
                    continue  # AlreadyExists
                self.created.append(a)
                self.pods[a.name] = SimPod(
                    name=a.name,
                    uid=f"uid-{next(self._uids)}",
                    member=a.member,
                    incarnation=a.incarnation,
                    join=a.join,
                    created=self.now,
                    node=self._schedule(),
                    epoch=int(a.manifest["metadata"]["annotations"]["elasticep.io/epoch"]),
                    pod_group=a.manifest["metadata"]["labels"].get(Kueue.POD_GROUP_LABEL),
                    revision=a.manifest["metadata"]["annotations"].get(Annotations.REVISION),
                    # Kueue's webhook puts its finalizer on every pod of a queue (and admits at once here).
                    finalizers=(Kueue.FINALIZER,)
                    if Kueue.QUEUE_LABEL in a.manifest["metadata"]["labels"]
                    else (),
                )
            elif isinstance(a, A.DeletePod):
                pod = self.pods.get(a.name)
                if pod is not None and pod.uid == a.uid and not pod.deleting:
                    pod.deleting, pod.deletion_started = True, self.now
            elif isinstance(a, A.ReleaseKueueFinalizer):
                pod = self.pods.get(a.name)
                if (
                    pod is not None
                    and pod.uid == a.uid
                    and pod.finalizers[a.index : a.index + 1] == (Kueue.FINALIZER,)
                ):
                    pod.finalizers = pod.finalizers[: a.index] + pod.finalizers[a.index + 1 :]
                    if pod.deleting and not pod.finalizers and not pod.process:
                        del self.pods[a.name]
            elif isinstance(a, A.ForceDeletePod):
                pod = self.pods.get(a.name)
                if pod is not None and pod.uid == a.uid and pod.finalizers:
                    # Grace 0 ends the containers' wait, not a finalizer's hold: the object stays.
                    pod.deleting, pod.deletion_started = True, pod.deletion_started or self.now
                    if pod.node is None or self.nodes.get(pod.node, False):
                        pod.process, pod.running, pod.ready = False, False, False
                        pod.phase = "Failed" if pod.phase != "Succeeded" else pod.phase
                elif pod is not None and pod.uid == a.uid:
                    del self.pods[a.name]
                    if pod.process and pod.node is not None and not self.nodes.get(pod.node, False):
                        self.orphans.append(pod)  # its agent is down: nobody stops the process yet
                    pod.process = pod.process and pod in self.orphans

    def _schedule(self) -> str | None:
        ready = [n for n, ok in self.nodes.items() if ok]
        return ready[next(self._rr) % len(ready)] if ready else None

    # ---------------------------------------------------------------- the kubelet's side
    def tick(self) -> None:
        """Kubelets make progress: finish deletions, start containers, report readiness."""
        admitted = set(self.status.membership.joining_ranks) | set(self.status.membership.active_ranks)
        rpn = self.spec.ranks_per_node
        for name, pod in list(self.pods.items()):
            if pod.node is None:
                if pod.deleting and not pod.finalizers:
                    del self.pods[name]
                elif not pod.deleting:
                    pod.node = self._schedule()
                continue
            if not self.nodes.get(pod.node, False):
                continue  # kubelet gone: nothing moves
            if pod.deleting:
                pod.process = False
                if pod.finalizers:  # the containers end; the object waits for its finalizers
                    pod.running = pod.ready = False
                    pod.phase = "Failed" if pod.phase != "Succeeded" else pod.phase
                else:
                    del self.pods[name]
                continue
            if pod.terminated is not None or pod.phase in ("Failed", "Succeeded"):
                continue
            if pod.phase == "Pending":
                pod.phase, pod.running, pod.process = "Running", True, True
            elif not pod.hang and (not pod.join or pod.member * rpn in admitted):
                pod.ready = pod.served = True

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    # ---------------------------------------------------------------- faults
    def _pod_of(self, member: int) -> SimPod | None:
        return next((p for p in self.pods.values() if p.member == member and not p.deleting), None)

    def kill(self, member: int, code: int = 137) -> None:
        pod = self._pod_of(member)
        if pod is not None and pod.node is not None and self.nodes.get(pod.node):
            pod.phase, pod.running, pod.ready, pod.process = "Failed", False, False, False
            pod.terminated = Termination(exit_code=code, reason="Error", message="killed")

    def user_delete(self, member: int) -> None:
        pod = self._pod_of(member)
        if pod is not None:
            pod.deleting, pod.deletion_started = True, self.now

    def evict(self, member: int) -> None:
        pod = self._pod_of(member)
        if pod is not None and pod.node is not None and self.nodes.get(pod.node):
            pod.phase, pod.running, pod.ready, pod.evicted = "Failed", False, False, True
            pod.process = False

    def hang(self, member: int) -> None:
        pod = self._pod_of(member)
        if pod is not None:
            pod.hang, pod.ready = True, False

    def node_down(self, node: str) -> None:
        """The node powers off: its processes die, and the API server only sees it NotReady."""
        self.agent_down(node)
        self._kill_processes(node)

    def agent_down(self, node: str) -> None:
        """The node's agent stops (SIGSTOP, SIGKILL, a network partition): NotReady, processes live on."""
        self.nodes[node] = False
        for pod in self.pods.values():
            if pod.node == node:
                pod.ready = False  # the node lifecycle controller marks them not Ready

    def node_up(self, node: str) -> None:
        if node not in self.nodes:
            return  # deleted: a new node of that name would register afresh
        self.nodes[node] = True
        # The agent is back: it stops the processes of pods that no longer exist.
        for orphan in [o for o in self.orphans if o.node == node]:
            orphan.process = False
            self.orphans.remove(orphan)
        for pod in self.pods.values():
            if pod.node == node and pod.running and not pod.process and pod.terminated is None:
                # The machine rebooted: the kubelet finds the container gone (restartPolicy Never).
                pod.phase, pod.running, pod.ready = "Failed", False, False
                pod.terminated = Termination(exit_code=137, reason="ContainerStatusUnknown", message="")

    def _kill_processes(self, node: str) -> None:
        for pod in [*self.pods.values(), *self.orphans]:
            if pod.node == node:
                pod.process = False
        self.orphans = [o for o in self.orphans if o.node != node]

    def taint_out_of_service(self, node: str) -> None:
        """Kubernetes' non-graceful node shutdown: the node is off, and a person says so."""
        self.agent_down(node)
        self._kill_processes(node)
        self.out_of_service.add(node)

    def delete_node(self, node: str) -> None:
        """A person or the cloud controller deletes the Node object of a machine that is gone."""
        self._kill_processes(node)
        self.nodes.pop(node, None)

    def write_records(self, status: ElasticEPClusterStatus) -> None:
        """What the reconciler writes on the CR before a status: the epoch and incarnation floors and the
        group's spec."""
        self.epoch_floor = max(self.epoch_floor, status.membership.epoch)
        self.incarnation_floor = max([self.incarnation_floor, *(m.incarnation for m in status.members)])
        if status.group_spec is not None:
            self.group_record = {"spec": status.group_spec, "restartGeneration": status.restart_generation}

    def edit_spec(self, **wire: object) -> None:
        """A person edits the spec (a new generation)."""
        current = self.spec.model_dump(mode="json", by_alias=True)
        self.spec = ElasticEPClusterSpec.model_validate({**current, **wire})
        self.generation += 1

    def wipe_status(self) -> None:
        """`kubectl patch --subresource=status -p '{"status":null}'`, or a backup restored without it."""
        self.status = ElasticEPClusterStatus()

    # ---------------------------------------------------------------- driving
    def settle(self, max_steps: int = 400) -> None:
        """No more faults: reconcile, tick, let time pass until every member is Healthy or the CR Failed."""
        for _ in range(max_steps):
            self.reconcile()
            if self.done():
                return
            self.tick()
            self.advance(min(max(self.last_requeue or 0.5, 0.05), 30.0))
        raise InvariantError(f"did not settle: {summary(self.status)}")

    def done(self) -> bool:
        st = self.status
        if st.phase == Phase.FAILED:
            return True
        return (
            st.phase == Phase.RUNNING
            and bool(st.members)
            and all(m.state == MemberState.HEALTHY for m in st.members)
            and len(st.membership.active_ranks) == self.spec.world_size
        )


def check_world(w: World) -> None:
    """Invariants of the world after each reconcile: never two live processes (incarnations) of one member."""
    by_member: dict[int, list[SimPod]] = {}
    for p in w.processes():
        by_member.setdefault(p.member, []).append(p)
    for member, procs in by_member.items():
        if len(procs) > 1:
            raise InvariantError(
                f"member {member} has {len(procs)} live incarnations: "
                + ", ".join(f"{p.name}/i{p.incarnation}" for p in procs)
            )
    if gang.queued(w.spec):
        groups = {p.pod_group for p in w.pods.values() if not p.deleting}
        if len(groups) > 1 or None in groups:
            raise InvariantError(f"member pods of a queued cluster in pod groups {sorted(map(str, groups))}")


def summary(st: ElasticEPClusterStatus) -> str:
    return f"{st.phase.value} epoch={st.membership.epoch} " + " ".join(
        f"{m.index}:{m.state.value}/i{m.incarnation}" for m in st.members
    )


def check_step(before: ElasticEPClusterStatus, p: A.Plan, obs: Observed) -> None:
    """Invariants of one plan() step (see the issue): checked at every step of every simulation."""
    after = p.status
    if after.membership.epoch < before.membership.epoch:
        raise InvariantError("epoch decreased")
    creates = [a for a in p.actions if isinstance(a, A.CreatePod)]
    members = {m.index: m for m in after.members}
    if len({c.member for c in creates}) != len(creates):
        raise InvariantError("two pods created for one member in one step")
    for c in creates:
        # One recovery at a time per member: never a second pod while one of the member exists.
        if obs.pods_of(c.member):
            raise InvariantError(f"pod created for member {c.member} while one of its pods exists")
        m = members[c.member]
        if c.join and m.state != MemberState.RESTARTING:
            raise InvariantError(f"join pod for member {c.member} in state {m.state}")
        if not c.join:
            # A fresh pod (no join flag) only while no other member serves and no old pod is left anywhere.
            if any(x.state != MemberState.PENDING for x in after.members):
                raise InvariantError(f"fresh pod for member {c.member} while others serve: {summary(after)}")
            for pod in obs.pods:
                if pod.incarnation != members[pod.member].incarnation or pod.join:
                    raise InvariantError(f"fresh pod for member {c.member} while old pod {pod.name} lives")
    # Survivors never leave activeRanks unless they fail (or the whole group restarts).
    failed_members = {
        a.member
        for a in p.actions
        if isinstance(a, A.EmitEvent) and a.type == "Warning" and a.member is not None
    }
    group = any(isinstance(a, A.RecordGroupRestart) for a in p.actions) or after.phase == Phase.FAILED
    for old in before.members:
        left = old.state == MemberState.HEALTHY and members[old.index].state != MemberState.HEALTHY
        regrouped = group or after.group_restarts != before.group_restarts
        if left and old.index not in failed_members and not regrouped:
            raise InvariantError(f"healthy member {old.index} left without failing")
    check_moves(before, p)
    active = {
        r
        for m in after.members
        if m.state == MemberState.HEALTHY
        for r in range(m.first_rank, m.first_rank + m.rank_count)
    }
    if set(after.membership.active_ranks) != active:
        raise InvariantError("activeRanks differ from the Healthy members")
    if set(after.membership.joining_ranks) & set(after.membership.active_ranks):
        raise InvariantError("a rank is both active and joining")


def check_moves(before: ElasticEPClusterStatus, p: A.Plan) -> None:
    """Every member state change of the step went through the transition table: replaying the plan's moves
    from the states before (a member list built afresh starts at `members.INITIAL`) must give each move's
    source, use only pairs of the table, and end at the state the new status holds. A state written past
    `members.move` breaks one of the three."""
    after = p.status
    old = {m.index: m.state for m in before.members} if len(before.members) == len(after.members) else {}
    state = {m.index: old.get(m.index, members.INITIAL) for m in after.members}
    for mv in p.moves:
        if mv.rebuilt:  # the state read back from the pods after a status loss (planner `_rebuild`)
            state[mv.member] = mv.target
            continue
        if mv.source != state[mv.member] or not members.can_transition(mv.source, mv.target):
            raise InvariantError(
                f"member {mv.member}: move {mv.source.value} -> {mv.target.value} while it was "
                f"{state[mv.member].value}: a state was written past the transition table"
            )
        state[mv.member] = mv.target
    for m in after.members:
        if m.state != state[m.index]:
            raise InvariantError(
                f"member {m.index} is {m.state.value} but its moves end at {state[m.index].value}: "
                "a state was written past the transition table"
            )
