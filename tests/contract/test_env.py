"""The worker's environment is one contract: what the operator renders is what the worker parses.

The round trip goes through the real renderer (`eep_operator.core.podspec.render_pod`) and the real parser
(`eep_worker.settings.parse`), so a name or a format changed on one side only fails here."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from eep_contract.env import FIELD_REFS, DataPath, EnvError, MemberEnv, TuningEnv, contract_names
from eep_contract.v1alpha1 import ElasticEPClusterSpec
from eep_operator.core.podspec import member_env, render_pod
from eep_worker.settings import parse


def _spec(
    nodes: int, rpn: int, timeout: float, window: float, port: int, *, data_path: str | None = None
) -> ElasticEPClusterSpec:
    elastic: dict[str, Any] = {"collectiveTimeoutSeconds": timeout, "reconciliationWindowSeconds": window}
    if data_path is not None:
        elastic["dataPath"] = data_path
    return ElasticEPClusterSpec.model_validate(
        {
            "image": "worker:1",
            "nodes": nodes,
            "ranksPerNode": rpn,
            "engine": {"port": port},
            "elasticEP": elastic,
        }
    )


def _pod_env(pod: dict[str, Any], pod_ip: str) -> dict[str, str]:
    """What the kubelet would hand the container: plain values, and the downward-API ones resolved."""
    out: dict[str, str] = {}
    for var in pod["spec"]["containers"][0]["env"]:
        if "value" in var:
            out[var["name"]] = var["value"]
        else:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            resolved = {
                "status.podIP": pod_ip,
                "metadata.name": pod["metadata"]["name"],
                "spec.nodeName": "gpu-7",
            }
            out[var["name"]] = resolved[path]
    return out


@given(
    nodes=st.integers(2, 16),
    rpn=st.sampled_from([1, 2, 4, 8]),
    timeout=st.floats(0.05, 60, allow_nan=False).map(lambda x: round(x, 3)),
    window=st.floats(0.5, 120, allow_nan=False).map(lambda x: round(x, 3)),
    port=st.integers(1024, 65000),
    data_path=st.sampled_from([None, *(m.value for m in DataPath)]),
    data=st.data(),
)
def test_rendered_pod_env_parses_back_to_the_same_member(
    *,
    nodes: int,
    rpn: int,
    timeout: float,
    window: float,
    port: int,
    data_path: str | None,
    data: st.DataObject,
) -> None:
    assume(nodes * rpn <= 64)  # Mooncake's limit on a group's ranks (the spec refuses more)
    index = data.draw(st.integers(0, nodes - 1))
    spec = _spec(nodes, rpn, timeout, window, port, data_path=data_path)
    pod = render_pod(
        spec, cluster="ds", namespace="prod", uid="u", index=index, join=False, epoch=1, incarnation=1
    )
    env = _pod_env(pod, "10.1.2.3")
    expected = member_env(spec, "ds", "prod", index)
    assert MemberEnv.from_env(env) == expected

    s = parse(["serve"], env)
    c = s.cluster
    assert (c.namespace, c.name, c.member_index) == ("prod", "ds", index)
    assert (c.first_rank, c.rank_count, c.world_size) == (index * rpn, rpn, nodes * rpn)
    assert f"{c.coordinator_host}:{c.coordinator_port}" == expected.coordinator_addr
    assert (s.timeouts.collective_timeout_s, s.timeouts.reconcile_window_s) == (timeout, window)
    assert (s.http_port, s.pod_ip, s.backend) == (port, "10.1.2.3", expected.backend)
    assert s.data_path is expected.data_path is DataPath(data_path or "Auto")
    assert (s.node_name, s.rdma) == ("gpu-7", expected.rdma)


def test_every_name_the_pod_carries_is_in_the_contract() -> None:
    pod = render_pod(
        _spec(2, 1, 1, 5, 8000),
        cluster="c",
        namespace="n",
        uid="u",
        index=1,
        join=True,
        epoch=2,
        incarnation=2,
    )
    names = {v["name"] for v in pod["spec"]["containers"][0]["env"] if v["name"].startswith("EEP_")}
    assert names == set(MemberEnv.names().values()) | set(FIELD_REFS)
    assert names <= contract_names()


def test_tuning_env_round_trips_and_reaches_the_worker() -> None:
    tune = TuningEnv(layers=30, hidden=1024, join_timeout_s=7.5, membership_source="zmq", subgroups="none")
    assert TuningEnv.from_env(tune.to_env()) == tune
    s = parse(["serve"], tune.to_env())
    assert (s.model.num_layers, s.model.hidden_size, s.timeouts.join_timeout_s) == (30, 1024, 7.5)
    assert (s.membership_source, s.subgroups) == ("zmq", False)


def test_flags_beat_the_environment() -> None:
    s = parse(["serve", "--layers", "3"], TuningEnv(layers=30).to_env())
    assert s.model.num_layers == 3


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EEP_MEMBER_INDEX", "one"),
        ("EEP_COLLECTIVE_TIMEOUT_S", "fast"),
        ("EEP_MODEL_LAYERS", "4.5"),
        ("EEP_DATA_PATH", "staged-ish"),
    ],
)
def test_a_bad_variable_is_a_clear_error_naming_it(name: str, value: str) -> None:
    with pytest.raises(SystemExit, match=name):
        parse(["serve"], {name: value})


def test_a_required_member_variable_missing_is_an_error() -> None:
    env = MemberEnv("n", "c", 0, 0, 1, 1, "h:1", "mooncake-cpu", 1.0, 5.0, 8000).to_env()
    del env["EEP_WORLD_SIZE"]
    with pytest.raises(EnvError, match="EEP_WORLD_SIZE is required"):
        MemberEnv.from_env(env)


def test_the_data_path_names_its_values_and_the_flag_takes_any_case() -> None:
    with pytest.raises(
        EnvError, match=r"EEP_DATA_PATH='Fast' is not a valid DataPath \(one of Auto, Device, Staged\)"
    ):
        MemberEnv.from_env({"EEP_DATA_PATH": "Fast"}, **dict.fromkeys(MemberEnv.names(), "x"))
    assert parse(["serve", "--data-path", "staged"], {}).data_path is DataPath.STAGED
    assert parse(["serve", "--data-path", "Device"], {"EEP_DATA_PATH": "Staged"}).data_path is DataPath.DEVICE
    assert parse(["serve"], {}).data_path is DataPath.AUTO
    with pytest.raises(SystemExit):
        parse(["serve", "--data-path", "nccl"], {})
