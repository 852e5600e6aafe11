"""A real Prometheus (Debian's `prometheus` binary) scraping the operator, with the project's alert rules.

Called by `eep_demo.scenario`. It scrapes the operator pod's `/metrics` at its pod IP every second and
evaluates `deploy/prometheus/elasticep-rules.yaml` every second. The rules' look-back windows (5m, 10m, ...)
would keep an alert firing for minutes after a failure; the demo can shorten them (`scale_windows`) so it
sees the alert resolve within its run. The summary says which windows were used.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["AlertState", "Prometheus", "scale_windows"]

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class AlertState:
    name: str
    state: str
    """`pending`, `firing`, or `inactive` when Prometheus lists no such alert."""
    labels: dict[str, str]


class Prometheus:
    def __init__(
        self, workdir: Path, rules_file: Path, window: str | None, binary: str = "prometheus"
    ) -> None:
        self.workdir = workdir
        self.rules_file = rules_file
        self.window = window
        self.binary = shutil.which(binary) or binary
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "prometheus.log"

    def start(self, target: str) -> None:
        """`target`: host:port of the operator's metrics. Raises RuntimeError if Prometheus fails to start."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        rules = self.rules_file.read_text()
        if self.window:
            rules = scale_windows(rules, self.window)
        (self.workdir / "rules.yaml").write_text(rules)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [str(self.workdir / "rules.yaml")],
            "scrape_configs": [
                {"job_name": "elastic-ep-operator", "static_configs": [{"targets": [target]}]}
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
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}: {self.tail()}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).read()
                return
            time.sleep(0.5)
        raise RuntimeError(f"prometheus not ready after 60 s: {self.tail()}")

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
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as resp:
            doc = json.loads(resp.read())
        if doc.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {doc}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get("/api/v1/query", query=expr)["result"]
        return result

    def target_up(self) -> bool:
        return any(r["value"][1] == "1" for r in self.query('up{job="elastic-ep-operator"}'))

    def alert(self, name: str, **labels: str) -> AlertState:
        """The named alert's state (from /api/v1/alerts), narrowed to series carrying `labels`."""
        for a in self._get("/api/v1/alerts")["alerts"]:
            got = a.get("labels", {})
            if got.get("alertname") == name and all(got.get(k) == v for k, v in labels.items()):
                return AlertState(name, str(a.get("state")), dict(got))
        return AlertState(name, "inactive", {})
