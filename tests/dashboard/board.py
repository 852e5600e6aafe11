"""The shipped dashboard as the tests see it: the generator module, the committed JSON, every PromQL
expression in it (panel targets, annotation queries, the variables' series selectors) and the substitution of
Grafana's template variables with concrete values. Who uses it: the tests in this folder."""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "deploy" / "grafana" / "dashboard.py"
DASHBOARD = ROOT / "deploy" / "grafana" / "elastic-ep.json"
CHART_COPY = ROOT / "charts" / "elastic-ep-operator" / "files" / "elastic-ep.json"

# Grafana's built-in variables and the dashboard's own, longest first so `$__range_s` is not read as
# `$__range` followed by `_s`.
_VARIABLE = re.compile(r"\$(__range_s|__range|__rate_interval|__interval|namespace|cluster|datasource)\b")
# `label_values(<series selector>, <label>)`: Grafana's variable query; its selector is PromQL.
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.*),\s*(?P<label>\w+)\)$", re.DOTALL)


@cache
def generator() -> ModuleType:
    """deploy/grafana/dashboard.py, imported from its path (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("eep_grafana_dashboard", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


@dataclass(frozen=True)
class Query:
    where: str
    """Panel title and refId, annotation or variable name: for messages."""
    expr: str


def queries(doc: dict[str, Any]) -> list[Query]:
    """Every PromQL expression the dashboard sends to Prometheus."""
    found = [
        Query(f"panel {p['title']!r} {t['refId']}", t["expr"])
        for p in doc["panels"]
        for t in p.get("targets", [])
    ]
    found += [
        Query(f"annotation {a['name']!r}", a["expr"]) for a in doc["annotations"]["list"] if "expr" in a
    ]
    for v in doc["templating"]["list"]:
        if v["type"] == "query":
            match = _LABEL_VALUES.match(v["query"])
            assert match, f"variable {v['name']}: not a label_values() query: {v['query']}"
            found.append(Query(f"variable {v['name']!r}", match["selector"]))
    return found


def variables_used(expr: str) -> set[str]:
    return set(_VARIABLE.findall(expr)) | {m for m in re.findall(r"\$\{?(\w+)", expr)}


def substitute(expr: str, values: dict[str, str]) -> str:
    """`expr` with each `$name` replaced by `values[name]`; a variable without a value raises KeyError."""
    out = _VARIABLE.sub(lambda m: values[m.group(1)], expr)
    assert "$" not in out, f"unknown template variable left in {out}"
    return out
