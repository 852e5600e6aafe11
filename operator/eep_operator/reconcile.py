"""One reconcile of one ElasticEPCluster: fetch -> observe -> plan -> write status -> execute.

Called by every kopf handler (CR, pod, node, timer, resume) through `handlers.Runtime`, always the same way:
level-triggered, recomputed from a fresh GET of the CR (never kopf's cached body, which may predate our own
last write) and fresh pod/node lists. The status is written first, compare-and-set on the resourceVersion it
was computed from; on 409 the whole step is recomputed (up to `max_conflicts` times). See
`eep_operator.core.planner` for why the status goes before the actions.

`reconcile()` never raises. A Kubernetes error ends the step with a requeue after `error_requeue_seconds`.
Any other exception (a bug, or an object the planner cannot act on, such as a status edited by hand) is
logged with its traceback, counted in `elasticep_reconcile_errors_total` and posted as a Warning Event
`ReconcileError` on the CR (a lasting error: its 1st, 2nd, 4th, 8th... time in a row); the CR is tried again
after a backoff that doubles per consecutive error (up to `error_backoff_max_seconds`), or on its next event.
Other CRs are not affected.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from eep_contract.v1alpha1 import (
    Annotations,
    ElasticEPClusterSpec,
    ElasticEPClusterStatus,
    EngineName,
    Labels,
)
from eep_operator.core.actions import (
    Action,
    CreatePod,
    EmitEvent,
    EnsurePodDisruptionBudget,
    EnsureService,
    UpdateService,
)
from eep_operator.core.admission import AdmissionTarget, admission_target
from eep_operator.core.observe import NodeObs, Observed, observe
from eep_operator.core.planner import plan
from eep_operator.core.podspec import pdb_names
from eep_operator.core.revision import with_policy
from eep_operator.io.admission import AdmissionTrigger
from eep_operator.io.events import ClusterRef, EventSink
from eep_operator.io.executor import Executor
from eep_operator.io.groupview import fetch_group_view
from eep_operator.io.kube import ConflictError, KubeClient, KubeError, PermanentError
from eep_operator.metrics import OperatorMetrics

log = logging.getLogger("eep_operator.reconcile")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Result:
    requeue_at: float | None
    """`time.monotonic()` at which the planner wants to look again (a backoff or a timeout ends), if any.
    Absolute: the planner's delay counts from its own clock reading, so the API calls that follow the plan
    (status write, pod deletes, Events: up to a second under load) must not push a backoff's end further."""
    error: str | None = None


@dataclass(frozen=True)
class _Refusal:
    """The API server refused a request of this CR's plan for good (`streak` times in a row)."""

    streak: int
    retry_at: float
    """`time.monotonic()` before which no create of this CR is tried again."""
    message: str
    status_write: bool = False
    """The refused request was the status write itself (then nothing is written until `retry_at`)."""


_LOST_NODE = NodeObs(name="", ready=False)
_STATUS_WRITE = "writing the status"
KUBE_CREATES = (CreatePod, EnsureService, EnsurePodDisruptionBudget)


def _records(status: ElasticEPClusterStatus, observed: Observed) -> dict[str, str]:
    """The CR annotations the new status needs written first (`Annotations.EPOCH_FLOOR`,
    `INCARNATION_FLOOR`, `GROUP_SPEC`)."""
    out: dict[str, str] = {}
    if status.membership.epoch > observed.epoch_floor:
        out[Annotations.EPOCH_FLOOR] = str(status.membership.epoch)
    incarnation = max((m.incarnation for m in status.members), default=0)
    if incarnation > observed.incarnation_floor:
        out[Annotations.INCARNATION_FLOOR] = str(incarnation)
    if status.group_spec is not None:
        record = {"spec": status.group_spec, "restartGeneration": status.restart_generation}
        if observed.group_record != record:
            out[Annotations.GROUP_SPEC] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return out


def _group_spec(spec: ElasticEPClusterSpec, status: ElasticEPClusterStatus) -> ElasticEPClusterSpec:
    """The spec the running group was started with (its engine, its port), the current one if unknown."""
    if status.group_spec is None:
        return spec
    try:
        return with_policy(status.group_spec, spec)
    except ValidationError:
        return spec


def _describe(action: Action) -> str:
    if isinstance(action, CreatePod):
        return f"creating pod {action.name} (member {action.member})"
    if isinstance(action, EnsureService | EnsurePodDisruptionBudget):
        return f"creating {action.manifest['kind']} {action.manifest['metadata']['name']}"
    return type(action).__name__


class _UnexpectedError(Exception):
    """A reconcile of `ref` raised `cause`, which is not a Kubernetes API error (it is also `__cause__`)."""

    def __init__(self, ref: ClusterRef, cause: Exception) -> None:
        super().__init__(f"{ref.namespace}/{ref.name}: {cause!r}")
        self.ref = ref
        self.cause = cause


class Reconciler:
    def __init__(
        self,
        *,
        kube: KubeClient,
        events: EventSink,
        metrics: OperatorMetrics,
        clock: Callable[[], datetime] = utc_now,
        max_conflicts: int = 5,
        error_requeue_seconds: float = 1.0,
        error_backoff_max_seconds: float = 300.0,
        node_cache_seconds: float = 0.5,
        admission: AdmissionTrigger | None = None,
        group_view_timeout_seconds: float = 1.0,
    ) -> None:
        self.kube = kube
        # The SGLang admission trigger's senders (None: never send); told after every step what should run.
        self.admission = admission
        self.events = events
        self.metrics = metrics
        self.executor = Executor(kube, events, metrics)
        self.clock = clock
        self.max_conflicts = max_conflicts
        self.error_requeue = error_requeue_seconds
        self.error_backoff_max = error_backoff_max_seconds
        # Per CR: consecutive unexpected errors and the last one's text (reset by a reconcile without one).
        # A CR is never reconciled by two threads at once (handlers.Runtime): one writer per entry.
        self._error_streak: dict[tuple[str, str], tuple[int, str]] = {}
        # Every reconcile needs the nodes; at scale (hundreds of reconciles a second) one list per
        # `node_cache_seconds` is plenty: a node's readiness itself only changes after tens of seconds.
        self.node_cache_seconds = node_cache_seconds
        self._nodes: tuple[float, list[dict[str, object]]] | None = None
        self._nodes_lock = threading.Lock()
        # Our Service, once seen, is only ever removed with the CR (ownerReference): check it rarely.
        self._service_seen: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._pdb_seen: dict[tuple[str, str], float] = {}
        # Per CR: the last refused request (a 403/422 on a create) until a create goes through.
        self._refusals: dict[tuple[str, str], _Refusal] = {}
        self.group_view_timeout = group_view_timeout_seconds

    def _admit(self, namespace: str, name: str, target: AdmissionTarget | None) -> None:
        if self.admission is not None:
            self.admission.update(namespace, name, target)

    def _list_nodes(self) -> list[dict[str, object]]:
        with self._nodes_lock:
            now = time.monotonic()
            if self._nodes is None or now - self._nodes[0] > self.node_cache_seconds:
                self._nodes = (now, self.kube.list_nodes())
            return self._nodes[1]

    def _service(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The cluster's Service (None: absent), read at most every 30 s: only the CR's deletion removes it
        (ownerReference), and a hand edit of its ports may wait that long to be undone."""
        key = (namespace, name)
        seen = self._service_seen.get(key)
        if seen is not None and time.monotonic() - seen[0] < 30.0:
            return seen[1]
        svc = self.kube.get_service(namespace, name)
        if svc is not None:
            self._service_seen[key] = (time.monotonic(), svc)
        return svc

    def _pdb_exists(self, namespace: str, name: str) -> bool:
        key = (namespace, name)
        seen = self._pdb_seen.get(key)
        if seen is not None and time.monotonic() - seen < 30.0:
            return True
        exists = self.kube.pdb_exists(namespace, name)
        if exists:
            self._pdb_seen[key] = time.monotonic()
        return exists

    def reconcile(self, namespace: str, name: str) -> Result:
        """One level-triggered step for the CR `namespace/name`. Never raises (see the module docstring)."""
        started = time.monotonic()
        try:
            result = self._reconcile(namespace, name)
        except KubeError as e:
            log.warning("reconcile failed: %s", e, extra={"cluster": f"{namespace}/{name}"})
            result = Result(requeue_at=time.monotonic() + self.error_requeue, error=str(e))
        except _UnexpectedError as e:
            result = self._unexpected(e.ref, e.cause)
        except Exception as e:  # before the CR was read: no uid to post an Event on
            result = self._unexpected(ClusterRef(namespace, name, ""), e)
        else:
            self._error_streak.pop((namespace, name), None)
            self.metrics.reconciled(namespace, name, time.monotonic() - started, time.time(), error=False)
            return result
        self.metrics.reconciled(namespace, name, time.monotonic() - started, time.time(), error=True)
        return result

    def _unexpected(self, ref: ClusterRef, error: Exception) -> Result:
        """Record an exception that is not a Kubernetes error and pick the backoff to retry.

        Every CR event and the resync timer still reconcile the CR, so a lasting error repeats every few
        seconds: the Event and the traceback are posted for the 1st, 2nd, 4th, 8th... error in a row, and
        whenever the error changes; the others log one line.
        """
        key = (ref.namespace, ref.name)
        what = type(error).__name__ + (f": {error}" if str(error) else "")
        frames = traceback.extract_tb(error.__traceback__)
        if frames:  # where it was raised: a bare `assert` has no message of its own
            what += f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name})"
        streak, last = self._error_streak.get(key, (0, ""))
        streak += 1
        self._error_streak[key] = (streak, what)
        delay = min(self.error_backoff_max, self.error_requeue * 2 ** min(streak - 1, 32))
        report = what != last or streak & (streak - 1) == 0
        log.error(
            "reconcile of %s/%s failed (%d in a row), next try in %gs: %s",
            ref.namespace, ref.name, streak, delay, what,
            exc_info=error if report else None, extra={"cluster": f"{ref.namespace}/{ref.name}"},
        )  # fmt: skip
        if report and ref.uid:
            message = f"{what}; {streak} failed reconcile(s) in a row, next try in {delay:g}s"
            try:
                self.events.emit(ref, EmitEvent("Warning", "ReconcileError", message), self.clock())
            except Exception:  # the sink is best effort already; this is the last line of defence
                log.exception("could not post the ReconcileError event", extra={"cluster": ref.name})
        return Result(requeue_at=time.monotonic() + delay, error=what)

    def _reconcile(self, namespace: str, name: str) -> Result:
        for _ in range(self.max_conflicts):
            cr = self.kube.get_cluster(namespace, name)
            if cr is None or cr["metadata"].get("deletionTimestamp"):
                # Pods and the Service carry ownerReferences: the garbage collector removes them.
                self.metrics.forget(namespace, name)
                self._admit(namespace, name, None)
                return Result(requeue_at=None)
            ref = ClusterRef(namespace, name, cr["metadata"].get("uid", ""))
            try:
                result = self._step(ref, cr)
            except KubeError:
                raise
            except Exception as e:
                raise _UnexpectedError(ref, e) from e
            if result is not None:
                return result
        return Result(requeue_at=time.monotonic() + self.error_requeue, error="too many conflicts")

    def _step(self, ref: ClusterRef, cr: dict[str, Any]) -> Result | None:
        """Observe, plan, write the status, execute. None: the status write lost a race (recompute)."""
        namespace, name = ref.namespace, ref.name
        try:
            spec = ElasticEPClusterSpec.model_validate(cr.get("spec") or {})
            status = ElasticEPClusterStatus.model_validate(cr.get("status") or {})
        except ValidationError as e:
            # The CRD schema should have rejected it; say so where a person looks, and do nothing.
            msg = f"spec/status does not match the contract: {e.errors()[:3]}"
            self.events.emit(ref, EmitEvent("Warning", "InvalidSpec", msg), self.clock())
            self._admit(namespace, name, None)
            return Result(requeue_at=None, error=msg)
        pods = self.kube.list_pods(namespace, f"{Labels.CLUSTER}={name}")
        nodes = self._list_nodes()
        key = (namespace, name)
        refusal = self._refusals.get(key)
        service = self._service(namespace, name)
        observed = observe(
            cr,
            pods,
            nodes,
            service_exists=service is not None,
            service_spec=None if service is None else service.get("spec") or {},
            pdb_exists=all(self._pdb_exists(namespace, n) for n in pdb_names(spec, name)),
            refused=refusal.message if refusal is not None else None,
        )
        observed = self._with_group_view(_group_spec(spec, status), observed)
        now, planned_at = self.clock(), time.monotonic()
        p = plan(spec, status, observed, now)
        if refusal is not None and refusal.status_write and time.monotonic() < refusal.retry_at:
            return Result(requeue_at=refusal.retry_at)  # the status was refused: wait before trying again
        if p.status != status:
            try:
                records = _records(p.status, observed)
                if records:
                    # Write-ahead, like the status before the actions: no status ever shows an epoch above
                    # the floor or a group spec not recorded, so a lost status resumes above every epoch a
                    # worker has seen and with the spec the group runs.
                    cr = self.kube.annotate_cluster(cr, records)
                self.kube.replace_status(cr, p.status.to_wire())
            except ConflictError:
                return None  # someone wrote first (another operator, the user): recompute from fresh state
            except PermanentError as e:
                # The API server refuses the status itself (a CRD older than this operator, an admission
                # policy): nothing can be said on the status, so an Event says it, with a growing interval.
                return Result(requeue_at=self._refused(ref, _STATUS_WRITE, e, refusal, now))
        if any(isinstance(a, UpdateService) for a in p.actions):
            self._service_seen.pop(key, None)  # read it again next time
        retry_at = self._execute(ref, p.actions, now, refusal)
        self.metrics.update_from_status(namespace, name, spec, p.status, now)
        self._admit(namespace, name, admission_target(_group_spec(spec, p.status), p.status, observed))
        wanted = None if p.requeue_after is None else planned_at + p.requeue_after
        return Result(requeue_at=min((t for t in (wanted, retry_at) if t is not None), default=None))

    def _refused(
        self, ref: ClusterRef, what: str, error: PermanentError, refusal: _Refusal | None, now: datetime
    ) -> float:
        """Remember a refusal (one more in a row), say it (the 1st, 2nd, 4th... in a row: a Warning Event
        `APIRequestRefused` and a log line), and return the monotonic time to try again."""
        streak = (refusal.streak if refusal is not None else 0) + 1
        delay = min(self.error_backoff_max, self.error_requeue * 2 ** min(streak, 32))
        new = _Refusal(
            streak=streak,
            retry_at=time.monotonic() + delay,
            message=f"{what} refused: {error}",
            status_write=what == _STATUS_WRITE,
        )
        self._refusals[(ref.namespace, ref.name)] = new
        message = f"{new.message}; {streak} refusal(s) in a row, next try in {delay:g}s"
        log.warning("%s", message, extra={"cluster": f"{ref.namespace}/{ref.name}"})
        if streak & (streak - 1) == 0:
            self.events.emit(ref, EmitEvent("Warning", "APIRequestRefused", message[:1024]), now)
        return new.retry_at

    def _with_group_view(self, spec: ElasticEPClusterSpec, observed: Observed) -> Observed:
        """Ask member 0 which ranks are live, only while a member's node is lost (the planner's evidence that
        a lost node's ranks are gone, `planner.gone_evidence`). The reference worker serves the view; other
        engines do not, and then only the node itself can give evidence."""
        if spec.engine.name != EngineName.EEP_WORKER:
            return observed
        lost = [p for p in observed.pods if p.node and not (observed.nodes.get(p.node) or _LOST_NODE).ready]
        leader = next((p for p in reversed(observed.pods_of(0)) if p.ip and not p.deleting), None)
        if not lost or leader is None or leader.ip is None:
            return observed
        view = fetch_group_view(leader.ip, spec.engine.port, self.group_view_timeout)
        if view is None:
            return observed
        return replace(observed, live_ranks=frozenset(view.live_ranks))

    def _execute(
        self, ref: ClusterRef, actions: tuple[Action, ...], now: datetime, refusal: _Refusal | None
    ) -> float | None:
        """Apply the plan's actions. A request the API server refuses for good (403 Forbidden: a quota, Pod
        Security, RBAC; 422 Invalid) is not retried every second: the CR's Stalled condition (next plan) and
        a Warning Event `APIRequestRefused` say what was refused and why, and creates wait a backoff that
        doubles per refusal in a row. Returns the monotonic time to try again, if waiting."""
        key = (ref.namespace, ref.name)
        waiting = refusal is not None and time.monotonic() < refusal.retry_at
        for action in actions:
            if waiting and isinstance(action, KUBE_CREATES):
                continue
            try:
                self.executor.apply(ref, (action,), now)
            except PermanentError as e:
                return self._refused(ref, _describe(action), e, refusal, now)
        if refusal is not None and not waiting:
            self._refusals.pop(key, None)  # every create went through
            return time.monotonic()  # one more plan, to clear the Stalled condition
        return refusal.retry_at if refusal is not None else None
