"""The kopf wiring without a cluster: no handler makes kopf put its finalizer on a CR, the pod watch is
filtered by the API server, and `Runtime.kick_all` removes the finalizer older versions left."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
from kopf._cogs.structs.references import Resource

from eep_contract.v1alpha1 import GROUP, MANAGED_BY_VALUE, PLURAL, VERSION, Labels
from eep_operator.handlers import KOPF_FINALIZER, Runtime, register
from eep_operator.reconcile import Result
from eep_operator.settings import Settings, WatchSettings


class FakeReconciler:
    admission = None

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def reconcile(self, namespace: str, name: str) -> Result:
        self.calls.append((namespace, name))
        return Result(requeue_at=None)


class FakeKube:
    """list_clusters and remove_finalizer only (all kick_all uses)."""

    def __init__(self, crs: list[dict[str, Any]]) -> None:
        self.crs = crs
        self.removed: list[tuple[str, str, str]] = []

    def list_clusters(self, namespace: str | None) -> list[dict[str, Any]]:
        return self.crs

    def remove_finalizer(self, namespace: str, name: str, finalizer: str) -> bool:
        self.removed.append((namespace, name, finalizer))
        return True


def cr(name: str, *finalizers: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "finalizers": list(finalizers)}}


def make_runtime(kube: FakeKube, resync_seconds: float = 10.0) -> tuple[Runtime, FakeReconciler]:
    rec = FakeReconciler()
    settings = Settings(watch=WatchSettings(namespaces=("ns",), resync_seconds=resync_seconds))
    return Runtime(rec, kube, settings, None), rec  # type: ignore[arg-type]


def registered(kube: FakeKube) -> tuple[kopf.OperatorRegistry, Runtime, FakeReconciler]:
    registry = kopf.OperatorRegistry()
    runtime, rec = make_runtime(kube)
    register(registry, runtime)
    return registry, runtime, rec


def test_no_handler_requires_kopfs_finalizer() -> None:
    """Before the fix: the `cluster_resync` timer is a spawning handler with requires_finalizer=True."""
    registry, _, _ = registered(FakeKube([]))
    kinds = {"spawning": registry._spawning._handlers, "changing": registry._changing._handlers}
    needing = {k: [h.id for h in hs if h.requires_finalizer] for k, hs in kinds.items()}
    assert needing == {"spawning": [], "changing": []}
    # Only watching handlers on resources: kopf then never adds a finalizer, whatever the cause.
    assert not registry._spawning._handlers and not registry._changing._handlers


def test_the_finalizer_name_is_kopfs_default() -> None:
    assert kopf.OperatorSettings().persistence.finalizer == KOPF_FINALIZER


def _startup_and_cleanup(registry: kopf.OperatorRegistry) -> tuple[Any, Any]:
    acts = {h.id.rsplit(".", 1)[-1]: h.fn for h in registry._activities._handlers}
    return acts["startup"], acts["cleanup"]


def test_startup_selects_pods_on_the_server_and_runs_one_pass() -> None:
    """Before the fix: no label selector for pods (kopf listed every pod of the namespace)."""
    kube = FakeKube([cr("a"), cr("b", KOPF_FINALIZER)])
    registry, runtime, rec = registered(kube)
    startup, cleanup = _startup_and_cleanup(registry)
    ksettings = kopf.OperatorSettings()

    async def go() -> None:
        await startup(settings=ksettings)
        await asyncio.sleep(0.3)
        await cleanup()

    asyncio.run(go())
    pods = Resource("", "v1", "pods", namespaced=True, preferred=True)
    crs = Resource(GROUP, VERSION, PLURAL, namespaced=True, preferred=True)
    assert ksettings.watching.label_selectors.collect(pods) == [f"{Labels.MANAGED_BY}={MANAGED_BY_VALUE}"]
    assert ksettings.watching.label_selectors.collect(crs) == []
    # Named namespaces: kopf must not scan Namespace objects. Without that cluster-scope permission it
    # retried for about a minute before it watched pods, and `make demo` saw a member's death only at the
    # 10 s resync (detect_s=9.82 before, 0.82 after).
    assert ksettings.scanning.disabled
    assert sorted(rec.calls) == [("ns", "a"), ("ns", "b")]
    assert kube.removed == [("ns", "b", KOPF_FINALIZER)]
    assert not runtime._tasks


def test_kick_all_removes_only_the_kopf_finalizer_and_resync_repeats() -> None:
    kube = FakeKube([cr("a", "other.io/keep"), cr("b", "other.io/keep", KOPF_FINALIZER), cr("c")])
    runtime, rec = make_runtime(kube, resync_seconds=0.1)

    async def go() -> None:
        stopped = asyncio.Event()
        task = asyncio.get_running_loop().create_task(runtime.resync_forever(stopped))
        await asyncio.sleep(0.35)
        stopped.set()
        await task
        await asyncio.sleep(0.1)

    asyncio.run(go())
    assert set(kube.removed) == {("ns", "b", KOPF_FINALIZER)}
    assert len(kube.removed) >= 2  # every pass (the fake keeps returning it)
    assert rec.calls.count(("ns", "a")) >= 2
