"""The house's layout rules that import-linter cannot see (docs/architecture.md, "Map").

- Only the contract package spells the worker's `EEP_*` names, the worker's exit codes and the member
  labels and annotations; everyone else imports them (`eep_contract.env`, `.exitcodes`, `.v1alpha1`).
- Benchmarks and the demo use the test kit, never the test suite, and never edit `sys.path`.

Tests themselves may spell a name literally: a test that restates the contract is an independent check."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from eep_contract.env import contract_names
from eep_contract.exitcodes import ExitCode
from eep_contract.v1alpha1 import Annotations, Labels

ROOT = Path(__file__).resolve().parents[2]
CODE = ["operator", "worker", "hack", "testkit", "demo", "bench"]
"""Everything but the contract and the tests."""


def _files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py") if ".venv" not in p.parts)


def _strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def _keys(cls: type) -> set[str]:
    return {v for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, str)}


CONTRACT_STRINGS = contract_names() | _keys(Labels) | _keys(Annotations)


def _selectors(value: str) -> set[str]:
    """The label keys inside a selector string such as `elasticep.io/cluster=x,elasticep.io/member=1`."""
    return {part.split("=")[0].split("!")[0].strip() for part in value.split(",")}


@pytest.mark.parametrize("path", _files(*CODE), ids=lambda p: str(p.relative_to(ROOT)))
def test_contract_names_are_spelled_only_in_the_contract(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    found = [
        f"{path.relative_to(ROOT)}:{line}: {value!r}"
        for line, value in _strings(tree)
        if value in CONTRACT_STRINGS or (_selectors(value) & _keys(Labels) and "=" in value)
    ]
    assert not found, "import these from eep_contract instead:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "path", _files("operator", "worker", "testkit"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_worker_exit_codes_are_defined_only_in_the_contract(path: Path) -> None:
    """No module assigns a name that looks like an exit code to one of the worker's exit code values (the
    status CLI's own exit statuses, `EXIT_NOT_FOUND`/`EXIT_ERROR`, are its contract with a shell, not the
    worker's with the operator)."""
    codes = {int(c) for c in ExitCode}
    tree = ast.parse(path.read_text(), str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                name = target.id if isinstance(target, ast.Name) else ""
                if name.startswith("EXIT_") and node.value.value in codes and "cli" not in path.parts:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert not bad, "use eep_contract.exitcodes.ExitCode:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", _files("bench", "demo"), ids=lambda p: str(p.relative_to(ROOT)))
def test_bench_and_demo_use_the_kit_not_the_tests(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    bad = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] in {"tests", "worker"}
        ):
            bad.append(f"{node.lineno}: from {node.module}")
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "tests" for a in node.names):
            bad.append(f"{node.lineno}: import tests")
        if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys":
            bad.append(f"{node.lineno}: sys.path")
    assert not bad, f"{path.relative_to(ROOT)}: " + ", ".join(bad)
