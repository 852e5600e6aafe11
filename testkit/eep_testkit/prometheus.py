"""A real Prometheus (Debian's `prometheus` binary) scraping the operator (and any extra scrape jobs) every
second, with the project's alert rules evaluated every second.

The rules' look-back windows (5m, 10m, ...) would keep an alert firing for minutes after a failure;
`scale_windows` shortens them, so a run sees the alert resolve. Who uses it: the demo
(`eep_demo.scenario`: the rank-failure alert fires and resolves), tests/alerts/test_alerts_e2e.py,
tests/dashboard/test_dashboard_e2e.py (the workers as a `file_sd_configs` job).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from eep_testkit.http_client import HTTPError, get_json
from eep_testkit.ports import free_port

__all__ = ["AlertState", "Prometheus", "scale_windows"]

JOB = "elastic-ep-operator"
_DURATION = re.compile(r"(\[|offset\s+)(\d+)([smh])(\])?")


def scale_windows(rules_text: str, window: str) -> str:
    """Every range selector `[Nm]` and `offset Nm` in the expressions becomes `window` (e.g. `40s`). Pure."""

    def sub(m: re.Match[str]) -> str:
        return f"{m.group(1)}{window}{m.group(4) or ''}"

    doc = yaml.safe_load(rules_text)
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            if "expr" in rule:
                rule["expr"] = _DURATION.sub(sub, str(rule["expr"]))
    return str(yaml.safe_dump(doc, sort_keys=False))


@dataclass(frozen=True)
class AlertState:
    name: str
    state: str
    """`pending`, `firing`, or `inactive` when Prometheus lists no such alert."""
    labels: dict[str, str]


class Prometheus:
    """One Prometheus process in `workdir` (config, rules, data, log). `window`: scale the rules' windows to
    it (None: the rules file unchanged)."""

    def __init__(
        self, workdir: Path, rules_file: Path, window: str | None, binary: str = "prometheus"
    ) -> None:
        self.workdir = workdir
        self.rules_file = rules_file
        self.window = window
        self.binary = shutil.which(binary) or binary
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "prometheus.log"

    def start(
        self, target: str, timeout_s: float = 60.0, extra_jobs: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        """`target`: host:port of the operator's metrics; `extra_jobs`: more scrape configs (e.g. the workers
        from a `file_sd_configs` file). Raises RuntimeError if Prometheus fails to start."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        rules = self.rules_file.read_text()
        if self.window:
            rules = scale_windows(rules, self.window)
        (self.workdir / "rules.yaml").write_text(rules)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [str(self.workdir / "rules.yaml")],
            "scrape_configs": [
                {"job_name": JOB, "static_configs": [{"targets": [target]}]},
                *(dict(job) for job in extra_jobs),
            ],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        argv = [
            self.binary,
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
        ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}: {self.tail()}")
            try:
                self.query("up")
                return
            except (OSError, HTTPError, ValueError, RuntimeError):
                time.sleep(0.5)
        raise RuntimeError(f"prometheus not ready after {timeout_s:g} s: {self.tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _get(self, path: str, **params: str) -> Any:
        """The `data` of an API answer. Raises OSError/HTTPError/ValueError (no answer) or RuntimeError (an
        answer that is not a success)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        doc = get_json(self.url, f"{path}{query}", timeout_s=5)
        if doc.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {doc}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        result: list[dict[str, Any]] = self._get("/api/v1/query", query=expr)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step_s: float = 1.0) -> list[dict[str, Any]]:
        """A range query's result matrix over [start, end] (Unix seconds)."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"}
        result: list[dict[str, Any]] = self._get("/api/v1/query_range", **params)["result"]
        return result

    def target_up(self) -> bool:
        return any(r["value"][1] == "1" for r in self.query(f'up{{job="{JOB}"}}'))

    def alert(self, name: str, **labels: str) -> AlertState:
        """The named alert's state (from /api/v1/alerts), narrowed to series carrying `labels`."""
        for a in self._get("/api/v1/alerts")["alerts"]:
            got = a.get("labels", {})
            if got.get("alertname") == name and all(got.get(k) == v for k, v in labels.items()):
                return AlertState(name, str(a.get("state")), dict(got))
        return AlertState(name, "inactive", {})
