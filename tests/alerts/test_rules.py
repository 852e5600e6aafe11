"""The alerting rules: promtool accepts them, every alert has a firing and a quiet unit test, and the
annotations an on-call person reads are complete. The rules use only metrics from docs/dev/interfaces.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "elasticep-rules.yaml"
CHART_RULES = ROOT / "charts" / "elastic-ep-operator" / "files" / "elasticep-rules.yaml"
UNIT_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.yaml"))
# Alerts about the operator as a whole: no cluster label to name.
OPERATOR_WIDE = {"ElasticEPOperatorDown"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        subprocess.run(
            ["bash", str(ROOT / "hack" / "install-tools.sh")], check=True, capture_output=True, timeout=600
        )
        path = shutil.which("promtool")
    assert path, "promtool missing: run `make tools` (Debian's prometheus package)"
    return path


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=False, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_promtool_check_rules(promtool: str) -> None:
    for path in (RULES, CHART_RULES):
        result = run(promtool, "check", "rules", str(path))
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    assert UNIT_TESTS
    result = run(promtool, "test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_can_fail(promtool: str, tmp_path: Path) -> None:
    """A rules file with a wrong threshold fails the same unit tests, so they are not vacuous."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "elasticep-rules.yaml").write_text(
        RULES.read_text().replace('phase="Failed"} == 1', 'phase="Failed"} == 2')
    )
    for test in UNIT_TESTS:
        shutil.copy(test, tmp_path / "tests" / test.name)
    result = run(promtool, "test", "rules", *(str(tmp_path / "tests" / t.name) for t in UNIT_TESTS))
    assert result.returncode != 0
    assert "ElasticEPRestartBudgetExhausted" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - firing == set(), "alerts without a firing test"
    assert names - quiet == set(), "alerts without a not-firing test"


def test_the_alerts_an_on_call_person_needs_exist() -> None:
    names = {a["alert"] for a in alerts()}
    assert names == {
        "ElasticEPRankFailed",
        "ElasticEPRecoveryOverBudget",
        "ElasticEPRestartBudgetExhausted",
        "ElasticEPGroupRestart",
        "ElasticEPDegradedTooLong",
        "ElasticEPOperatorDown",
        "ElasticEPOperatorNotReconciling",
        "ElasticEPStalled",
        "ElasticEPMembersUnreachable",
    }


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_annotations_are_complete(alert: dict[str, Any]) -> None:
    annotations = alert["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    assert alert["labels"]["severity"] in {"warning", "critical"}
    anchor = alert["alert"].lower()
    assert annotations["runbook_url"].endswith(f"docs/runbook.md#{anchor}")
    if alert["alert"] not in OPERATOR_WIDE:
        for text in (annotations["summary"], annotations["description"]):
            assert "{{ $labels.namespace }}/{{ $labels.cluster }}" in text


def test_rules_use_only_metrics_from_the_interface() -> None:
    interfaces = (ROOT / "docs" / "dev" / "interfaces.md").read_text()
    for alert in alerts():
        for metric in re.findall(r"\belasticep_[a-z_]+", alert["expr"]):
            assert f"`{metric}`" in interfaces, (
                f"{alert['alert']} uses {metric}, not in docs/dev/interfaces.md"
            )
