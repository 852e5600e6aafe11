"""The recovery pause a cluster's spec implies, as the condition `RecoveryPauseBounded`. Pure.

Called by the planner on every plan (`planner._set_conditions`). The formula is the contract's
(`eep_contract.pause.recovery_pause`), the one the reference worker sizes Mooncake's reconciliation window
with, so the condition and the worker cannot disagree about the same settings. Inputs: `engine.modelLayers`,
`elasticEP` (backend, data path, collective timeout, window) and the reference worker's tuning variables that
a user may set as literal values in the engine container's env in `spec.template` (`EEP_TAIL_TIMEOUT_S`,
`EEP_DEVICE_COLLECTIVE_TIMEOUT_S`, Mooncake's `MOONCAKE_PG_PREFERRED_GPU_COLLECTIVE_BACKEND`).

Unknown when the pause cannot be computed: no `engine.modelLayers` (the depth is what the pause grew with,
issue #14), engine `sglang` (SGLang recovers through its own path, which this formula does not describe), or a
tuning variable that does not parse.
"""

from __future__ import annotations

import dataclasses

from eep_contract.env import EnvError, TuningEnv
from eep_contract.pause import RecoveryPause, combine_timeout, recovery_pause
from eep_contract.v1alpha1 import ConditionStatus, ElasticEPClusterSpec, EngineName

__all__ = ["ABOVE", "PauseVerdict", "verdict"]

ABOVE = "RecoveryPauseAboveBound"
"""Reason of the False condition, and of the Warning Event the planner posts when it becomes False."""


@dataclasses.dataclass(frozen=True)
class PauseVerdict:
    """The condition's status, reason and message; the bounds when they could be computed."""

    status: ConditionStatus
    reason: str
    message: str
    pause: RecoveryPause | None = None


def verdict(spec: ElasticEPClusterSpec) -> PauseVerdict:
    """The `RecoveryPauseBounded` condition for `spec` (module doc)."""
    limit = spec.recovery.max_recovery_pause_seconds
    unknown = ConditionStatus.UNKNOWN
    if spec.engine.name != EngineName.EEP_WORKER:
        return PauseVerdict(
            unknown,
            "EngineNotModelled",
            f"the recovery pause is computed for the reference worker's recovery only; engine "
            f"{spec.engine.name.value} recovers through its own path (bound {limit:g}s not checked)",
        )
    layers = spec.engine.model_layers
    if layers is None:
        return PauseVerdict(
            unknown,
            "ModelDepthUnknown",
            f"set engine.modelLayers: the recovery pause grows with the model's depth and cannot be bounded "
            f"without it (bound {limit:g}s)",
        )
    env = spec.template.engine_env()
    literal = {e["name"]: e["value"] for e in env if isinstance(e.get("value"), str)}
    try:
        tuning = TuningEnv.from_env(literal)
    except EnvError as e:
        return PauseVerdict(unknown, "InvalidTuning", f"the engine container's env: {e}")
    ep = spec.elastic_ep
    t = ep.collective_timeout_seconds
    combine = combine_timeout(
        backend=ep.backend.value,
        data_path=ep.data_path.value,
        collective_timeout_s=t,
        device_timeout_s=tuning.device_timeout_s,
        gpu_collectives=tuning.gpu_collectives.value,
    )
    p = recovery_pause(
        layers=layers,
        collective_timeout_s=t,
        reconcile_window_s=ep.reconciliation_window_seconds,
        tail_timeout_s=tuning.tail_timeout_s,
        combine_timeout_s=combine,
    )
    per = f"{tuning.tail_timeout_s:g}s tail" if combine is None else f"{combine:g}s device timeout"
    window = (
        f"window raised from {ep.reconciliation_window_seconds:g}s to {p.window_s:.1f}s"
        if p.raised
        else f"window {p.window_s:g}s"
    )
    message = (
        f"a member lost mid-step pauses serving for up to {p.pause_s:.1f}s (bound {limit:g}s): collective "
        f"timeout {t:g}s, then {layers} layers at the {per} each; {window}"
    )
    if p.pause_s <= limit:
        return PauseVerdict(ConditionStatus.TRUE, "WithinBound", message, p)
    return PauseVerdict(ConditionStatus.FALSE, ABOVE, message, p)
