"""kopf wiring: every event becomes the same level-triggered `Reconciler.reconcile(namespace, name)`.

- CR: `on.event` (covers create, update and resume: kopf lists every CR when it starts) and our own resync
  loop (`Runtime.resync_forever`: every CR every `resync_seconds` while leader, a safety net). `on.event`
  rather than `on.create/update/resume` because those persist handler progress in kopf annotations; ours
  lives in the status only. No handler may need kopf's finalizer (kopf's `requires_finalizer`: timers,
  daemons and non-optional `on.delete` do): with the operator uninstalled, a CR carrying it could never be
  deleted. The one that older versions left (their `kopf.timer`) is removed by `kick_all`.
- Pods with our managed-by label, selected by the API server (`settings.watching.label_selectors`; the
  handler's `labels=` alone filters in kopf, after every pod of the watched namespaces was listed, parsed
  and kept): mapped back to their CR by the `elasticep.io/cluster` label.
- Nodes: a node's readiness change or deletion reconciles every CR with a pod on that node (an index built
  from pod events).
- Leader election: a Lease (see `eep_operator.io.lease` for why not kopf peering); non-leaders watch but do
  not act; a new leader reconciles every CR at once.

`Runtime` serialises reconciles per CR (one at a time; events that arrive meanwhile collapse into one more
run) and schedules the planner's requeue at the absolute time it asked for. Reconciles run in threads (the
official client is sync).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from eep_contract.v1alpha1 import GROUP, MANAGED_BY_VALUE, PLURAL, VERSION, Labels
from eep_operator.io.kube import KubeClient, KubeError
from eep_operator.io.lease import LeaderElector
from eep_operator.reconcile import Reconciler
from eep_operator.settings import Settings

log = logging.getLogger("eep_operator.handlers")
Key = tuple[str, str]

KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
"""kopf's default `settings.persistence.finalizer`, put on every CR by versions that had a `kopf.timer`."""
POD_SELECTOR = f"{Labels.MANAGED_BY}={MANAGED_BY_VALUE}"
"""Server-side label selector of the pod watch: only our members' pods are listed and kept."""


class Runtime:
    """Per-CR serialisation, coalescing and delayed requeues on kopf's event loop."""

    def __init__(
        self, reconciler: Reconciler, kube: KubeClient, settings: Settings, elector: LeaderElector | None
    ) -> None:
        self.reconciler = reconciler
        self.kube = kube
        self.settings = settings
        self.elector = elector
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.pods_by_node: dict[str, set[Key]] = defaultdict(set)
        # Reconciles are API-bound; their own pool keeps them from queueing behind kopf's sync work.
        self.pool = ThreadPoolExecutor(max_workers=settings.reconcile_threads, thread_name_prefix="reconcile")

    def is_leader(self) -> bool:
        return self.elector is None or self.elector.is_leader()

    def kick(self, key: Key) -> None:
        """Reconcile `key` soon (returns at once)."""
        task = asyncio.get_running_loop().create_task(self.run(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, key: Key) -> None:
        if key in self._running:
            self._dirty.add(key)
            return
        self._running.add(key)
        requeue: float | None = None
        try:
            while True:
                self._dirty.discard(key)
                if not self.is_leader():
                    return
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self.pool, self.reconciler.reconcile, *key)
                requeue = result.requeue_at
                if key not in self._dirty:
                    break
        finally:
            self._running.discard(key)
        if requeue is not None:
            self.schedule(key, max(0.0, requeue - time.monotonic()))

    def schedule(self, key: Key, delay: float) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        old = self._timers.get(key)
        if old is not None and not old.cancelled() and old.when() <= when:
            return
        if old is not None:
            old.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.kick(key)

    async def kick_all(self) -> None:
        """Reconcile every CR we serve (a new leader, startup, the resync loop) and remove the kopf finalizer
        from any CR that still carries one (left by an older version)."""
        namespaces: list[str | None] = list(self.settings.watch.namespaces) or [None]
        for ns in namespaces:
            try:
                crs = await asyncio.to_thread(self.kube.list_clusters, ns)
            except KubeError as e:
                log.warning("could not list clusters: %s", e)
                continue
            for cr in crs:
                key = (cr["metadata"]["namespace"], cr["metadata"]["name"])
                if KOPF_FINALIZER in (cr["metadata"].get("finalizers") or ()):
                    await self.release_finalizer(key)
                self.kick(key)

    async def release_finalizer(self, key: Key) -> None:
        """Remove `KOPF_FINALIZER` from the CR `key` (others' finalizers stay); errors are logged."""
        try:
            if await asyncio.to_thread(self.kube.remove_finalizer, *key, KOPF_FINALIZER):
                log.info("removed the finalizer %s that an older version left on %s/%s", KOPF_FINALIZER, *key)
        except KubeError as e:
            log.warning("could not remove the finalizer %s from %s/%s: %s", KOPF_FINALIZER, *key, e)

    async def resync_forever(self, stopped: asyncio.Event) -> None:
        """Every `resync_seconds`, while leader, reconcile every CR (the safety net behind the events). Our
        own loop, not a `kopf.timer`: kopf puts its finalizer on every CR a timer serves."""
        while not stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), self.settings.watch.resync_seconds)
            if not stopped.is_set() and self.is_leader():
                await self.kick_all()

    def stop_side_work(self) -> None:
        """Stop what runs beside the reconciles (the SGLang admission trigger's senders): a stand-by operator
        or one shutting down must not keep prodding member 0."""
        if self.reconciler.admission is not None:
            self.reconciler.admission.stop_all()

    async def elect_forever(self, stopped: asyncio.Event) -> None:
        """Run the Lease elector; on becoming leader, reconcile everything."""
        assert self.elector is not None
        was_leader = False
        try:
            while not stopped.is_set():
                leader = await asyncio.to_thread(self.elector.step)
                if leader and not was_leader:
                    log.info("this operator is the leader now")
                    await self.kick_all()
                elif was_leader and not leader:
                    log.warning("lost the lease: standing by")
                    self.stop_side_work()
                was_leader = leader
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopped.wait(), self.settings.lease.renew_seconds)
        finally:
            await asyncio.to_thread(self.elector.release)


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    """Register every handler of the operator in `registry` (one registry per operator instance)."""
    stopped = asyncio.Event()

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True  # leadership is the Lease's job
        settings.posting.enabled = False  # our own Events carry searchable reasons
        settings.watching.server_timeout = 60
        settings.watching.client_timeout = 90
        settings.watching.connect_timeout = 10
        settings.networking.request_timeout = 30
        settings.watching.label_selectors["v1", "pods"] = POD_SELECTOR
        # With named namespaces kopf would list/watch Namespace objects (for glob patterns, which we do not
        # use) and, without that cluster-scope permission (the chart grants none in namespaces mode), retry
        # for about a minute before it watches anything: every pod event of that minute was lost, and a
        # member's death was seen only by the resync (measured: detection 9.8 s in `make demo`, 0.3 s once
        # the pod watch runs). The CRD exists before the operator starts (the chart installs it).
        settings.scanning.disabled = bool(runtime.settings.watch.namespaces)
        loop = asyncio.get_running_loop()
        # Without an elector this process leads from the start: one pass now, as a new leader makes.
        first = runtime.elect_forever(stopped) if runtime.elector is not None else runtime.kick_all()
        for coro in (first, runtime.resync_forever(stopped)):
            task = loop.create_task(coro)
            runtime._tasks.add(task)
            task.add_done_callback(runtime._tasks.discard)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A private registry has no default login handlers. kopf's own login_with_service_account assumes
        # https://kubernetes.default.svc:443; the official client honours KUBERNETES_SERVICE_HOST/PORT
        # (in-cluster) and falls back to $KUBECONFIG, which is what every other part of the project uses.
        # With --kubeconfig, that file (`__main__` exports it as $KUBECONFIG; the official client read its
        # default location at import time, so only kopf's own loader sees it).
        if runtime.settings.kubeconfig:
            return kopf.login_with_kubeconfig(**kwargs)
        return kopf.login_via_client(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        stopped.set()
        runtime.stop_side_work()
        for task in list(runtime._tasks):
            try:
                await asyncio.wait_for(asyncio.shield(task), 5)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def cluster_event(
        namespace: str | None, name: str, type: str, meta: kopf.Meta, status: kopf.Status, **_: Any
    ) -> None:
        if namespace is None:
            return
        if type == "DELETED":
            runtime.reconciler.metrics.forget(namespace, name)
            return
        if type == "MODIFIED" and status.get("observedGeneration") == meta.get("generation"):
            return  # our own status write (the spec did not change): nothing new to act on
        runtime.kick((namespace, name))

    # `labels=` repeats the server-side selector set at startup (kopf filters client-side with it).
    @kopf.on.event("", "v1", "pods", labels={Labels.MANAGED_BY: MANAGED_BY_VALUE}, registry=registry)
    async def pod_event(body: kopf.Body, namespace: str | None, type: str, **_: Any) -> None:
        cluster = (body.get("metadata", {}).get("labels") or {}).get(Labels.CLUSTER)
        if not cluster or namespace is None:
            return
        key = (namespace, cluster)
        node = (body.get("spec") or {}).get("nodeName")
        if node:
            if type == "DELETED":
                runtime.pods_by_node[node].discard(key)
            else:
                runtime.pods_by_node[node].add(key)
        runtime.kick(key)

    node_ready: dict[str, bool] = {}

    @kopf.on.event("", "v1", "nodes", registry=registry)
    async def node_event(body: kopf.Body, name: str, type: str, **_: Any) -> None:
        conds = {c.get("type"): c.get("status") for c in (body.get("status") or {}).get("conditions") or []}
        ready = type != "DELETED" and conds.get("Ready") == "True"
        if node_ready.get(name) == ready:
            return  # a heartbeat, not a change
        node_ready[name] = ready
        for key in list(runtime.pods_by_node.get(name, ())):
            runtime.kick(key)
