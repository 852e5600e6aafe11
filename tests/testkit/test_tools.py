"""Tools: the command lines the kit gives kubectl and helm, with stand-in tools that print their arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from eep_testkit.tools import CHART, OperatorPorts, ToolFailed, Tools


@pytest.fixture
def tools(tmp_path: Path) -> Tools:
    for name, code in (("helm", 0), ("kubectl", 3)):
        tool = tmp_path / name
        tool.write_text(f'#!/bin/sh\necho "$@"\nexit {code}\n')
        tool.chmod(0o755)
    return Tools(tmp_path, tmp_path / "kubeconfig")


def test_install_chart(tools: Tools) -> None:
    out = tools.install_chart("r", "ns", "a=1", "b=2", wait_s=90)
    assert out.split() == [
        f"--kubeconfig={tools.kubeconfig}", "install", "r", str(CHART), "-n", "ns", "--force-conflicts",
        "--set=a=1", "--set=b=2", "--wait", "--timeout=90s",
    ]  # fmt: skip
    out = tools.install_chart("r", "ns", wait_s=None, upgrade=True)
    assert out.split()[1:3] == ["upgrade", "--install"] and "--wait" not in out
    assert (CHART / "Chart.yaml").is_file()


def test_a_failing_tool(tools: Tools) -> None:
    with pytest.raises(ToolFailed, match=r"kubectl get pods failed \(3\):\n--kubeconfig=.* get pods"):
        tools.run("kubectl", ["get", "pods"])
    assert tools.run("kubectl", ["get", "pods"], check=False).endswith("get pods\n")


def test_operator_ports() -> None:
    ports = OperatorPorts.free()
    assert ports.sets() == [f"operator.metricsPort={ports.metrics}", f"operator.healthPort={ports.health}"]
