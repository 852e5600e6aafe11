"""Docs the alerts and the README link to exist, with the anchors they link."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from eep_contract.v1alpha1 import ConditionType

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub generates for headings: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", title)))
    return anchors


def test_every_runbook_url_has_its_section() -> None:
    anchors = github_anchors((DOCS / "runbook.md").read_text())
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "elasticep-rules.yaml").read_text())
    urls = [r["annotations"]["runbook_url"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert urls
    for url in urls:
        path, _, anchor = url.partition("#")
        assert path.endswith("docs/runbook.md"), url
        assert anchor in anchors, f"docs/runbook.md has no heading for #{anchor}"


def test_relative_links_between_docs_resolve() -> None:
    for page in DOCS.glob("*.md"):
        text = page.read_text()
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", text):
            assert (page.parent / target).resolve().exists(), f"{page.name} links to missing {target}"
        for target, anchor in re.findall(r"\]\(([^)#:]*\.md)?#([^)]+)\)", text):
            linked = (page.parent / target) if target else page
            assert anchor in github_anchors(linked.read_text()), (
                f"{page.name}: #{anchor} not in {linked.name}"
            )


def test_architecture_has_the_diagrams() -> None:
    text = (DOCS / "architecture.md").read_text()
    assert text.count("```mermaid") >= 2
    assert "stateDiagram" in text and "sequenceDiagram" in text


def test_every_warning_reason_and_condition_has_a_runbook_entry() -> None:
    """Each Warning Event reason the operator posts, each `Stalled` reason and each condition type is named
    in docs/runbook.md (issue #13: an entry for each new condition and Event reason)."""
    sources = [ROOT / "operator/eep_operator/core/planner.py", ROOT / "operator/eep_operator/reconcile.py"]
    text = "\n".join(p.read_text() for p in sources)
    reasons = set(re.findall(r'"Warning",\s*"(\w+)"', text)) | set(re.findall(r'stall\(\s*"(\w+)"', text))
    reasons |= set(re.findall(r'\(\s*"(\w+)",\s*f?"', text)) & {
        "MemberUnreachable",
        "SpecChangePending",
        "MixedRevisions",
    }
    reasons |= {c.value for c in ConditionType}
    assert len(reasons) > 15, reasons  # the patterns above still find the reasons
    runbook = (DOCS / "runbook.md").read_text()
    missing = sorted(r for r in reasons if r not in runbook)
    assert not missing, f"docs/runbook.md does not name {missing}"
