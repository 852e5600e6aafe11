"""The Grafana dashboard offline: the committed JSON is what the generator writes (and the chart's copy the
same), it conforms to Grafana's dashboard schema (`@grafana/schema`'s types, checked by TypeScript; see
grafana_schema.py), its layout and data sources are sound, and every PromQL expression in it parses
(`promtool check rules`). That the expressions return series from a real Prometheus scraping a real recovery
is test_dashboard_e2e.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from eep_contract.reasons import RecoveryPhase
from eep_contract.v1alpha1 import Phase

from . import grafana_schema
from .board import CHART_COPY, DASHBOARD, ROOT, generator, load, queries, substitute, variables_used

# Grafana 11.6: the release the SDK's pinned build is generated for; 13.2: the newest published schema.
SCHEMA_VERSIONS = ("11.6.16", "13.2.3")
# Concrete values for the template variables, as Grafana would expand them.
VALUES = {
    "namespace": "(ml|research)",
    "cluster": ".+",
    "__rate_interval": "2m",
    "__interval": "30s",
    "__range": "3h",
    "__range_s": "10800",
}


def test_committed_json_and_chart_copy_are_what_the_generator_writes(tmp_path: Path) -> None:
    assert generator().main(["--check", "--root", str(ROOT)]) == 0, (
        "run `.venv/bin/python deploy/grafana/dashboard.py`"
    )
    assert CHART_COPY.read_text() == DASHBOARD.read_text()
    # --check notices a stale copy.
    for path in (generator().DASHBOARD_FILE, generator().CHART_FILE):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(DASHBOARD.read_text())
    (tmp_path / generator().CHART_FILE).write_text("{}\n")
    assert generator().main(["--check", "--root", str(tmp_path)]) == 1


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_dashboard_conforms_to_grafanas_schema(version: str, tmp_path: Path) -> None:
    try:
        complaints = grafana_schema.check(load(), version, tmp_path)
    except grafana_schema.SchemaUnavailable as exc:
        pytest.skip(str(exc))
    assert not complaints, f"{complaints}\n(the checked source: {tmp_path / 'dashboard.ts'})"


def test_the_schema_check_can_fail(tmp_path: Path) -> None:
    """An unknown key, a value outside an enum and a wrong type are each reported."""
    doc = load()
    panel = next(p for p in doc["panels"] if p["type"] == "timeseries")
    panel["gridPos"]["z"] = 1
    panel["options"]["legend"]["displayMode"] = "lists"
    doc["refresh"] = 30
    try:
        complaints = grafana_schema.check(doc, SCHEMA_VERSIONS[-1], tmp_path)
    except grafana_schema.SchemaUnavailable as exc:
        pytest.skip(str(exc))
    assert "'\"z\"' does not exist" in complaints
    assert "'\"lists\"' is not assignable" in complaints
    assert "Type 'number' is not assignable to type 'string'" in complaints


def test_layout_ids_and_data_sources() -> None:
    doc = load()
    assert doc["uid"] == "elastic-ep" and doc["title"] == "Elastic EP"
    panels = doc["panels"]
    assert [p["id"] for p in panels] == list(range(1, len(panels) + 1))
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
        if p["type"] == "row":
            assert not p.get("panels"), "expanded rows keep their panels at the top level"
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and p.get("description"), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"].strip(), p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]


def test_variables_are_datasource_namespace_cluster_and_every_query_uses_only_those() -> None:
    doc = load()
    names = [v["name"] for v in doc["templating"]["list"]]
    assert names == ["datasource", "namespace", "cluster"]
    known = {*names, "__rate_interval", "__interval", "__range", "__range_s"}
    for q in queries(doc):
        assert variables_used(q.expr) <= known, q
    panels = [q for q in queries(doc) if q.where.startswith("panel")]
    for q in (q for q in panels if "elasticep_worker_" not in q.expr):
        for selector in re.findall(r"elasticep_\w+\{([^}]*)\}", q.expr):
            assert 'namespace=~"$namespace"' in selector and 'cluster=~"$cluster"' in selector, q
    for q in panels:
        for selector in re.findall(r"elasticep_worker_\w+\{([^}]*)\}", q.expr):
            assert selector == 'namespace=~"$namespace", pod=~"$cluster-[0-9]+"', q


def test_every_metric_is_one_the_interfaces_document_names() -> None:
    documented = (ROOT / "docs" / "dev" / "interfaces.md").read_text()
    worker = {f"elasticep_worker_{name}" for name in re.findall(r"`(\w+?)(?:\{[^`]*\})?`", documented)}
    operator = set(re.findall(r"`(elasticep_\w+)`", documented))
    known = worker | operator
    suffixes = ("_bucket", "_count", "_sum")
    for q in queries(load()):
        for metric in re.findall(r"\b(elasticep_\w+)\b", q.expr):
            base = next((metric.removesuffix(s) for s in suffixes if metric.endswith(s)), metric)
            assert metric in known or base in known or base + "_total" in known, (q.where, metric)


def test_contract_values_are_the_ones_shown() -> None:
    doc = load()
    text = str(doc)
    phase_panel = next(p for p in doc["panels"] if p["title"] == "Phase")
    mapped = {o["text"] for o in phase_panel["fieldConfig"]["defaults"]["mappings"][0]["options"].values()}
    assert mapped == {p.value for p in Phase}
    for phase in Phase:
        assert f'phase=\\\\"{phase.value}\\\\"' in text or f'phase="{phase.value}"' in text
    worker_phases = next(p for p in doc["panels"] if p["title"] == "Worker recovery phases p50")
    for phase in RecoveryPhase:
        assert phase.value in worker_phases["description"]


def test_alert_annotations_cover_the_shipped_alerts() -> None:
    doc = load()
    alerts = next(a for a in doc["annotations"]["list"] if a["name"] == "Firing alerts")
    assert alerts["enable"] and alerts["titleFormat"] == "{{alertname}}"
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "elasticep-rules.yaml").read_text())
    names = [r["alert"] for g in rules["groups"] for r in g["rules"]]
    assert names and all(re.fullmatch("ElasticEP.+", n) for n in names)
    assert 'alertname="ElasticEPOperatorDown"' in alerts["expr"]  # it has no namespace/cluster labels


def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool missing: run `make tools`")
    found = queries(load())
    assert len(found) >= 25
    rules: list[dict[str, Any]] = [
        {"record": f"dashboard:query_{i}", "expr": substitute(q.expr, VALUES)} for i, q in enumerate(found)
    ]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_rejects_a_broken_expression(tmp_path: Path) -> None:
    """The parse check above can fail: a dropped parenthesis is reported."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool missing: run `make tools`")
    expr = substitute(queries(load())[1].expr, VALUES).replace(")", "", 1)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "b", "rules": [{"record": "b:x", "expr": expr}]}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
