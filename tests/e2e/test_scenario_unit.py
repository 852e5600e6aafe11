"""Unit tests of the demo's pure helpers (no cluster): the CR it applies, the rule-window scaling, status
samples from raw CR objects, the live view's progress line."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
import yaml

from eep_demo.cluster import sample_of
from eep_demo.live import progress_line
from eep_demo.prom import scale_windows
from eep_demo.scenario import RULES, cluster_manifest, pick_member
from eep_operator.api.v1alpha1 import ElasticEPClusterSpec


def test_cluster_manifest_is_a_valid_spec_with_the_requested_mode() -> None:
    cr = cluster_manifest("x", mode="GroupRestart", nodes=3)
    spec = ElasticEPClusterSpec.model_validate(cr["spec"])
    assert cr["metadata"] == {"name": "x"}
    assert spec.recovery.mode.value == "GroupRestart" and spec.nodes == 3
    assert spec.template.service_account_name == "elastic-ep-worker"
    assert spec.template.command is None


def test_load_delay_wraps_the_engine_command_in_a_sleeping_shell() -> None:
    cr = cluster_manifest("x", load_delay_s=0.2)
    command = ElasticEPClusterSpec.model_validate(cr["spec"]).template.command
    assert command is not None
    # The operator passes the engine's command line (join flag included) as the container's args.
    args = ["echo", "eep-worker", "serve", "--rejoin"]
    out = subprocess.run([*command, *args], capture_output=True, text=True, timeout=10, check=True)
    assert out.stdout.strip() == "eep-worker serve --rejoin"


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


def test_sample_of_a_raw_cr() -> None:
    obj = {
        "spec": {"nodes": 2, "ranksPerNode": 1},
        "status": {
            "phase": "Degraded",
            "worldSize": 2,
            "membership": {"epoch": 7, "activeRanks": [0]},
            "members": [
                {"index": 0, "state": "Healthy", "podUid": "a", "restarts": 0},
                {"index": 1, "state": "Failed", "podUid": "b", "restarts": 2},
            ],
        },
    }
    s = sample_of(obj, 3.0)
    assert (s.t, s.phase, s.epoch, s.active_ranks, s.world_size) == (3.0, "Degraded", 7, 1, 2)
    assert s.member(1) is not None and s.member(1).restarts == 2  # type: ignore[union-attr]
    assert not s.full
    empty = sample_of({"spec": {"nodes": 4, "ranksPerNode": 1}}, 0.0)
    assert empty.world_size == 4 and empty.epoch == 0 and not empty.full


def test_pick_member_never_picks_member_zero() -> None:
    rng = random.Random(0)
    assert {pick_member(4, None, rng) for _ in range(100)} == {1, 2, 3}
    assert pick_member(4, 2, rng) == 2
    with pytest.raises(RuntimeError, match="not a non-zero member"):
        pick_member(4, 0, rng)


def test_progress_line() -> None:
    line = progress_line("recovering", 12.34, {"sent": 5, "ok": 4, "wrong": 0, "no_answer": 1})
    assert line.plain == "recovering   12.3s  requests 5  answers ok 4  unanswered (retried) 1  wrong 0"
