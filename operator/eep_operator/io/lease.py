"""Leader election with a coordination.k8s.io/v1 Lease, so that of several operator processes only one acts.

Why a Lease and not kopf peering: kopf peering needs its own CRDs (KopfPeering/ClusterKopfPeering), and two
operators of the *same* priority both freeze ("the cluster becomes not served"), so two identical replicas
would leave recoveries undone. A Lease is built into Kubernetes and gives exactly one holder among equals; a
stand-by takes over when the holder stops renewing (killed) or releases the Lease (clean shutdown). kopf's own
peering is switched off (standalone); every replica keeps watching so a new leader starts warm.

Expiry is judged like client-go does: by how long *this* process has seen the Lease unchanged (a monotonic
clock), never by comparing another host's `renewTime` with our wall clock. The holder stops acting before the
others may take over (`duration * 0.75` after its last successful renewal).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes import client

from eep_operator.io.kube import AlreadyExistsError, ConflictError, KubeError, NotFoundError, with_retries

log = logging.getLogger("eep_operator.lease")
Obj = dict[str, Any]


class LeaseClient(Protocol):
    def get(self, namespace: str, name: str) -> Obj | None: ...

    def create(self, namespace: str, body: Obj) -> Obj:
        """Raises AlreadyExistsError."""

    def replace(self, namespace: str, name: str, body: Obj) -> Obj:
        """Compare-and-set on body's resourceVersion. Raises ConflictError."""


class ApiLeaseClient:
    def __init__(self, api_client: client.ApiClient, timeout: float = 5.0) -> None:
        self.api = client.CoordinationV1Api(api_client)
        self.timeout = timeout

    def get(self, namespace: str, name: str) -> Obj | None:
        try:
            r: Any = with_retries(
                lambda: self.api.read_namespaced_lease(
                    name, namespace, _preload_content=False, _request_timeout=self.timeout
                ),
                attempts=2,
            )
        except NotFoundError:
            return None
        return dict(json.loads(r.data))

    def create(self, namespace: str, body: Obj) -> Obj:
        raw: Any = body  # the client accepts plain dicts
        r: Any = with_retries(
            lambda: self.api.create_namespaced_lease(
                namespace, raw, _preload_content=False, _request_timeout=self.timeout
            ),
            attempts=2,
        )
        return dict(json.loads(r.data))

    def replace(self, namespace: str, name: str, body: Obj) -> Obj:
        raw: Any = body
        r: Any = with_retries(
            lambda: self.api.replace_namespaced_lease(
                name, namespace, raw, _preload_content=False, _request_timeout=self.timeout
            ),
            attempts=2,
        )
        return dict(json.loads(r.data))


def _micro(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Call `step()` every `renew_seconds`; `is_leader()` says whether to act right now."""

    def __init__(
        self,
        leases: LeaseClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        duration_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.leases = leases
        self.namespace, self.name, self.identity = namespace, name, identity
        self.duration = duration_seconds
        self.monotonic, self.wall = monotonic, wall
        self._seen_version: str | None = None
        self._seen_at = 0.0
        self._renewed_at: float | None = None

    def is_leader(self) -> bool:
        return self._renewed_at is not None and self.monotonic() - self._renewed_at < self.duration * 0.75

    def _body(self, lease: Obj | None, transitions: int) -> Obj:
        now = _micro(self.wall())
        spec: Obj = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        old_spec = (lease or {}).get("spec") or {}
        spec["acquireTime"] = (
            old_spec.get("acquireTime") if old_spec.get("holderIdentity") == self.identity else now
        )
        meta: Obj = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            meta["resourceVersion"] = lease["metadata"]["resourceVersion"]
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    def step(self) -> bool:
        """Try to acquire or renew once; returns `is_leader()` afterwards. Never raises API errors."""
        started = self.monotonic()
        try:
            lease = self.leases.get(self.namespace, self.name)
            if lease is None:
                self.leases.create(self.namespace, self._body(None, 0))
                self._renewed_at = started
                log.info("acquired lease %s/%s (new)", self.namespace, self.name)
                return self.is_leader()
            version = lease["metadata"]["resourceVersion"]
            if version != self._seen_version:
                self._seen_version, self._seen_at = version, started
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            mine = holder == self.identity
            expired = started - self._seen_at >= self.duration
            if not (mine or not holder or expired):
                self._renewed_at = None
                return False
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
            new = self.leases.replace(self.namespace, self.name, self._body(lease, transitions))
            self._seen_version, self._seen_at = new["metadata"]["resourceVersion"], started
            if not mine:
                log.info("acquired lease %s/%s from %r", self.namespace, self.name, holder)
            self._renewed_at = started
        except (ConflictError, AlreadyExistsError):
            self._renewed_at = None  # someone else wrote first
        except KubeError as e:
            log.warning("lease %s/%s: %s", self.namespace, self.name, e)
        return self.is_leader()

    def release(self) -> None:
        """Give the Lease up (clean shutdown), so a stand-by takes over at once."""
        if self._renewed_at is None:
            return
        self._renewed_at = None
        try:
            lease = self.leases.get(self.namespace, self.name)
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                body = self._body(lease, int((lease.get("spec") or {}).get("leaseTransitions") or 0))
                body["spec"]["holderIdentity"] = ""
                self.leases.replace(self.namespace, self.name, body)
        except KubeError as e:
            log.warning("could not release lease: %s", e)
