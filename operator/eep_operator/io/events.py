"""Kubernetes Events on the ElasticEPCluster, plus one structured log line per decision.

Called by the executor for every `EmitEvent` action. Events are best effort: an API error is logged, never
raised, because losing an Event must not stop a recovery (the status and the metrics still record it).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from eep_contract.v1alpha1 import API_VERSION, KIND
from eep_operator.core.actions import EmitEvent
from eep_operator.io.kube import KubeClient, KubeError

log = logging.getLogger("eep_operator.events")

COMPONENT = "elastic-ep-operator"


@dataclass(frozen=True)
class ClusterRef:
    """The CR an Event is about."""

    namespace: str
    name: str
    uid: str


class EventSink(Protocol):
    def emit(self, ref: ClusterRef, event: EmitEvent, now: datetime) -> None: ...


def render_event(ref: ClusterRef, event: EmitEvent, now: datetime) -> dict[str, object]:
    """A core/v1 Event about the CR; the member index (if any) goes into the message prefix."""
    stamp = now.isoformat().replace("+00:00", "Z")
    prefix = f"[member {event.member}] " if event.member is not None else ""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{ref.name}.{uuid.uuid4().hex[:16]}", "namespace": ref.namespace},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": ref.name,
            "namespace": ref.namespace,
            "uid": ref.uid,
        },
        "type": event.type,
        "reason": event.reason,
        "message": (prefix + event.message)[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class KubeEventSink:
    """Posts Events through the `KubeClient` and logs each decision as one structured line."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube

    def emit(self, ref: ClusterRef, event: EmitEvent, now: datetime) -> None:
        level = logging.WARNING if event.type == "Warning" else logging.INFO
        log.log(
            level,
            "decision cluster=%s/%s member=%s epoch=%d reason=%s: %s",
            ref.namespace,
            ref.name,
            "-" if event.member is None else event.member,
            event.epoch,
            event.reason,
            event.message,
            extra={
                "cluster": f"{ref.namespace}/{ref.name}",
                "member": event.member,
                "epoch": event.epoch,
                "reason": event.reason,
            },
        )
        try:
            self.kube.create_event(render_event(ref, event, now))
        except KubeError as e:
            log.warning("could not post event %s: %s", event.reason, e, extra={"cluster": ref.name})
