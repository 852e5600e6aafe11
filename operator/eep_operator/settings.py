"""Operator settings: one frozen dataclass of grouped sub-settings, parsed once in `__main__` (never from the
environment in library code)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WatchSettings:
    namespaces: tuple[str, ...] = ()
    """Namespaces to serve; empty means every namespace (`--all-namespaces`)."""
    resync_seconds: float = 10.0
    """Seconds between timer-driven reconciles of every CR (a safety net; events drive the normal path)."""


@dataclass(frozen=True)
class LeaseSettings:
    """Leader election through a coordination.k8s.io/v1 Lease: only the holder acts."""

    enabled: bool = True
    name: str = "elastic-ep-operator"
    """Lease name (`--peering NAME`)."""
    namespace: str = "default"
    """Namespace of the Lease."""
    identity: str = ""
    """This process's holder identity (hostname-pid when empty)."""
    duration_seconds: float = 15.0
    """Seconds without renewal after which another process may take the Lease."""
    renew_seconds: float = 5.0
    """Seconds between renewals (and acquisition attempts)."""


@dataclass(frozen=True)
class ServerSettings:
    metrics_port: int = 9090
    """Port of the Prometheus `/metrics` endpoint (0: none)."""
    health_port: int = 8081
    """Port of kopf's liveness endpoint `/healthz` (0: none)."""
    host: str = "0.0.0.0"


@dataclass(frozen=True)
class Settings:
    watch: WatchSettings = field(default_factory=WatchSettings)
    lease: LeaseSettings = field(default_factory=LeaseSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    kubeconfig: str | None = None
    """Path of a kubeconfig; None: in-cluster config, else the default kubeconfig."""
    request_timeout_seconds: float = 10.0
    """Timeout of one API request of the operator's own client."""
    reconcile_threads: int = 16
    """Reconciles run at once (different CRs; one CR is never reconciled twice at a time). The client's
    connection pool is sized from it, so no thread waits for, or throws away, a TLS connection."""
