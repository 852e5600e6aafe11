"""The Dockerfile, checked statically (no Docker engine runs here): pinned bases, both targets, non-root
users, no build tools in the final stages, OCI labels, install steps that carry only the distributions that
run in each image."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_TOOLS = {"gcc", "g++", "make", "build-essential", "cmake", "clang", "binutils", "git", "cuda-toolkit"}
DIGEST = re.compile(r"^[a-z0-9./_-]+:[A-Za-z0-9._-]+@sha256:[a-f0-9]{64}$")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def logical_lines(text: str) -> list[str]:
    """Instructions with backslash continuations joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], parts[0])
            assert len(parts) == 3 and parts[1].upper() == "AS", f"every stage is named: {line}"
            stages.append(Stage(parts[2], image))
        elif keyword == "ARG" and not stages:
            name, _, value = rest.partition("=")
            global_args[name] = value
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return global_args, stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    _, parsed = parse((ROOT / "Dockerfile").read_text())
    return {s.name: s for s in parsed}


def pyproject(folder: str) -> dict[str, Any]:
    return tomllib.loads((ROOT / folder / "pyproject.toml").read_text())


def test_both_targets_exist(stages: dict[str, Stage]) -> None:
    assert {"operator", "worker"} <= stages.keys()


def test_every_external_base_is_pinned_by_tag_and_digest(stages: dict[str, Stage]) -> None:
    for stage in stages.values():
        if stage.base in stages:
            continue
        assert DIGEST.match(stage.base), f"stage {stage.name}: {stage.base} is not image:tag@sha256:digest"
        assert ":latest@" not in stage.base
    assert stages["operator"].base.startswith("python:3.11") and "-slim" in stages["operator"].base
    assert stages["worker"].base.startswith("nvidia/cuda:") and "-runtime-" in stages["worker"].base


@pytest.mark.parametrize("target", ["operator", "worker"])
def test_targets_run_as_a_non_root_user(stages: dict[str, Stage], target: str) -> None:
    users = stages[target].args("USER")
    assert users, f"{target} sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"0", "root"}
    assert user.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it"


@pytest.mark.parametrize("target", ["operator", "worker"])
def test_final_stages_install_no_build_tools(stages: dict[str, Stage], target: str) -> None:
    for run in stages[target].args("RUN"):
        words = set(re.split(r"[\s;&|]+", run))
        assert not words & BUILD_TOOLS, f"{target} installs {words & BUILD_TOOLS}"
    # Only the build stage pip-installs; the final stage copies its virtualenv.
    assert not any("pip install" in run for run in stages[target].args("RUN"))
    assert any(c.startswith(f"--from={target}-build ") for c in stages[target].args("COPY"))


@pytest.mark.parametrize("target", ["operator", "worker"])
def test_oci_labels(stages: dict[str, Stage], target: str) -> None:
    labels = " ".join(stages[target].args("LABEL"))
    for key in ("title", "description", "source", "licenses", "version"):
        assert f"org.opencontainers.image.{key}=" in labels


def pip_installs(stage: Stage) -> list[list[str]]:
    found = []
    for run in stage.args("RUN"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if len(words) > 2 and words[0].endswith("pip") and words[1] == "install":
                found.append(words[2:])
    return found


IMAGE_DISTS = {"operator": ["./contract", "./operator"], "worker": ["./contract", "./worker[gpu]"]}
DEV_ONLY = ("hack", "testkit", "demo", "tests", "bench")


@pytest.mark.parametrize("target", ["operator", "worker"])
def test_each_image_installs_only_what_runs_in_it(stages: dict[str, Stage], target: str) -> None:
    (install,) = pip_installs(stages[f"{target}-build"])
    assert install == IMAGE_DISTS[target], "the contract and the image's own distribution, nothing else"
    copied = [w for c in stages[f"{target}-build"].args("COPY") for w in c.split()[:-1]]
    assert not [c for c in copied if c.startswith(DEV_ONLY)], "no development tooling in an image"


def test_distributions_pin_what_the_images_promise() -> None:
    worker = pyproject("worker")["project"]
    assert "torch==2.13.0" in worker["optional-dependencies"]["gpu"]
    assert "mooncake-transfer-engine-cuda13==0.3.14" in worker["optional-dependencies"]["gpu"]
    for folder in ("contract", "operator"):
        deps = pyproject(folder)["project"]["dependencies"]
        assert not any(dep.startswith(("torch", "mooncake", "pyzmq", "cryptography")) for dep in deps)
    for folder in ("operator", "worker"):
        assert "eep-contract==0.1.0" in pyproject(folder)["project"]["dependencies"]


def test_makefile_installs_every_distribution_of_the_repository() -> None:
    makefile = (ROOT / "Makefile").read_text()
    (dists,) = re.findall(r"^DISTS := (.*)$", makefile, re.M)
    folders = sorted(p.parent.name for p in ROOT.glob("*/pyproject.toml"))
    assert sorted(dists.split()) == folders


def test_copied_paths_exist_and_entrypoints_are_project_scripts(stages: dict[str, Stage]) -> None:
    for stage in stages.values():
        for copy in stage.args("COPY"):
            words = copy.split()
            if words[0].startswith("--from="):
                continue
            for source in words[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert stages["operator"].args("ENTRYPOINT") == ['["eep-operator"]']
    assert "eep-operator" in pyproject("operator")["project"]["scripts"]
    assert stages["worker"].args("ENTRYPOINT") == ['["eep-worker"]']
    assert "eep-worker" in pyproject("worker")["project"]["scripts"]
    assert stages["worker"].args("CMD") == ['["serve"]'], "docs/dev/interfaces.md: eep-worker serve"
