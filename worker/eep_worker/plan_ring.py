"""The ring of host buffers that each step's plan arrives in, before its copy to the device.

Who calls it: `execution.StepExecutor.run`, once per step: `next()` gives the buffer to receive (or, on the
leader, to write) the plan in; the rank then issues the buffer's host-to-device copy (non-blocking on GPU).

Why a ring: a non-blocking copy from pinned memory reads the buffer when the device gets to it, so the host
must not overwrite a buffer until that copy has run, and asking the device every step would cost a sync or
an event per step. With `size` buffers and one CUDA event per `group` consecutive buffers, entering a group
records the previous group's event (every copy of that group was issued before it; the stream runs them in
order) and checks this group's, recorded one lap ago after this group's copies were issued. The host waits
only when the device lags a whole group of steps behind. An event per step was a measurable part of the toy
model's step on H200s (bench/README.md, `gpu_recovery.py --attribute`); the default is one per 16 steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

__all__ = ["CopyEvent", "PlanRing"]


class CopyEvent(Protocol):
    """The part of `torch.cuda.Event` the ring uses."""

    def record(self, stream: Any) -> None: ...
    def query(self) -> bool: ...
    def synchronize(self) -> None: ...


class PlanRing:
    def __init__(
        self,
        width: int,
        *,
        pin: bool,
        event: Callable[[], CopyEvent] | None,
        stream: Any = None,
        size: int = 32,
        group: int = 16,
    ) -> None:
        """``width`` int64 slots per buffer; ``pin``: page-locked (GPU); ``event``: makes a copy event (None
        on CPU, where the copy is done when `copy_` returns); ``stream``: where the copies are issued."""
        if size % group:
            raise ValueError(f"ring size {size} is not a multiple of the group {group}")
        self.buffers = [torch.zeros(width, dtype=torch.int64, pin_memory=pin) for _ in range(size)]
        self.arrays = [buf.numpy() for buf in self.buffers]  # made once: `numpy()` costs ~2 us a call
        self.events = [event() for _ in range(size // group)] if event is not None else []
        self.stream, self.group = stream, group
        self.slot = 0

    def next(self) -> tuple[torch.Tensor, Any]:
        """The next buffer and its numpy view, once the device has copied what it held last lap."""
        self.slot = slot = (self.slot + 1) % len(self.buffers)
        if self.events and slot % self.group == 0:
            group = slot // self.group
            self.events[group - 1].record(self.stream)
            mine = self.events[group]
            if not mine.query():
                mine.synchronize()
        return self.buffers[slot], self.arrays[slot]
