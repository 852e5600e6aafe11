"""plan_ring.py: a pinned plan buffer is never handed out while its last copy to the device may be pending.

Fake CUDA events (no GPU); each step writes the buffer it gets, then issues that buffer's copy, as
`execution.StepExecutor.run` does. An event covers every copy issued before its record. A buffer may come back
only after the host checked an event recorded after the buffer's last copy: the fake device is always behind,
so every check is a wait.
"""

from __future__ import annotations

from typing import Any

import pytest

from eep_worker.plan_ring import PlanRing


class FakeEvent:
    def __init__(self, log: list[tuple[str, FakeEvent]], clock: list[int]) -> None:
        self.log, self.clock = log, clock
        self.recorded_at: int | None = None

    def record(self, stream: Any) -> None:
        self.recorded_at = self.clock[0]
        self.log.append(("record", self))

    def query(self) -> bool:
        self.log.append(("query", self))
        return False

    def synchronize(self) -> None:
        self.log.append(("wait", self))


@pytest.mark.parametrize(
    ("size", "group", "steps"), [(8, 4, 3), (8, 4, 9), (8, 4, 41), (4, 1, 17), (6, 3, 20), (32, 16, 100)]
)
def test_a_buffer_comes_back_only_after_its_copy_was_waited_for(size: int, group: int, steps: int) -> None:
    log: list[tuple[str, FakeEvent]] = []
    clock = [0]
    ring = PlanRing(4, pin=False, event=lambda: FakeEvent(log, clock), size=size, group=group)
    copied_at: dict[int, int] = {}  # buffer index -> time of the copy that last read it
    waits: list[tuple[int, int]] = []  # (when the host waited, when the event it waited for was recorded)
    for step in range(1, steps + 1):
        clock[0] = 10 * step
        start = len(log)
        buf, array = ring.next()
        waits += [(clock[0], e.recorded_at) for kind, e in log[start:] if kind == "wait" and e.recorded_at]
        i = next(k for k, b in enumerate(ring.buffers) if b is buf)
        assert array is ring.arrays[i]
        if i in copied_at:
            assert any(recorded > copied_at[i] for _, recorded in waits), (
                f"step {step}: buffer {i} handed out again before its copy at {copied_at[i]} was waited for"
            )
        array[:] = step  # the plan arrives
        clock[0] = 10 * step + 5
        copied_at[i] = clock[0]  # and its copy is issued
    assert sum(kind == "record" for kind, _ in log) <= steps // group + 1  # an event per group, not per step


def test_without_events_the_ring_only_rotates() -> None:
    ring = PlanRing(3, pin=False, event=None, size=8, group=4)
    seen = [ring.next()[0].data_ptr() for _ in range(16)]
    assert len(set(seen)) == 8 and seen[:8] == seen[8:]


def test_the_ring_is_made_of_whole_groups() -> None:
    with pytest.raises(ValueError, match="multiple"):
        PlanRing(3, pin=False, event=None, size=6, group=4)
