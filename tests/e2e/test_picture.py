"""Pictures of a recovery (`eep_demo.picture`), drawn from recorded data, no cluster.

tests/data/recovery-timeline.json was recorded from a real run of the demo's failure step
(`eep_demo.scenario.run_failure` on the local control plane, the CPU example, member 2 SIGKILLed under the
demo's client settings) and saved with `Recording.to_json`. bench/results/mttr.json is the benchmark's
committed result.
"""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from eep_demo.__main__ import write_picture
from eep_demo.picture import Recording, answers_per_second, draw_mttr, draw_recovery, recovery_marks
from eep_demo.scenario import FailureResult
from eep_demo.timeline import (
    Attempt,
    AttemptResult,
    MemberSample,
    RecoveryMetrics,
    StatusSample,
    detect_time,
    full_time,
    recovery_metrics,
)

REPO = Path(__file__).resolve().parents[2]
RECORDED = REPO / "tests" / "data" / "recovery-timeline.json"
MTTR = REPO / "bench" / "results" / "mttr.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MARKS = ("kill", "detection", "fence", "join", "full capacity")


def recorded() -> Recording:
    return Recording.from_json(json.loads(RECORDED.read_text()))


def svg_texts(path: Path) -> list[str]:
    """Every text element's content; raises ParseError when the file is not XML."""
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg"), root.tag
    return ["".join(t.itertext()) for t in root.iter() if t.tag.endswith("}text") or t.tag == "text"]


def check_files(paths: list[Path], out: Path) -> list[str]:
    assert paths == [out.with_suffix(".png"), out.with_suffix(".svg")]
    png, svg = paths
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert png.stat().st_size > 10_000, "an empty figure"
    return svg_texts(svg)


def has_label(texts: list[str], label: str) -> bool:
    return any(t.strip() == label or t.strip().startswith(f"{label} ") for t in texts)


def test_picture_of_the_recorded_demo_run_has_every_mark(tmp_path: Path) -> None:
    rec = recorded()
    out = tmp_path / "pics" / "recovery"
    texts = check_files(draw_recovery(rec, out), out)
    for label in MARKS:
        assert has_label(texts, label), (label, texts)
    assert any("member 2 (killed)" in t for t in texts), texts
    assert any(t.startswith("seconds since the kill") for t in texts)


def test_marks_of_the_recorded_run_are_the_timeline_definitions() -> None:
    """The recorded run, as its scenario reported it: detection 8.43 s, full capacity 23.34 s after the kill;
    the survivors served degraded answers from 3.47 s on (their fence), the replacement joined at 12.23 s."""
    rec = recorded()
    marks = recovery_marks(rec)
    detect = detect_time(rec.samples, rec.kill_t, rec.member)
    assert marks.detection == pytest.approx(detect) and marks.detection == pytest.approx(8.428)
    assert marks.full_capacity == pytest.approx(full_time(rec.samples, detect))
    assert marks.full_capacity == pytest.approx(23.342)
    assert marks.fence == pytest.approx(3.466)
    assert marks.join == pytest.approx(12.232)
    assert marks.fence is not None and marks.join is not None
    assert marks.detection is not None and marks.full_capacity is not None
    assert 0 < marks.fence < marks.detection < marks.join < marks.full_capacity


def test_saved_timeline_keeps_the_metrics() -> None:
    """`to_json` drops samples equal to their predecessor: what `eep_demo.timeline` computes is unchanged."""
    rec = recorded()
    # Re-inflate: every sample repeated 0.1 s later, as a sampler polling faster would have seen it.
    dense = [x for s in rec.samples for x in (s, dataclasses.replace(s, t=s.t + 0.1))]
    rec_dense = dataclasses.replace(rec, samples=tuple(dense))
    back = Recording.from_json(json.loads(json.dumps(rec_dense.to_json())))
    assert len(back.samples) < len(dense)

    def metrics(r: Recording) -> RecoveryMetrics:
        return recovery_metrics(
            r.attempts,
            request_ids={a.request_id for a in r.attempts},
            samples=r.samples,
            kill_t=r.kill_t,
            member=r.member,
            killed_ranks=1,
            end_t=r.stop_t,
        )

    got, want = metrics(back), metrics(rec_dense)
    assert want.full_s is not None and want.detect_s is not None
    for field in ("detect_s", "resume_s", "full_s", "no_serving_s", "capacity_lost_rank_s"):
        assert getattr(got, field) == pytest.approx(getattr(want, field), abs=1e-6), field
    assert got.requests == want.requests
    assert recovery_marks(back) == recovery_marks(rec_dense)


def group_restart() -> Recording:
    """A whole-group restart, built from the recorder's types: every member Pending, no degraded answer."""
    H, P = "Healthy", "Pending"

    def sample(t: float, state: str, active: int, phase: str, uid: str) -> StatusSample:
        return StatusSample(
            t, phase, 1, active, 4, tuple(MemberSample(i, state, f"{uid}{i}", 0) for i in range(4))
        )

    samples = (
        sample(-5.0, H, 4, "Running", "a"),
        sample(0.6, P, 0, "Restarting", "b"),
        sample(12.2, H, 4, "Running", "b"),
        sample(16.0, H, 4, "Running", "b"),
    )
    attempts = tuple(
        Attempt(f"r{i}", t - 0.3, t, AttemptResult.OK if t < 0 or t > 15 else AttemptResult.NO_ANSWER, "")
        for i, t in enumerate(x / 2 for x in range(-9, 32))
    )
    return Recording("GroupRestart", 2, 0.0, samples, attempts, 16.0)


def test_group_restart_has_no_fence_or_join_and_the_picture_says_so(tmp_path: Path) -> None:
    rec = group_restart()
    marks = recovery_marks(rec)
    assert (marks.fence, marks.join) == (None, None)
    assert marks.detection == pytest.approx(0.6) and marks.full_capacity == pytest.approx(12.2)
    texts = check_files(draw_recovery(rec, tmp_path / "gr.png"), tmp_path / "gr.png")
    assert has_label(texts, "kill") and has_label(texts, "full capacity")
    assert not has_label(texts, "fence")
    assert "not in this recovery: fence, join" in texts
    assert "unanswered attempts / s (retried)" in texts


def test_answers_per_second_is_a_trailing_window() -> None:
    attempts = [Attempt(f"r{i}", t - 0.1, t, AttemptResult.OK) for i, t in enumerate([0.5, 1.0, 1.5, 5.0])]
    times, rates = answers_per_second(attempts, AttemptResult.OK, 0.0, 6.0, window_s=2.0, step_s=1.0)
    assert times == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert rates == [0.0, 1.0, 1.5, 0.5, 0.0, 0.5, 0.5]


def test_the_demo_writes_its_picture_and_the_timeline_it_drew(tmp_path: Path) -> None:
    """`python -m eep_demo`'s last step, fed with the recorded run as `scenario.run_failure` returns it."""
    rec = recorded()
    metrics = recovery_metrics(
        rec.attempts,
        request_ids={a.request_id for a in rec.attempts},
        samples=rec.samples,
        kill_t=rec.kill_t,
        member=rec.member,
        killed_ranks=1,
        end_t=rec.stop_t,
    )
    failure = FailureResult(
        rec.member, {}, metrics, list(rec.samples), [], [], rec.kill_t, attempts=rec.attempts, end_t=rec.end_t
    )
    out = tmp_path / "demo" / "recovery"
    paths = write_picture(failure, "cpu-demo", out)
    assert paths[2] == out.with_suffix(".json")
    texts = check_files(paths[:2], out)
    assert any("full capacity after 23.3 s" in t for t in texts), texts
    saved = Recording.from_json(json.loads(paths[2].read_text()))
    assert recovery_marks(saved) == recovery_marks(rec)


def mttr_doc_with_timelines() -> dict[str, Any]:
    per_member = dict(recorded().to_json(), title="")  # bench/mttr.py's title is drawn when there is none
    runs = [
        {"mode": "PerMember", "load_delay_s": 0.0, "timeline": per_member},
        {"mode": "GroupRestart", "load_delay_s": 0.0, "timeline": group_restart().to_json()},
    ]
    return {"benchmark": "mttr", "runs": runs}


def test_mttr_picture_side_by_side_from_the_committed_results(tmp_path: Path) -> None:
    doc = json.loads(MTTR.read_text())
    out = tmp_path / "mttr"
    texts = check_files(draw_mttr(doc, out), out)
    for mode in ("PerMember", "GroupRestart"):
        for delay in doc["settings"]["delays_s"]:
            assert f"{mode}, weight-load time {delay:g} s" in texts, texts
    for label in ("kill", "detection", "full capacity"):
        assert has_label(texts, label), label
    # GroupRestart at 30 s: 41.4 s without serving, as the JSON says.
    assert "  no serving, in all 41.4 s" in texts


def test_mttr_picture_draws_recorded_timelines_when_present(tmp_path: Path) -> None:
    out = tmp_path / "mttr"
    texts = check_files(draw_mttr(mttr_doc_with_timelines(), out), out)
    for label in MARKS:
        assert has_label(texts, label), label
    assert "not in this recovery: fence, join" in texts  # the GroupRestart column
    assert "PerMember, weight-load time 0 s" in texts
