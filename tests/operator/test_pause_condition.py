"""The RecoveryPauseBounded condition: the pause the spec implies against `maxRecoveryPauseSeconds`."""

from __future__ import annotations

from typing import Any

import pytest
from operator_builders import observed, t

from eep_contract.env import GPU_COLLECTIVES_ENV
from eep_contract.pause import recovery_pause
from eep_contract.v1alpha1 import (
    ConditionStatus,
    ConditionType,
    ElasticEPClusterSpec,
    ElasticEPClusterStatus,
)
from eep_operator.core import actions as A
from eep_operator.core import pause, podspec
from eep_operator.core.conditions import get_condition
from eep_operator.core.planner import plan
from eep_testkit import crs


def spec(
    layers: int | None = 61, *, timeout: float = 0.25, window: float = 1.0, **extra: Any
) -> ElasticEPClusterSpec:
    body: dict[str, Any] = {
        "image": "img",
        "nodes": 2,
        "ranksPerNode": 1,
        "engine": {"modelLayers": layers} if layers is not None else {},
        "elasticEP": {"backend": "mooncake-cpu", "collectiveTimeoutSeconds": timeout,
                      "reconciliationWindowSeconds": window},
        "recovery": {"maxRecoveryPauseSeconds": 10.0},
    }  # fmt: skip
    for key, value in extra.items():
        body[key] = {**body.get(key, {}), **value}
    return ElasticEPClusterSpec.model_validate(body)


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (spec(61), ConditionStatus.TRUE, "WithinBound"),
        # The DeepSeek-V3 example on GPUs: 61 device combines at 10 s each.
        (spec(61, timeout=10.0, elasticEP={"backend": "mooncake"}), ConditionStatus.FALSE, pause.ABOVE),
        # The same on the CPU path: 3 x 10 s + 1 s, still above 10 s.
        (spec(61, timeout=10.0), ConditionStatus.FALSE, pause.ABOVE),
        (spec(None), ConditionStatus.UNKNOWN, "ModelDepthUnknown"),
        (
            spec(61, engine={"name": "sglang", "sglang": {"modelPath": "m", "version": "0.5.16"}}),
            ConditionStatus.UNKNOWN,
            "EngineNotModelled",
        ),
        (
            spec(61, template=crs.pod_template(env={"EEP_TAIL_TIMEOUT_S": "soon"})),
            ConditionStatus.UNKNOWN,
            "InvalidTuning",
        ),
        # A short device-group timeout bounds the V2 collectives' pause (61 x 10 ms)...
        (
            spec(
                61,
                elasticEP={"backend": "mooncake"},
                template=crs.pod_template(env={"EEP_DEVICE_COLLECTIVE_TIMEOUT_S": "0.01"}),
            ),
            ConditionStatus.TRUE,
            "WithinBound",
        ),
        # ...not the legacy collectives' (asked for in the template): each combine costs the live 0.25 s.
        (
            spec(
                61,
                elasticEP={"backend": "mooncake"},
                template=crs.pod_template(
                    env={"EEP_DEVICE_COLLECTIVE_TIMEOUT_S": "0.01", GPU_COLLECTIVES_ENV: "legacy"}
                ),
            ),
            ConditionStatus.FALSE,
            pause.ABOVE,
        ),
        (
            spec(61, template=crs.pod_template(env={GPU_COLLECTIVES_ENV: "v3"})),
            ConditionStatus.UNKNOWN,
            "InvalidTuning",
        ),
    ],
)
def test_condition_from_the_spec(body: ElasticEPClusterSpec, status: ConditionStatus, reason: str) -> None:
    got = get_condition(plan(body, ElasticEPClusterStatus(), observed(), t(0)).status.conditions,
                        ConditionType.RECOVERY_PAUSE_BOUNDED)  # fmt: skip
    assert got is not None and (got.status, got.reason) == (status, reason), got


def test_the_condition_uses_the_workers_formula() -> None:
    s = spec(30, timeout=0.5, window=2.0, template=crs.pod_template(env={"EEP_TAIL_TIMEOUT_S": "0.01"}))
    v = pause.verdict(s)
    want = recovery_pause(layers=30, collective_timeout_s=0.5, reconcile_window_s=2.0, tail_timeout_s=0.01)
    assert v.pause == want
    assert f"{want.pause_s:.1f}s" in v.message


def test_one_warning_event_per_spec_generation_while_above() -> None:
    s = spec(61, timeout=10.0)
    first = plan(s, ElasticEPClusterStatus(), observed(gen=1), t(0))
    again = plan(s, first.status, observed(gen=1), t(1))
    changed = plan(s, again.status, observed(gen=2), t(2))

    def warnings(p: A.Plan) -> list[A.EmitEvent]:
        return [a for a in p.actions if isinstance(a, A.EmitEvent) and a.reason == pause.ABOVE]

    assert len(warnings(first)) == 1 and warnings(first)[0].type == "Warning"
    assert warnings(again) == []
    assert len(warnings(changed)) == 1
    fixed = plan(spec(61), changed.status, observed(gen=3), t(3))
    assert warnings(fixed) == []
    cond = get_condition(fixed.status.conditions, ConditionType.RECOVERY_PAUSE_BOUNDED)
    assert cond is not None and cond.status == ConditionStatus.TRUE and cond.last_transition_time == t(3)


def test_the_reference_worker_runs_the_depth_the_operator_computes_with() -> None:
    cmd = podspec.engine_command(spec(16), "c", "ns", 1, join=True)
    assert cmd[cmd.index("--layers") + 1] == "16"
    assert "--layers" not in podspec.engine_command(spec(None), "c", "ns", 1, join=False)
