"""Fixtures for the chart tests: the pinned helm binary and a `render` helper around `helm template`."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "elastic-ep-operator"

Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def tools_bin() -> Path:
    """The directory with the pinned kubectl and helm (hack/install-tools.sh installs them or only checks)."""
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "install-tools.sh")],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def helm(tools_bin: Path) -> Path:
    return tools_bin / "helm"


def helm_template(helm: Path, *sets: str, namespace: str = "ops") -> subprocess.CompletedProcess[str]:
    args = [str(helm), "template", "t", str(CHART), "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """`render("k=v", ...)` -> the rendered objects; fails the test with helm's message if rendering fails."""

    def _render(*sets: str, namespace: str = "ops") -> list[dict[str, Any]]:
        result = helm_template(helm, *sets, namespace=namespace)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return _render
