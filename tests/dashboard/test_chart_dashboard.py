"""The chart's Grafana dashboard ConfigMap, rendered offline with `helm template`: off by default; when on, it
carries the committed dashboard JSON unchanged, under the sidecar's label (configurable) in the chosen
namespace. (helm lint and Kubernetes schema validation of the same values: tests/chart/test_chart.py.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from eep_localcluster.__main__ import tools_bin_dir

from .board import DASHBOARD, ROOT

CHART = ROOT / "charts" / "elastic-ep-operator"


@pytest.fixture(scope="module")
def helm() -> Path:
    path = tools_bin_dir() / "helm"
    if not path.exists():
        pytest.skip(f"{path} missing: run `make tools`")
    return path


def template(helm: Path, *sets: str) -> subprocess.CompletedProcess[str]:
    argv = [str(helm), "template", "t", str(CHART), "--namespace", "ops"]
    for s in sets:
        argv += ["--set", s]
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)


def config_maps(helm: Path, *sets: str) -> list[dict[str, Any]]:
    result = template(helm, *sets)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "ConfigMap"]


def test_off_by_default(helm: Path) -> None:
    assert config_maps(helm) == []


def test_configmap_carries_the_dashboard_under_the_sidecar_label(helm: Path) -> None:
    (cm,) = config_maps(helm, "grafana.dashboard.enabled=true")
    meta = cm["metadata"]
    assert meta["name"] == "t-elastic-ep-operator-dashboard" and meta["namespace"] == "ops"
    assert meta["labels"]["grafana_dashboard"] == "1"
    assert "annotations" not in meta
    assert list(cm["data"]) == ["elastic-ep.json"]
    assert cm["data"]["elastic-ep.json"] == DASHBOARD.read_text().rstrip("\n")
    assert json.loads(cm["data"]["elastic-ep.json"])["uid"] == "elastic-ep"


def test_label_namespace_labels_and_folder_annotation_are_configurable(helm: Path) -> None:
    (cm,) = config_maps(
        helm,
        "grafana.dashboard.enabled=true",
        "grafana.dashboard.label=dashboards.example.com/load",
        "grafana.dashboard.labelValue=yes",
        "grafana.dashboard.namespace=monitoring",
        "grafana.dashboard.labels.team=ml",
        "grafana.dashboard.annotations.grafana_folder=Elastic EP",
    )
    meta = cm["metadata"]
    assert meta["namespace"] == "monitoring"
    assert meta["labels"]["dashboards.example.com/load"] == "yes" and meta["labels"]["team"] == "ml"
    assert "grafana_dashboard" not in meta["labels"]
    assert meta["annotations"] == {"grafana_folder": "Elastic EP"}


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("grafana.dashboard.label=not a label",), "at '/grafana/dashboard/label'"),
        (("grafana.dashboard.namespace=Monitoring",), "at '/grafana/dashboard/namespace'"),
        (("grafana.dashboard.enable=true",), "additional properties 'enable' not allowed"),
    ],
)
def test_wrong_values_are_rejected(helm: Path, sets: tuple[str, ...], message: str) -> None:
    result = template(helm, *sets)
    assert result.returncode != 0 and message in result.stderr, result.stderr
