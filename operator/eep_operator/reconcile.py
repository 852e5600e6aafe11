"""One reconcile of one ElasticEPCluster: fetch -> observe -> plan -> write status -> execute.

Called by every kopf handler (CR, pod, node, timer, resume) through `handlers.Runtime`, always the same way:
level-triggered, recomputed from a fresh GET of the CR (never kopf's cached body, which may predate our own
last write) and fresh pod/node lists. The status is written first, compare-and-set on the resourceVersion it
was computed from; on 409 the whole step is recomputed (up to `max_conflicts` times). See
`eep_operator.core.planner` for why the status goes before the actions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError

from eep_operator.api.v1alpha1 import ElasticEPClusterSpec, ElasticEPClusterStatus, Labels
from eep_operator.core.actions import EmitEvent
from eep_operator.core.observe import observe
from eep_operator.core.planner import plan
from eep_operator.io.events import ClusterRef, EventSink
from eep_operator.io.executor import Executor
from eep_operator.io.kube import ConflictError, KubeClient, KubeError
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
        node_cache_seconds: float = 0.5,
    ) -> None:
        self.kube = kube
        self.events = events
        self.metrics = metrics
        self.executor = Executor(kube, events, metrics)
        self.clock = clock
        self.max_conflicts = max_conflicts
        self.error_requeue = error_requeue_seconds
        # Every reconcile needs the nodes; at scale (hundreds of reconciles a second) one list per
        # `node_cache_seconds` is plenty: a node's readiness itself only changes after tens of seconds.
        self.node_cache_seconds = node_cache_seconds
        self._nodes: tuple[float, list[dict[str, object]]] | None = None
        self._nodes_lock = threading.Lock()
        # Our Service, once seen, is only ever removed with the CR (ownerReference): check it rarely.
        self._service_seen: dict[tuple[str, str], float] = {}

    def _list_nodes(self) -> list[dict[str, object]]:
        with self._nodes_lock:
            now = time.monotonic()
            if self._nodes is None or now - self._nodes[0] > self.node_cache_seconds:
                self._nodes = (now, self.kube.list_nodes())
            return self._nodes[1]

    def _service_exists(self, namespace: str, name: str) -> bool:
        key = (namespace, name)
        seen = self._service_seen.get(key)
        if seen is not None and time.monotonic() - seen < 30.0:
            return True
        exists = self.kube.service_exists(namespace, name)
        if exists:
            self._service_seen[key] = time.monotonic()
        return exists

    def reconcile(self, namespace: str, name: str) -> Result:
        started = time.monotonic()
        try:
            result = self._reconcile(namespace, name)
        except KubeError as e:
            log.warning("reconcile failed: %s", e, extra={"cluster": f"{namespace}/{name}"})
            self.metrics.reconciled(namespace, name, time.monotonic() - started, time.time(), error=True)
            return Result(requeue_at=time.monotonic() + self.error_requeue, error=str(e))
        self.metrics.reconciled(namespace, name, time.monotonic() - started, time.time(), error=False)
        return result

    def _reconcile(self, namespace: str, name: str) -> Result:
        for _ in range(self.max_conflicts):
            cr = self.kube.get_cluster(namespace, name)
            if cr is None or cr["metadata"].get("deletionTimestamp"):
                # Pods and the Service carry ownerReferences: the garbage collector removes them.
                self.metrics.forget(namespace, name)
                return Result(requeue_at=None)
            ref = ClusterRef(namespace, name, cr["metadata"].get("uid", ""))
            try:
                spec = ElasticEPClusterSpec.model_validate(cr.get("spec") or {})
                status = ElasticEPClusterStatus.model_validate(cr.get("status") or {})
            except ValidationError as e:
                # The CRD schema should have rejected it; say so where a person looks, and do nothing.
                msg = f"spec/status does not match the contract: {e.errors()[:3]}"
                self.events.emit(ref, EmitEvent("Warning", "InvalidSpec", msg), self.clock())
                return Result(requeue_at=None, error=msg)
            pods = self.kube.list_pods(namespace, f"{Labels.CLUSTER}={name}")
            nodes = self._list_nodes()
            observed = observe(cr, pods, nodes, service_exists=self._service_exists(namespace, name))
            now, planned_at = self.clock(), time.monotonic()
            p = plan(spec, status, observed, now)
            if p.status != status:
                try:
                    self.kube.replace_status(cr, p.status.to_wire())
                except ConflictError:
                    continue  # someone wrote first (another operator, the user): recompute from fresh state
            self.executor.apply(ref, p.actions, now)
            self.metrics.update_from_status(namespace, name, spec, p.status, now)
            return Result(requeue_at=None if p.requeue_after is None else planned_at + p.requeue_after)
        return Result(requeue_at=time.monotonic() + self.error_requeue, error="too many conflicts")
