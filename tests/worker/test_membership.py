"""Membership sources: validation, fencing, the file source, and the Kubernetes source with a fake watch."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eep_testkit.wait import wait_until
from eep_worker.membership import FileSource, KubeSource, SnapshotHolder, parse_snapshot
from eep_worker.protocol import Snapshot


def obj(epoch: int, active: list[int], joining: list[int], rv: str = "1") -> dict[str, Any]:
    return {
        "metadata": {"name": "eep", "resourceVersion": rv},
        "status": {"membership": {"epoch": epoch, "activeRanks": active, "joiningRanks": joining}},
    }


@pytest.mark.parametrize(
    "raw",
    [
        obj(2, [0, 1], [2]),
        obj(2, [0, 1], [2])["status"],
        obj(2, [0, 1], [2])["status"]["membership"],
        json.dumps(obj(2, [0, 1], [2])),
        json.dumps(obj(2, [0, 1], [2])).encode(),
    ],
)
def test_parse_snapshot_accepts_every_shape(raw: Any) -> None:
    assert parse_snapshot(raw) == Snapshot(2, frozenset({0, 1}), frozenset({2}))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe", "not JSON"),
        ("{", "not JSON"),
        ("[1, 2]", "must be an object"),
        ({"activeRanks": [0]}, "no epoch"),
        ({"epoch": "x"}, "epoch"),
        ({"epoch": -1}, "epoch"),
        ({"epoch": 1, "activeRanks": 7}, "activeRanks|active_ranks"),
        ({"epoch": 1, "activeRanks": [0, 1], "joiningRanks": [1]}, "both active and joining"),
    ],
)
def test_parse_snapshot_rejects(raw: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_snapshot(raw)


def test_holder_keeps_the_newest_valid_snapshot(caplog: pytest.LogCaptureFixture) -> None:
    h = SnapshotHolder()
    assert h.offer(obj(3, [0, 1, 2], []), "t")
    assert not h.offer("garbage", "t")
    assert not h.offer(obj(2, [0], []), "t")  # stale epoch: fenced
    assert h.latest() == Snapshot(3, frozenset({0, 1, 2}), frozenset())
    assert h.rejected == 1
    assert "ignoring malformed snapshot" in caplog.text and "stale epoch 2" in caplog.text


def test_file_source(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    src = FileSource(path, poll_s=0.01)
    src.start()
    try:
        assert src.latest() is None  # no file yet
        path.write_text(json.dumps(obj(1, [0, 1], [])))
        wait_until(lambda: src.latest() is not None, 5, "the first snapshot", interval_s=0.01)
        path.write_text("{not json")
        time.sleep(0.1)
        assert src.latest() == Snapshot(1, frozenset({0, 1}), frozenset())
        path.write_text(json.dumps(obj(2, [0], [1])))
        epoch_2 = Snapshot(2, frozenset({0}), frozenset({1}))
        wait_until(lambda: src.latest() == epoch_2, 5, "epoch 2", interval_s=0.01)
    finally:
        src.stop()
    assert src._thread is not None and not src._thread.is_alive()


class Gone(Exception):
    status = 410


class FakeApi:
    """`list_namespaced_custom_object`: answers with the next scripted object (the last one repeats)."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects = objects
        self.lists: list[dict[str, Any]] = []

    def list_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, **kwargs: Any
    ) -> Any:
        self.lists.append(kwargs)
        current = self.objects.pop(0) if len(self.objects) > 1 else self.objects[0]
        return {"items": [current], "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]}}


class FakeWatch:
    """`Watch().stream`: plays one scripted list of events per call, then blocks until stopped."""

    def __init__(self, scripts: list[list[Any]]) -> None:
        self.scripts, self.calls = scripts, list[dict[str, Any]]()
        self.stopped = threading.Event()

    def __call__(self, fn: Any, *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.calls.append(kwargs)
        if self.scripts:
            for event in self.scripts.pop(0):
                if isinstance(event, Exception):
                    raise event
                yield event
        else:
            self.stopped.wait(5)


def test_kube_source_watches_and_relists_on_410() -> None:
    api = FakeApi(
        [obj(1, [0, 1, 2], [], rv="10"), obj(1, [0, 1, 2], [], rv="13"), obj(3, [0, 1], [2], rv="20")]
    )
    watch = FakeWatch(
        [
            [
                {"type": "MODIFIED", "object": obj(2, [0, 1], [], rv="11")},
                {"type": "MODIFIED", "object": {"metadata": {"resourceVersion": "12"}, "status": "bad"}},
                {"type": "ERROR", "object": {"code": 410, "message": "too old"}},
            ],
            [Gone("expired")],
        ]
    )
    src = KubeSource(api, watch, "ns", "eep", watch_timeout_s=1)
    src.start()
    try:
        wait_until(lambda: len(api.lists) >= 2, 5, "a re-list", interval_s=0.01)
        # The 410 raised by the second watch re-lists again.
        wait_until(lambda: len(api.lists) >= 3, 5, "a second re-list", interval_s=0.01)
        epoch_3 = Snapshot(3, frozenset({0, 1}), frozenset({2}))
        wait_until(lambda: src.latest() == epoch_3, 5, "epoch 3", interval_s=0.01)
    finally:
        watch.stopped.set()
        src.stop()
    assert all(kw["field_selector"] == "metadata.name=eep" for kw in api.lists)
    assert [c["resource_version"] for c in watch.calls] == ["10", "13", "20"]
    assert src.holder.rejected == 1  # the malformed status was ignored, the watch went on
