"""Applies a plan's actions, idempotently and in order (the one place where decisions touch the cluster).

Called by `eep_operator.reconcile` after the plan's status was written. AlreadyExists on create and
NotFound/Conflict (uid precondition) on delete mean the action already happened or no longer applies: success.
Transient errors are raised (as `TransientError`) after the client's own retries; the reconcile is then
repeated, and since every action is idempotent, repeating the whole plan is safe.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime

from eep_contract.v1alpha1 import Kueue
from eep_operator.core import actions as A
from eep_operator.io.events import ClusterRef, EventSink
from eep_operator.io.kube import AlreadyExistsError, ConflictError, KubeClient, NotFoundError
from eep_operator.metrics import OperatorMetrics

log = logging.getLogger("eep_operator.executor")


class Executor:
    def __init__(self, kube: KubeClient, events: EventSink, metrics: OperatorMetrics) -> None:
        self.kube = kube
        self.events = events
        self.metrics = metrics

    def apply(self, ref: ClusterRef, actions: tuple[A.Action, ...], now: datetime) -> None:
        """Apply every action. Raises the client's TransientError/PermanentError for Kubernetes actions."""
        for action in actions:
            self._apply_one(ref, action, now)

    def _apply_one(self, ref: ClusterRef, action: A.Action, now: datetime) -> None:
        extra = {"cluster": f"{ref.namespace}/{ref.name}"}
        if isinstance(action, A.UpdateService):
            meta = action.manifest["metadata"]
            # NotFound: deleted meanwhile; the next reconcile creates it again.
            with contextlib.suppress(NotFoundError):
                self.kube.patch_service_spec(meta["namespace"], meta["name"], action.manifest["spec"])
            log.info("updated Service %s to the group's ports", meta["name"], extra=extra)
        elif isinstance(action, A.EnsureService | A.EnsurePodDisruptionBudget | A.CreatePod):
            with contextlib.suppress(AlreadyExistsError):
                self.kube.create(action.manifest)
            if isinstance(action, A.CreatePod):
                log.info(
                    "created pod %s (member %d, incarnation %d, join=%s)",
                    action.name, action.member, action.incarnation, action.join,
                    extra={**extra, "member": action.member},
                )  # fmt: skip
        elif isinstance(action, A.DeletePod | A.ForceDeletePod):
            force = isinstance(action, A.ForceDeletePod)
            # NotFound: gone already. Conflict: another pod has the name now, nothing of ours to delete.
            with contextlib.suppress(NotFoundError, ConflictError):
                self.kube.delete_pod(ref.namespace, action.name, action.uid, force=force)
            log.info(
                "%sdeleted pod %s (member %d)", "force-" if force else "", action.name, action.member,
                extra={**extra, "member": action.member},
            )  # fmt: skip
        elif isinstance(action, A.ReleaseKueueFinalizer):
            # NotFound: gone already. Conflict: another pod, or the finalizer moved; the next plan looks
            # again.
            with contextlib.suppress(NotFoundError, ConflictError):
                self.kube.release_pod_finalizer(
                    ref.namespace, action.name, action.uid, action.index, Kueue.FINALIZER
                )
            log.info(
                "released Kueue's finalizer of pod %s (member %d)", action.name, action.member,
                extra={**extra, "member": action.member},
            )  # fmt: skip
        elif isinstance(action, A.EmitEvent):
            self.events.emit(ref, action, now)
        else:
            self.metrics.record(ref.namespace, ref.name, action)
