"""The recovery pause a member's settings imply: one formula for the worker's window and the operator's check.

Who calls it: the worker sizes Mooncake's reconciliation window with it (`eep_worker.settings.Settings.pause`,
`fence_window_s`); the operator compares its `pause_s` with `spec.recovery.maxRecoveryPauseSeconds`
(`eep_operator.core.pause`, condition `RecoveryPauseBounded`). Pure; imports nothing.

What happens after a rank dies in the middle of a step (the reference worker; docs/architecture.md):

1. Detection. The collective in flight waits one collective timeout ``T`` for the dead peer, then Mooncake
   probes it (a dead process on a live host refuses at once) and the collective returns failed.
2. The rest of the step. The rank that saw the failure puts its process on the tail timeout ``tail``
   (`eep_worker.execution`), so every later collective that still includes the dead rank costs ``tail`` plus
   one refused probe (`PROBE_S`) instead of ``T``. Every rank still issues every collective, so Mooncake's
   per-op counters stay aligned. On GPUs the device combines are not checked (that would sync the host):
   Mooncake's V2 collectives keep the timeout they were created with, its legacy ones the live ``T``:
   ``combine_timeout_s`` each (`combine_timeout`).
3. The leader sends a FENCE plan (one more collective) and every rank parks, issuing nothing.
4. Mooncake's reconciliation window, opened by the first failure report, closes; the new view lands on every
   parked rank and the fence passes. Serving resumes with the re-run of the failed step.

The window must outlast the leader's way to its fence, measured from the first failure report: at most one
``T`` before the leader's own first failure, one ``T`` for that failure, then ``layers`` combines and two
plan broadcasts at the per-collective cost after a failure, plus `WINDOW_MARGIN_S` for scheduling. The pause
(kill -> fence passed) is at most ``T`` (the first report) plus the window.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "DEFAULT_TAIL_TIMEOUT_S",
    "PROBE_S",
    "WINDOW_MARGIN_S",
    "RecoveryPause",
    "combine_timeout",
    "recovery_pause",
]

DEFAULT_TAIL_TIMEOUT_S = 0.002
"""Collective timeout for the rest of a step after a failure, seconds. On Mooncake's CPU path a timeout only
triggers a liveness probe of the peer, so it never condemns a live rank; a shorter one probes a peer that is
merely late more often (one probe per tail while a rank waits for it)."""
PROBE_S = 0.002
"""What one refused liveness probe adds to a collective after a failure, seconds (about 1 ms measured on
mooncake-cpu, 127.0.0.1). A lost *host* is slower: each probe waits up to `MC_HANDSHAKE_CONNECT_TIMEOUT`
(Mooncake's default 5 s); see docs/runbook.md."""
WINDOW_MARGIN_S = 1.0
"""What the window keeps beyond the leader's way to its fence, seconds (scheduling on a loaded host)."""


@dataclasses.dataclass(frozen=True)
class RecoveryPause:
    """The recovery's bounds for one set of settings, seconds."""

    detection_s: float
    """Kill -> the leader's step ends untrusted (at worst the kill lands at the step's first collective)."""
    to_fence_s: float
    """First failure report -> the leader parked at its fence: what the window must outlast."""
    window_s: float
    """Mooncake's reconciliation window the worker sets: the configured one, raised to outlast
    `to_fence_s`."""
    pause_s: float
    """Kill -> the fence passes on every survivor: the longest a request waits for the survivors, less the
    re-run of the failed step."""
    raised: bool
    """The configured window was too short and `window_s` is larger."""


def recovery_pause(
    *,
    layers: int,
    collective_timeout_s: float,
    reconcile_window_s: float,
    tail_timeout_s: float = DEFAULT_TAIL_TIMEOUT_S,
    combine_timeout_s: float | None = None,
) -> RecoveryPause:
    """The bounds for a model of ``layers`` combines per step (module doc). ``combine_timeout_s``: what each
    combine costs after a failure when the tail does not apply to it (GPU device groups: their creation-time
    timeout); None where the combines run on Mooncake's CPU path (mooncake-cpu, the staged data path).
    Raises ValueError on a negative depth or a non-positive timeout."""
    if layers < 0:
        raise ValueError(f"layers must be >= 0, got {layers}")
    if collective_timeout_s <= 0 or tail_timeout_s <= 0:
        raise ValueError("timeouts must be positive")
    t = collective_timeout_s
    after = tail_timeout_s + PROBE_S
    combine = after if combine_timeout_s is None else max(after, combine_timeout_s + PROBE_S)
    to_fence = 2 * t + layers * combine + 2 * after
    window = max(reconcile_window_s, to_fence + WINDOW_MARGIN_S)
    return RecoveryPause(
        detection_s=t + layers * combine + after,
        to_fence_s=to_fence,
        window_s=window,
        pause_s=t + window,
        raised=window > reconcile_window_s,
    )


def combine_timeout(
    *,
    backend: str,
    data_path: str,
    collective_timeout_s: float,
    device_timeout_s: float = 0.0,
    gpu_collectives: str = "new",
) -> float | None:
    """What a combine costs after a failure where the tail does not reach it (`recovery_pause`'s
    ``combine_timeout_s``); None on mooncake-cpu and on the staged path (``data_path`` ``Staged``), whose
    combines are CPU collectives the worker checks one by one. On GPUs (backend ``mooncake``) otherwise: with
    Mooncake's V2 device collectives (``gpu_collectives`` ``new``, `eep_contract.env.GpuCollectives`) the
    device groups' creation-time timeout (``device_timeout_s``, 0: the collective timeout); with its legacy
    ones the live collective timeout itself, because the worker does not check a device combine (asking
    Mooncake synchronises the host with the combine's CUDA event), so nothing puts the rank on the tail
    before the step ends. ``data_path``: a `DataPath` value."""
    if backend != "mooncake" or data_path == "Staged":
        return None
    if gpu_collectives != "new":
        return collective_timeout_s
    return device_timeout_s or collective_timeout_s
