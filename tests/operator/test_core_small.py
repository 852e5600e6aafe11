"""Unit tests of the small core modules: member transitions, conditions, observe, pod rendering."""

from __future__ import annotations

import shlex
from typing import Any

import pytest
from operator_builders import make_spec, t

from eep_contract.v1alpha1 import (
    Annotations,
    Condition,
    ConditionStatus,
    ConditionType,
    ElasticEPClusterSpec,
    Labels,
    MemberState,
)
from eep_operator.core import members, podspec
from eep_operator.core.conditions import get_condition, set_condition
from eep_operator.core.observe import observe

S = MemberState

# ------------------------------------------------------------------------------------------ members

ALLOWED = {
    (S.PENDING, S.HEALTHY), (S.PENDING, S.FAILED), (S.PENDING, S.PENDING),
    (S.HEALTHY, S.FAILED), (S.HEALTHY, S.PENDING),
    (S.FAILED, S.RESTARTING), (S.FAILED, S.PENDING),
    (S.RESTARTING, S.JOINING), (S.RESTARTING, S.FAILED), (S.RESTARTING, S.PENDING),
    (S.JOINING, S.HEALTHY), (S.JOINING, S.FAILED), (S.JOINING, S.PENDING),
}  # fmt: skip


@pytest.mark.parametrize("src", list(S))
@pytest.mark.parametrize("dst", list(S))
def test_transition_table(src: MemberState, dst: MemberState) -> None:
    if (src, dst) in ALLOWED:
        assert members.transition(src, dst) == dst
    else:
        with pytest.raises(members.IllegalTransitionError):
            members.transition(src, dst)


def test_no_shortcut_from_failed_to_healthy() -> None:
    """A failed member comes back only through a replacement that joined (or a group restart)."""
    assert not members.can_transition(S.FAILED, S.HEALTHY)
    assert not members.can_transition(S.RESTARTING, S.HEALTHY)


# ------------------------------------------------------------------------------------------ conditions


def cond(status: ConditionStatus, reason: str = "R") -> Condition:
    return Condition(type=ConditionType.READY, status=status, reason=reason, message="m")


def test_condition_added_with_now() -> None:
    out = set_condition([], cond(ConditionStatus.TRUE), t(1))
    assert out[0].last_transition_time == t(1)


def test_condition_time_kept_without_flip_but_reason_updated() -> None:
    first = set_condition([], cond(ConditionStatus.TRUE), t(1))
    again = set_condition(first, cond(ConditionStatus.TRUE, "Other"), t(5))
    assert again[0].last_transition_time == t(1) and again[0].reason == "Other"


def test_condition_time_changes_on_flip_and_others_untouched() -> None:
    deg = Condition(type=ConditionType.DEGRADED, status=ConditionStatus.FALSE)
    first = set_condition(set_condition([], cond(ConditionStatus.TRUE), t(1)), deg, t(1))
    flipped = set_condition(first, cond(ConditionStatus.FALSE), t(9))
    assert [c.type for c in flipped] == [ConditionType.READY, ConditionType.DEGRADED]
    assert flipped[0].last_transition_time == t(9) and flipped[1] == first[1]
    ready = get_condition(flipped, ConditionType.READY)
    assert ready is not None and ready.status == ConditionStatus.FALSE
    assert get_condition(flipped, ConditionType.RECOVERING) is None


# ------------------------------------------------------------------------------------------ observe


def raw_pod(member: int, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"c-{member}",
            "uid": f"u{member}",
            "labels": {Labels.CLUSTER: "c", Labels.MEMBER: str(member)},
            "annotations": {Annotations.INCARNATION: "3", Annotations.JOIN: "true"},
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "ownerReferences": [
                {
                    "apiVersion": "elasticep.io/v1alpha1",
                    "kind": "ElasticEPCluster",
                    "uid": "cu",
                    "controller": True,
                }
            ],
        },
        "spec": {"nodeName": "n0"},
        "status": status,
    }


def test_observe_running_ready_pod() -> None:
    pod = raw_pod(
        1,
        phase="Running",
        conditions=[{"type": "Ready", "status": "True"}],
        containerStatuses=[{"state": {"running": {"startedAt": "x"}}}],
    )
    other = raw_pod(2)
    other["metadata"]["labels"][Labels.CLUSTER] = "another"
    node = {"metadata": {"name": "n0"}, "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}
    cr = {"metadata": {"name": "c", "namespace": "ns", "uid": "cu", "generation": 4}}
    obs = observe(cr, [pod, other], [node], service_exists=False)
    (p,) = obs.pods
    assert (p.member, p.incarnation, p.join, p.ready, p.running, p.node) == (1, 3, True, True, True, "n0")
    assert p.created == t(0)
    assert obs.generation == 4 and not obs.service_exists and not obs.nodes["n0"].ready


def test_observe_terminated_deleting_evicted() -> None:
    pod = raw_pod(
        0,
        phase="Failed",
        reason="Evicted",
        message="The node was low on resource: memory.",
        containerStatuses=[
            {"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "message": "oom"}}}
        ],
    )
    pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:30Z"
    pod["metadata"]["deletionGracePeriodSeconds"] = 30
    obs = observe({"metadata": {"name": "c", "uid": "cu"}}, [pod], [], service_exists=True)
    (p,) = obs.pods
    assert p.evicted and p.deleting and p.deletion_started == t(0)
    assert p.terminated is not None and (p.terminated.exit_code, p.terminated.reason) == (137, "OOMKilled")


def test_only_the_engine_container_decides_whether_a_member_runs() -> None:
    """A sidecar's exit is not the member's: before the fix the first terminated container of any name was the
    member's termination (``p.terminated`` was the sidecar's exit 1), so a log shipper's crash replaced a
    serving member; an engine that ended beside a running sidecar still counts."""
    running = {"running": {"startedAt": "x"}}
    ended = {"terminated": {"exitCode": 1, "reason": "Error"}}

    def obs(engine: dict[str, Any], sidecar: dict[str, Any]) -> Any:
        statuses = [{"name": "log-shipper", "state": sidecar}, {"name": "engine", "state": engine}]
        pod = raw_pod(1, phase="Running", containerStatuses=statuses)
        (p,) = observe({"metadata": {"name": "c", "uid": "cu"}}, [pod], [], service_exists=True).pods
        return p

    p = obs(engine=running, sidecar=ended)
    assert p.running and p.terminated is None
    p = obs(engine=ended, sidecar=running)
    assert not p.running and p.terminated is not None and p.terminated.exit_code == 1


# ------------------------------------------------------------------------------------------ podspec


def sglang_spec(**sg: Any) -> ElasticEPClusterSpec:
    return ElasticEPClusterSpec.model_validate(
        {
            "image": "lmsysorg/sglang:latest",
            "nodes": 2,
            "ranksPerNode": 8,
            "engine": {
                "name": "sglang",
                "port": 30000,
                "sglang": {"modelPath": "deepseek-ai/DeepSeek-V3", "version": "0.5.23", **sg},
            },
            "elasticEP": {"ibDevices": ["mlx5_0", "mlx5_1"], "coordinatorPort": 5000},
        }
    )


def render(spec: ElasticEPClusterSpec, index: int = 1, join: bool = False) -> dict[str, Any]:
    return podspec.render_pod(
        spec, cluster="ds", namespace="prod", uid="u", index=index, join=join, epoch=7, incarnation=2
    )


def test_eep_worker_pod_contract() -> None:
    spec = make_spec(nodes=4, rpn=2)
    fresh, joiner = render(spec, 2), render(spec, 2, join=True)
    c = fresh["spec"]["containers"][0]
    assert c["command"] == ["eep-worker", "serve"]
    assert joiner["spec"]["containers"][0]["command"] == ["eep-worker", "serve", "--rejoin"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["EEP_FIRST_RANK"] == "4" and env["EEP_RANK_COUNT"] == "2" and env["EEP_WORLD_SIZE"] == "8"
    assert env["EEP_COORDINATOR_ADDR"] == "ds-0.ds.prod.svc.cluster.local:29500"
    assert env["EEP_CLUSTER_NAME"] == "ds" and env["EEP_CLUSTER_NAMESPACE"] == "prod"
    assert env["EEP_POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["EEP_HTTP_PORT"] == "30000" and "MC_FORCE_TCP" not in env
    assert env["EEP_DATA_PATH"] == "Auto"  # elasticEP.dataPath's default: probe the device route, else Staged
    assert fresh["spec"]["restartPolicy"] == "Never"
    assert (fresh["spec"]["hostname"], fresh["spec"]["subdomain"]) == ("ds-2", "ds")
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 30000}
    md = fresh["metadata"]
    assert md["labels"][Labels.MEMBER] == "2" and md["labels"][Labels.FIRST_RANK] == "4"
    assert (
        md["annotations"][Annotations.JOIN] == "false" and md["annotations"][Annotations.INCARNATION] == "2"
    )
    assert md["ownerReferences"][0]["controller"] is True


def test_sglang_command_line() -> None:
    cmd = render(sglang_spec(), 1)["spec"]["containers"][0]["command"]
    assert shlex.join(cmd) == (
        "python3 -m sglang.launch_server --model-path deepseek-ai/DeepSeek-V3 --tp-size 16 --ep-size 16 "
        "--nnodes 2 --node-rank 1 --dist-init-addr ds-0.ds.prod.svc.cluster.local:5000 "
        "--elastic-ep-backend mooncake --mooncake-ib-device mlx5_0,mlx5_1 --host 0.0.0.0 --port 30000"
    )


@pytest.mark.parametrize(
    ("flag", "version", "expected"),
    [
        ("JoinModeRecover", "0.5.23", ["--elastic-ep-join-mode", "recover"]),
        ("Rejoin", "0.5.20", ["--elastic-ep-rejoin"]),
    ],
)
def test_sglang_join_flag(flag: str, version: str, expected: list[str]) -> None:
    spec = sglang_spec(joinFlag=flag, version=version, tpSize=8, extraArgs=["--trust-remote-code"])
    cmd = render(spec, 1, join=True)["spec"]["containers"][0]["command"]
    i = cmd.index("--port")
    assert cmd[i + 2 : i + 2 + len(expected)] == expected
    assert cmd[-1] == "--trust-remote-code" and cmd[cmd.index("--tp-size") + 1] == "8"
    fresh = render(spec, 1)["spec"]["containers"][0]["command"]
    assert "--elastic-ep-join-mode" not in fresh and "--elastic-ep-rejoin" not in fresh


def test_service_is_headless_and_publishes_not_ready() -> None:
    svc = podspec.render_service(make_spec(), cluster="ds", namespace="prod", uid="u")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {Labels.CLUSTER: "ds"}


def test_rendered_pod_is_a_valid_kubernetes_pod() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    for spec in (make_spec(), sglang_spec()):
        kv.validate(render(spec, 1, join=True), "1.31", strict=True)
    kv.validate(
        podspec.render_service(make_spec(), cluster="ds", namespace="p", uid="u"), "1.31", strict=True
    )
