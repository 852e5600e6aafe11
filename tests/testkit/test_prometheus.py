"""The test kit's Prometheus: the rules' window scaling, and a real Prometheus (Debian's) scraping itself."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from eep_testkit.prometheus import Prometheus, scale_windows
from eep_testkit.wait import wait_until

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "elasticep-rules.yaml"


def test_scale_windows_rewrites_every_range_and_offset() -> None:
    text = scale_windows(RULES.read_text(), "40s")
    doc = yaml.safe_load(text)
    exprs = [r["expr"] for g in doc["groups"] for r in g["rules"] if "expr" in r]
    joined = "\n".join(exprs)
    assert "[5m]" not in joined and "offset 5m" not in joined and "[10m]" not in joined
    assert "[40s]" in joined and "offset 40s" in joined
    # Everything else (names, labels, annotations, `for:`) is untouched.
    original = yaml.safe_load(RULES.read_text())
    assert [r.get("alert") for g in doc["groups"] for r in g["rules"]] == [
        r.get("alert") for g in original["groups"] for r in g["rules"]
    ]
    assert [r.get("for") for g in doc["groups"] for r in g["rules"]] == [
        r.get("for") for g in original["groups"] for r in g["rules"]
    ]


def test_scaled_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = Path("/usr/bin/promtool")
    if not promtool.exists():
        pytest.skip("promtool missing: run `make tools`")
    rules = tmp_path / "rules.yaml"
    rules.write_text(scale_windows(RULES.read_text(), "40s"))
    out = subprocess.run(
        [str(promtool), "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr + out.stdout


def test_a_real_prometheus_scraping_itself(tmp_path: Path) -> None:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus missing: run `make tools`")
    prom = Prometheus(tmp_path, RULES, "40s")
    self_job = {"job_name": "self-again", "static_configs": [{"targets": [f"127.0.0.1:{prom.port}"]}]}
    prom.start(f"127.0.0.1:{prom.port}", timeout_s=30, extra_jobs=[self_job])
    try:
        wait_until(prom.target_up, 30, "the scrape of itself")
        t0 = time.time()
        series = wait_until(lambda: prom.query('up{job="self-again"} == 1'), 30, "the extra job")
        assert series[0]["metric"]["job"] == "self-again"
        assert prom.query_range("up", t0 - 5, time.time())
        assert prom.alert("ElasticEPRankFailed").state == "inactive"
    finally:
        prom.stop()
    assert prom.proc is not None and prom.proc.poll() is not None
