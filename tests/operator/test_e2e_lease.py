"""The Lease elector against the real API server, with injected monotonic clocks (no sleeping)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from eep_operator.io.lease import ApiLeaseClient, LeaderElector

pytestmark = pytest.mark.cluster


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_one_holder_takeover_and_release(kube: Any, namespace: str) -> None:
    leases = ApiLeaseClient(kube)
    clock = Clock()

    def elector(identity: str) -> LeaderElector:
        return LeaderElector(
            leases, namespace=namespace, name="op", identity=identity, duration_seconds=10, monotonic=clock
        )

    a, b = elector("a"), elector("b")
    assert a.step() and not b.step()
    clock.t += 6
    assert a.step() and not b.step()  # renewed: b saw a change, its expiry clock restarts
    clock.t += 6
    assert not b.step()
    clock.t += 3  # a crashed after its renewal at t+6: 9 s ago
    assert not a.is_leader()  # a stops acting 7.5 s after its last renewal, before b may take over (10 s)
    clock.t += 2
    assert b.step() and b.is_leader()
    lease = client.CoordinationV1Api(kube).read_namespaced_lease("op", namespace)
    assert lease.spec.holder_identity == "b" and lease.spec.lease_transitions == 1
    assert not a.step()
    b.release()
    assert a.step() and a.is_leader()
