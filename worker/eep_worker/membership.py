"""Membership sources: where the leader learns {epoch, activeRanks, joiningRanks}.

Who calls it: the leader rank (global rank 0) starts one source and reads `latest()` once per step to build
the step plan. Sources run a background thread and keep the newest valid snapshot; `latest()` is a plain
attribute read. Every snapshot is validated with the contract (`eep_contract.wire.parse_membership`);
a malformed one is logged and ignored (the previous snapshot stays), and an epoch that goes backwards is
ignored too (fencing), so a source never crashes the worker.

- `KubeSource`: the ElasticEPCluster's `status.membership`, read-only: a namespaced list + watch of that
  one object (field selector on its name), re-listing on expiry (410 Gone) and on any stream error.
- `FileSource`: a JSON file (a Membership, or a status / whole object holding one), polled.
- `ZmqSource`: JSON messages from a ZMQ PUB feed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from eep_contract.v1alpha1 import GROUP, PLURAL, VERSION
from eep_contract.wire import parse_membership
from eep_worker.protocol import Snapshot

__all__ = ["FileSource", "KubeSource", "MembershipSource", "SnapshotHolder", "ZmqSource", "parse_snapshot"]

log = logging.getLogger(__name__)


class MembershipSource(Protocol):
    """A running source. `latest()` never raises and never blocks; `stop()` joins the thread."""

    def start(self) -> None: ...
    def latest(self) -> Snapshot | None: ...
    def stop(self) -> None: ...


def parse_snapshot(raw: Any) -> Snapshot:
    """A snapshot from JSON text/bytes or a dict, in the contract's wire form (`eep_contract.wire`).
    Raises ValueError."""
    snap = parse_membership(raw)
    return Snapshot(snap.epoch, frozenset(snap.active_ranks), frozenset(snap.joining_ranks))


class SnapshotHolder:
    """The newest valid snapshot; shared by the source thread (writer) and the leader loop (reader)."""

    def __init__(self) -> None:
        self._latest: Snapshot | None = None
        self.rejected = 0

    def latest(self) -> Snapshot | None:
        return self._latest

    def offer(self, raw: Any, origin: str) -> bool:
        """Validate and keep `raw` if newer. Returns whether it was taken. Never raises."""
        try:
            snap = parse_snapshot(raw)
        except ValueError as e:
            self.rejected += 1
            log.warning("membership: ignoring malformed snapshot from %s: %s", origin, str(e)[:300])
            return False
        current = self._latest
        if current is not None and snap.epoch < current.epoch:
            log.warning(
                "membership: ignoring stale epoch %d (have %d) from %s", snap.epoch, current.epoch, origin
            )
            return False
        if current != snap:
            log.info(
                "membership: epoch %d active %s joining %s (%s)",
                snap.epoch,
                sorted(snap.active_ranks),
                sorted(snap.joining_ranks),
                origin,
            )
        self._latest = snap
        return True


class _ThreadedSource:
    def __init__(self) -> None:
        self.holder = SnapshotHolder()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def latest(self) -> Snapshot | None:
        return self.holder.latest()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_guarded, name=type(self).__name__, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run_guarded(self) -> None:
        while not self._stop.is_set():
            try:
                self._run()
            except Exception:
                log.exception("membership: source error, retrying")
                self._stop.wait(1.0)

    def _run(self) -> None:
        raise NotImplementedError


class FileSource(_ThreadedSource):
    """Polls a JSON file every `poll_s` seconds (reads it whenever its content changes)."""

    def __init__(self, path: Path, poll_s: float = 0.05) -> None:
        super().__init__()
        self.path, self.poll_s = path, poll_s
        self._seen: bytes | None = None

    def poll_once(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        if data != self._seen:
            self._seen = data
            self.holder.offer(data, str(self.path))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.poll_s)


class ZmqSource(_ThreadedSource):
    """Subscribes to a PUB feed at `address`; each message is one JSON snapshot (at most 64 KiB)."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address

    def _run(self) -> None:
        import zmq  # noqa: PLC0415

        ctx: Any = zmq.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.MAXMSGSIZE, 65536)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.address)
        try:
            while not self._stop.is_set():
                if sock.poll(100):
                    self.holder.offer(sock.recv(), self.address)
        finally:
            sock.close()


class _CustomObjects(Protocol):
    def list_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, **kwargs: Any
    ) -> Any: ...


WatchStream = Callable[..., Iterator[dict[str, Any]]]
"""`kubernetes.watch.Watch().stream`-shaped: (list function, *args, **kwargs) -> events."""


class KubeSource(_ThreadedSource):
    """`status.membership` of one ElasticEPCluster via list + watch. `api` and `stream` are injected
    (`kubernetes.client.CustomObjectsApi()` and `kubernetes.watch.Watch().stream` in a pod)."""

    def __init__(
        self, api: _CustomObjects, stream: WatchStream, namespace: str, name: str, watch_timeout_s: int = 60
    ) -> None:
        super().__init__()
        self.api, self.stream = api, stream
        self.namespace, self.name = namespace, name
        self.watch_timeout_s = watch_timeout_s
        self._rv = ""

    def _args(self) -> tuple[str, str, str, str]:
        return (GROUP, VERSION, self.namespace, PLURAL)

    def _run(self) -> None:
        selector = f"metadata.name={self.name}"
        listed = self.api.list_namespaced_custom_object(*self._args(), field_selector=selector)
        for item in listed.get("items", []):
            self.holder.offer(item, "list")
        self._rv = str(listed.get("metadata", {}).get("resourceVersion", ""))
        while not self._stop.is_set():
            try:
                events = self.stream(
                    self.api.list_namespaced_custom_object,
                    *self._args(),
                    field_selector=selector,
                    resource_version=self._rv,
                    timeout_seconds=self.watch_timeout_s,
                )
                for event in events:
                    if self._stop.is_set() or not self._on_event(event):
                        return  # stop, or re-list: _run_guarded calls _run again
            except Exception as e:
                if getattr(e, "status", None) == 410:
                    log.info("membership: watch expired (410), re-listing")
                    return
                raise

    def _on_event(self, event: dict[str, Any]) -> bool:
        """Apply one watch event; False means the watch expired and the object must be re-listed."""
        kind, obj = event.get("type"), event.get("object")
        if kind == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            log.info("membership: watch error %s, re-listing", code)
            return False
        if isinstance(obj, dict):
            self._rv = str(obj.get("metadata", {}).get("resourceVersion", self._rv))
            if kind in ("ADDED", "MODIFIED"):
                self.holder.offer(obj, "watch")
        return True


def kube_source(namespace: str, name: str) -> KubeSource:
    """The in-cluster source (the pod's ServiceAccount)."""
    from kubernetes import client, config, watch  # noqa: PLC0415

    config.load_incluster_config()  # type: ignore[no-untyped-call]
    api: Any = client.CustomObjectsApi()
    stream: WatchStream = watch.Watch().stream  # type: ignore[no-untyped-call]
    return KubeSource(api, stream, namespace, name)
