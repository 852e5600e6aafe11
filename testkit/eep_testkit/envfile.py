"""Shell-style `KEY=VALUE` files: `hack/versions.env` (pinned tool versions) and `<venv>/mooncake-cpu.env`
(the loader environment `hack/setup-mooncake-cpu.sh` writes for the mooncake-cpu backend).

Who uses it: tests/chart/test_chart.py (the pinned Kubernetes version), bench/gpu_recovery.py (the
mooncake-cpu environment of its rank processes). The parser is the worker's own
(`eep_worker.loader.parse_env`, with which `eep-worker` applies the mooncake-cpu file in every pod); the
local cluster reads versions.env with its own few lines, since it imports nothing of the project
(`.importlinter`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from eep_worker.loader import parse_env

__all__ = ["mooncake_cpu_env", "parse_env", "read_env_file", "versions"]

REPO = Path(__file__).resolve().parents[2]


def read_env_file(path: Path) -> dict[str, str]:
    """`parse_env` of a file. Raises OSError when it cannot be read."""
    return parse_env(path.read_text())


def versions(repo: Path = REPO) -> dict[str, str]:
    """The pins of `hack/versions.env` (KUBE_VERSION, ETCD_VERSION, ...). Raises OSError."""
    return read_env_file(repo / "hack" / "versions.env")


def mooncake_cpu_env(prefix: Path | None = None) -> dict[str, str]:
    """What `hack/setup-mooncake-cpu.sh` wrote into `<prefix>/mooncake-cpu.env` (default: this interpreter's
    virtualenv); empty when the backend was never set up there."""
    path = Path(sys.prefix if prefix is None else prefix) / "mooncake-cpu.env"
    return read_env_file(path) if path.is_file() else {}
