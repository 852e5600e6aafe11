"""The pinned command-line tools (kubectl and helm, which `hack/install-tools.sh` puts side by side) run
against one kubeconfig, and the operator's chart installed with them.

Who uses it: the demo (`eep_demo.scenario`: helm install, kubectl apply/logs/delete), tests/conftest.py's
`kubectl` fixture, tests/chart (helm), tests/alerts (helm).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eep_testkit.ports import free_port

__all__ = ["CHART", "OperatorPorts", "ToolFailed", "Tools"]

CHART = Path(__file__).resolve().parents[2] / "charts" / "elastic-ep-operator"


class ToolFailed(RuntimeError):
    """A tool exited non-zero; the message has the command line and the tool's output."""


@dataclass(frozen=True)
class OperatorPorts:
    """The operator's metrics and health ports. Pods of the process node share the host's ports: free ones
    keep parallel clusters from colliding."""

    metrics: int
    health: int

    @classmethod
    def free(cls) -> OperatorPorts:
        return cls(free_port(), free_port())

    def sets(self) -> list[str]:
        """The chart values that set them."""
        return [f"operator.metricsPort={self.metrics}", f"operator.healthPort={self.health}"]


@dataclass(frozen=True)
class Tools:
    bin_dir: Path
    """Where `kubectl` and `helm` are."""
    kubeconfig: Path

    def run(self, tool: str, args: Sequence[str], timeout_s: float = 180, check: bool = True) -> str:
        """The tool's stdout. Raises ToolFailed when it exits non-zero (unless not `check`), and
        subprocess.TimeoutExpired after `timeout_s` seconds."""
        argv = [str(self.bin_dir / tool), f"--kubeconfig={self.kubeconfig}", *args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        if check and r.returncode != 0:
            raise ToolFailed(f"{tool} {' '.join(args)} failed ({r.returncode}):\n{r.stderr}{r.stdout}")
        return r.stdout

    def install_chart(
        self, release: str, namespace: str, *sets: str, wait_s: float | None = 90, upgrade: bool = False
    ) -> str:
        """`helm install` (`upgrade --install` when `upgrade`) of the operator's chart; waits up to `wait_s`
        for its objects to be ready (None: does not wait). With --force-conflicts: tests/conftest.py applies
        crds/ server-side as "kubectl", and Helm 4, applying the chart's identical copy server-side too,
        refuses to take over those fields without it. Raises ToolFailed."""
        verb = ["upgrade", "--install"] if upgrade else ["install"]
        args = [*verb, release, str(CHART), "-n", namespace, "--force-conflicts"]
        args += [f"--set={s}" for s in sets]
        if wait_s is not None:
            args += ["--wait", f"--timeout={wait_s:g}s"]
        return self.run("helm", args, timeout_s=(wait_s or 0) + 60)

    def apply(self, namespace: str, obj: dict[str, Any]) -> str:
        """`kubectl apply` of one object. Raises ToolFailed."""
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(obj, f)
        try:
            return self.run("kubectl", ["apply", "-n", namespace, "-f", f.name])
        finally:
            Path(f.name).unlink()
