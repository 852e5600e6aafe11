"""Feed the rendered SGLang command line to SGLang's own argument parser.

Skipped where SGLang is not importable. The project venv does not carry SGLang (it pulls torch, pillow,
starlette... and is not needed at runtime); to run it, put a `pip install --no-deps sglang` site-packages with
its small import-time dependencies on PYTHONPATH next to a torch install. Last run against sglang 0.5.23.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from eep_operator.api.v1alpha1 import ElasticEPClusterSpec
from eep_operator.core.podspec import engine_command

server_args = pytest.importorskip("sglang.srt.server_args")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    server_args.ServerArgs.add_cli_args(parser)
    return parser.parse_args(argv)


def spec(**sg: Any) -> ElasticEPClusterSpec:
    return ElasticEPClusterSpec.model_validate(
        {
            "image": "i",
            "nodes": 2,
            "ranksPerNode": 8,
            "engine": {"name": "sglang", "sglang": {"modelPath": "deepseek-ai/DeepSeek-V3", **sg}},
            "elasticEP": {"ibDevices": ["mlx5_0", "mlx5_1"]},
        }
    )


@pytest.mark.parametrize("join", [False, True])
def test_rendered_command_parses(join: bool) -> None:
    cmd = engine_command(spec(extraArgs=["--trust-remote-code"]), "ds", "prod", 1, join=join)
    assert cmd[:3] == ["python3", "-m", "sglang.launch_server"]
    ns = parse(cmd[3:])
    assert (ns.model_path, ns.tp_size, ns.ep_size, ns.nnodes, ns.node_rank) == (
        "deepseek-ai/DeepSeek-V3",
        16,
        16,
        2,
        1,
    )
    assert ns.dist_init_addr == "ds-0.ds.prod.svc.cluster.local:29500"
    assert (ns.elastic_ep_backend, ns.mooncake_ib_device) == ("mooncake", "mlx5_0,mlx5_1")
    assert (ns.host, ns.port, ns.trust_remote_code) == ("0.0.0.0", 30000, True)
    assert ns.ep_join_mode == ("recover" if join else None)


def test_legacy_rejoin_flag() -> None:
    cmd = engine_command(spec(joinFlag="Rejoin"), "ds", "prod", 1, join=True)
    try:
        ns = parse(cmd[3:])
    except SystemExit:
        pytest.skip("this SGLang release no longer accepts --elastic-ep-rejoin (use JoinModeRecover)")
    assert ns.elastic_ep_rejoin is True
