"""A minimal pod informer: list, then watch from the list's resourceVersion, keeping a dict of raw pod JSON by
uid and calling `on_change` after each change. Relists on 410 Gone or any error. Raw JSON (not the client's
models) keeps a node agent with hundreds of pods cheap. Called by `processnode.py`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import client

Obj = dict[str, Any]


def _lines(resp: Any) -> Iterator[bytes]:
    buf = b""
    for chunk in resp.stream(16384, decode_content=True):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line
    if buf.strip():
        yield buf


class PodInformer(threading.Thread):
    def __init__(
        self,
        core: client.CoreV1Api,
        *,
        field_selector: str | None,
        on_change: Callable[[], None],
        log: Callable[[str], None],
    ) -> None:
        super().__init__(daemon=True, name=f"informer[{field_selector or 'all'}]")
        self._core: Any = core  # raw JSON via _preload_content=False; the typed models are not used
        self._selector = field_selector
        self._on_change = on_change
        self._log = log
        self._lock = threading.Lock()
        self._pods: dict[str, Obj] = {}
        self.synced = threading.Event()
        self._stop = threading.Event()

    def snapshot(self) -> list[Obj]:
        with self._lock:
            return list(self._pods.values())

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                rv = self._list()
                self._watch(rv)
            except Exception as e:  # any failure: log, back off, relist
                self._log(f"informer {self.name}: {type(e).__name__}: {e}")
                self._stop.wait(1.0)

    def _list(self) -> str:
        resp = self._core.list_pod_for_all_namespaces(
            field_selector=self._selector, _preload_content=False, _request_timeout=30
        )
        data = json.loads(resp.data)
        with self._lock:
            self._pods = {p["metadata"]["uid"]: p for p in data.get("items", [])}
        self.synced.set()
        self._on_change()
        return str(data["metadata"]["resourceVersion"])

    def _watch(self, rv: str) -> None:
        deadline = time.monotonic() + 240
        while not self._stop.is_set() and time.monotonic() < deadline:
            resp = self._core.list_pod_for_all_namespaces(
                field_selector=self._selector,
                watch=True,
                resource_version=rv,
                allow_watch_bookmarks=True,
                timeout_seconds=60,
                _preload_content=False,
                _request_timeout=(10, 90),
            )
            try:
                for line in _lines(resp):
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        # 410 Gone (or anything else): the caller relists
                        raise RuntimeError(f"watch error: {obj.get('message')}")
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if kind == "BOOKMARK":
                        continue
                    uid = obj["metadata"]["uid"]
                    with self._lock:
                        if kind == "DELETED":
                            self._pods.pop(uid, None)
                        else:
                            self._pods[uid] = obj
                    self._on_change()
                    if self._stop.is_set():
                        return
            finally:
                resp.release_conn()
