"""Env files: the one parser of `hack/versions.env` and `<venv>/mooncake-cpu.env` for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

from eep_testkit.envfile import mooncake_cpu_env, parse_env, versions


def test_parse_env() -> None:
    text = "# a comment\n\nKUBE_VERSION=v1.35.0\n  MC_FORCE_TCP = true \nLD_LIBRARY_PATH=/a:/b\nnot a line\n"
    assert parse_env(text) == {"KUBE_VERSION": "v1.35.0", "MC_FORCE_TCP": "true", "LD_LIBRARY_PATH": "/a:/b"}
    assert parse_env("#X=1\nA=b=c\n=v\n") == {"A": "b=c"}


def test_versions_of_the_repository() -> None:
    pins = versions()
    assert pins["KUBE_VERSION"].startswith("v") and "ETCD_VERSION" in pins


def test_mooncake_cpu_env(tmp_path: Path) -> None:
    assert mooncake_cpu_env(tmp_path) == {}
    (tmp_path / "mooncake-cpu.env").write_text("# Written by hack/setup-mooncake-cpu.sh\nMC_FORCE_TCP=true\n")
    assert mooncake_cpu_env(tmp_path) == {"MC_FORCE_TCP": "true"}
