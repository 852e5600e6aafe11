"""Pictures of a recovery: one recorded failure drawn as a timeline, PNG and SVG.

Called by `python -m eep_demo` (the demo's run), bench/mttr.py (PerMember against GroupRestart, side by side,
from bench/results/mttr.json) and tests/e2e/test_picture.py. It draws only what the scenario recorded: the
CR status samples (`eep_demo.timeline.StatusSample`), the client's attempts (`eep_demo.timeline.Attempt`) and
the kill time; nothing is measured here.

Drawn with matplotlib, a maintained library that writes PNG (its Agg renderer) and SVG from one figure and
has the step plots, broken bars and shared time axes a timeline needs. Figures are built with
`matplotlib.figure.Figure`, never pyplot: no display or GUI toolkit (the demo and the benchmark run in
terminals and CI) and no global figure state. SVG text stays text (`svg.fonttype: none`) so a reader can
search the marks and the tests can find them.

A recovery picture has three panels on one time axis, seconds since the kill:

1. **active ranks**: `status.membership.activeRanks` as sampled (a step plot), the world size dashed.
2. **answers per second**: correct answers completed per second (over the 3 s before each point, by
   `Attempt.done`), and attempts that got no answer (retried) per second.
3. **member lanes**: each member's state per sample (Healthy, Failed, Restarting, Joining, Pending), and the
   cluster phase above them.

The marks, vertical lines across the panels (`recovery_marks`): **kill** (0); **detection**
(`eep_demo.timeline.detect_time`); **fence**: the first correct answer after the kill served without the
killed member's ranks (the reply's `degraded=True`, recorded in the attempt's detail): the survivors passed
their fence; **join**: the first sample after detection with the killed member Joining; **full capacity**
(`eep_demo.timeline.full_time`). A mark that did not happen (a group restart has no fence and no join) is
left out and named in the panel's note.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.patches import Patch

from eep_demo.timeline import (
    Attempt,
    AttemptResult,
    MemberSample,
    StatusSample,
    detect_time,
    full_time,
)

__all__ = [
    "Recording",
    "RecoveryMarks",
    "draw_mttr",
    "draw_recovery",
    "recovery_marks",
]

STATE_COLOURS: Mapping[str, str] = {
    "Healthy": "#2ca02c",
    "Failed": "#d62728",
    "Restarting": "#ff7f0e",
    "Joining": "#1f77b4",
    "Pending": "#9e9e9e",
}
PHASE_COLOURS: Mapping[str, str] = {
    "Running": "#2ca02c",
    "Degraded": "#ffbf00",
    "Recovering": "#1f77b4",
    "Restarting": "#ff7f0e",
    "Pending": "#9e9e9e",
    "Failed": "#d62728",
}
MARK_COLOURS: Mapping[str, str] = {
    "kill": "#d62728",
    "detection": "#ff7f0e",
    "fence": "#9467bd",
    "join": "#1f77b4",
    "full capacity": "#2ca02c",
}
_DEGRADED = re.compile(r"\bdegraded=(True|False)\b")


@dataclasses.dataclass(frozen=True)
class Recording:
    """One recorded failure: what the scenario observed.

    Times are seconds on one monotonic clock (the scenario's); `to_json` rebases them on the kill.
    """

    title: str
    member: int
    """The member whose processes were SIGKILLed."""
    kill_t: float
    samples: tuple[StatusSample, ...]
    attempts: tuple[Attempt, ...]
    end_t: float | None = None
    """When the client stopped sending; None: the last sample or attempt."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict, times in seconds since the kill (rounded to 1 ms). Samples equal to the one
        before them (all but the time) are left out, the last one kept: the status is a step function
        between samples, so what the timeline functions compute from it is unchanged."""

        def t(v: float) -> float:
            return round(v - self.kill_t, 3)

        kept: list[StatusSample] = []
        for i, s in enumerate(self.samples):
            last = i == len(self.samples) - 1
            if not kept or last or dataclasses.replace(s, t=0.0) != dataclasses.replace(kept[-1], t=0.0):
                kept.append(s)
        return {
            "title": self.title,
            "member": self.member,
            "kill_t": 0.0,
            "end_t": None if self.end_t is None else t(self.end_t),
            "samples": [
                {
                    "t": t(s.t),
                    "phase": s.phase,
                    "epoch": s.epoch,
                    "active_ranks": s.active_ranks,
                    "world_size": s.world_size,
                    "members": [[m.index, m.state, m.pod_uid, m.restarts] for m in s.members],
                }
                for s in kept
            ],
            "attempts": [
                [a.request_id, t(a.sent), t(a.done), a.result.value, a.detail] for a in self.attempts
            ],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Recording:
        """The inverse of `to_json`. Raises KeyError, TypeError or ValueError on a malformed document."""
        samples = tuple(
            StatusSample(
                t=float(s["t"]),
                phase=str(s["phase"]),
                epoch=int(s["epoch"]),
                active_ranks=int(s["active_ranks"]),
                world_size=int(s["world_size"]),
                members=tuple(
                    MemberSample(int(i), str(state), None if uid is None else str(uid), int(restarts))
                    for i, state, uid, restarts in s["members"]
                ),
            )
            for s in doc["samples"]
        )
        attempts = tuple(
            Attempt(str(rid), float(sent), float(done), AttemptResult(result), str(detail))
            for rid, sent, done, result, detail in doc["attempts"]
        )
        end = doc.get("end_t")
        return cls(
            title=str(doc.get("title", "")),
            member=int(doc["member"]),
            kill_t=float(doc["kill_t"]),
            samples=samples,
            attempts=attempts,
            end_t=None if end is None else float(end),
        )

    @property
    def start_t(self) -> float:
        times = [s.t for s in self.samples] + [a.sent for a in self.attempts]
        return min(times, default=self.kill_t)

    @property
    def stop_t(self) -> float:
        times = [s.t for s in self.samples] + [a.done for a in self.attempts]
        if self.end_t is not None:
            times.append(self.end_t)
        return max(times, default=self.kill_t)


@dataclasses.dataclass(frozen=True)
class RecoveryMarks:
    """The marked moments, seconds since the kill; None: it did not happen in the recording."""

    detection: float | None
    fence: float | None
    join: float | None
    full_capacity: float | None

    def items(self) -> list[tuple[str, float | None]]:
        """(label, seconds since the kill) in the order of a recovery, the kill first."""
        return [
            ("kill", 0.0),
            ("detection", self.detection),
            ("fence", self.fence),
            ("join", self.join),
            ("full capacity", self.full_capacity),
        ]


def recovery_marks(rec: Recording) -> RecoveryMarks:
    """Pure: the marks of the module docstring, from the recording."""
    detect = detect_time(rec.samples, rec.kill_t, rec.member)
    full = full_time(rec.samples, detect)
    fence = min(
        (
            a.done
            for a in rec.attempts
            if a.result is AttemptResult.OK and a.done > rec.kill_t and _degraded(a.detail)
        ),
        default=None,
    )
    join = None
    if detect is not None:
        join = next(
            (
                s.t
                for s in rec.samples
                if s.t >= detect and (m := s.member(rec.member)) is not None and m.state == "Joining"
            ),
            None,
        )

    def rel(v: float | None) -> float | None:
        return None if v is None else v - rec.kill_t

    return RecoveryMarks(rel(detect), rel(fence), rel(join), rel(full))


def _degraded(detail: str) -> bool:
    m = _DEGRADED.search(detail)
    return m is not None and m.group(1) == "True"


def answers_per_second(
    attempts: Iterable[Attempt],
    result: AttemptResult,
    start: float,
    stop: float,
    *,
    window_s: float = 3.0,
    step_s: float = 0.25,
) -> tuple[list[float], list[float]]:
    """Pure: (times, rates): at each `step_s` from `start` to `stop`, the attempts with `result` completed in
    the `window_s` seconds before it, per second. A trailing window, so a rate never rises before the
    answers that make it (a client with two requests in flight completes answers in bunches: 1 s bins
    jump between 0 and 2)."""
    done = sorted(a.done for a in attempts if a.result is result)
    n = max(1, math.ceil((stop - start) / step_s))
    times = [start + i * step_s for i in range(n + 1)]
    rates = [sum(1 for d in done if t - window_s < d <= t) / window_s for t in times]
    return times, rates


# ------------------------------------------------------------------ drawing


def draw_recovery(rec: Recording, out: Path) -> list[Path]:
    """Draw `rec` and write `out` with the suffixes .png and .svg (any suffix of `out` is replaced; the
    folder is created). Returns the written paths, PNG first. Raises OSError when they cannot be written."""
    with _style():
        fig = Figure(figsize=(11, 6.5), layout="constrained")
        _draw_one(fig, rec, legend=True)
        return _save(fig, out)


def draw_mttr(doc: Mapping[str, Any], out: Path) -> list[Path]:
    """Draw bench/results/mttr.json (`doc`, parsed): one column per recovery mode, one row per simulated
    weight-load time. Runs that recorded their timeline (`run["timeline"]`, a `Recording.to_json`) are drawn
    as in `draw_recovery` with one time axis per row; when no run has a timeline (files written before
    bench/mttr.py recorded them) each run is drawn from its summary numbers: detection, serving resumed and
    full capacity on a time line, the seconds with no serving as a bar. Writes `out` as .png and .svg;
    returns the paths, PNG first. Raises KeyError on a document without `runs`, OSError on a failed write."""
    runs: list[Mapping[str, Any]] = list(doc["runs"])
    modes = list(dict.fromkeys(str(r["mode"]) for r in runs))
    delays = sorted({float(r["load_delay_s"]) for r in runs})
    by_key = {(str(r["mode"]), float(r["load_delay_s"])): r for r in runs}
    with _style():
        if any("timeline" in r for r in runs):
            fig = Figure(figsize=(7 * len(modes), 5.2 * len(delays)), layout="constrained")
            rows = fig.subfigures(len(delays), 1, squeeze=False)[:, 0]
            for row, delay in zip(rows, delays, strict=True):
                row.suptitle(f"simulated weight-load time {delay:g} s", fontweight="bold")
                cols = row.subfigures(1, len(modes), squeeze=False)[0]
                recs = {m: _run_recording(by_key.get((m, delay)), m, delay) for m in modes}
                lo = min((r.start_t - r.kill_t for r in recs.values() if r is not None), default=0.0)
                hi = max((r.stop_t - r.kill_t for r in recs.values() if r is not None), default=1.0)
                for col, mode in zip(cols, modes, strict=True):
                    rec = recs[mode]
                    if rec is None:
                        col.suptitle(f"{mode}: no timeline recorded")
                        continue
                    _draw_one(col, rec, legend=mode == modes[-1], xlim=(lo, hi))
        else:
            fig = Figure(figsize=(6 * len(modes), 1.9 * len(delays) + 1.2), layout="constrained")
            axes = fig.subplots(len(delays), len(modes), squeeze=False, sharex=True)
            hi = max(
                (
                    float(v)
                    for r in runs
                    for v in (r.get("full_s"), r.get("resume_s"), r.get("detect_s"))
                    if isinstance(v, int | float)
                ),
                default=1.0,
            )
            for i, delay in enumerate(delays):
                for j, mode in enumerate(modes):
                    _draw_summary(axes[i][j], by_key.get((mode, delay)), mode, delay, hi)
            fig.suptitle(
                "MTTR: one member SIGKILLed (from the summary numbers; rerun bench/mttr.py for timelines)"
            )
        return _save(fig, out)


def _run_recording(run: Mapping[str, Any] | None, mode: str, delay: float) -> Recording | None:
    if run is None or "timeline" not in run:
        return None
    rec = Recording.from_json(run["timeline"])
    return dataclasses.replace(rec, title=rec.title or f"{mode}, weight-load time {delay:g} s")


def _save(fig: Figure, out: Path) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=110)
    fig.savefig(paths[1], metadata={"Date": None})
    return paths


def _style() -> AbstractContextManager[None]:
    # svg.fonttype none: SVG text stays <text>, searchable (the module docstring says why).
    return matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9.0})


def _draw_one(
    fig: Figure | SubFigure,
    rec: Recording,
    *,
    legend: bool,
    xlim: tuple[float, float] | None = None,
) -> None:
    n_members = max((len(s.members) for s in rec.samples), default=0)
    ax_ranks, ax_rps, ax_lanes = fig.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [2.0, 2.0, 0.45 * (n_members + 1) + 0.4]}
    )
    k = rec.kill_t
    lo, hi = xlim or (rec.start_t - k, rec.stop_t - k)
    marks = recovery_marks(rec)
    fig.suptitle(rec.title or f"member {rec.member} killed")

    # Active ranks: the status as sampled, held until the next sample.
    if rec.samples:
        ts = [s.t - k for s in rec.samples] + [rec.stop_t - k]
        active = [s.active_ranks for s in rec.samples]
        world = [s.world_size for s in rec.samples]
        ax_ranks.step(ts, [*active, active[-1]], where="post", color="#1f77b4", lw=2, label="active ranks")
        ax_ranks.step(
            ts, [*world, world[-1]], where="post", color="#555555", lw=1, ls="--", label="world size"
        )
        ax_ranks.set_ylim(-0.3, max(world) + 0.6)
    handles, _ = ax_ranks.get_legend_handles_labels()
    if marks.detection is not None and marks.detection > 0:
        # The killed member's ranks are dead from the kill on; the status says so only at detection.
        ax_ranks.axvspan(0.0, marks.detection, color="#d62728", alpha=0.08, lw=0)
        handles.append(Patch(color="#d62728", alpha=0.08, label="killed ranks, still active in the status"))
    ax_ranks.set_ylabel("ranks")
    ax_ranks.yaxis.get_major_locator().set_params(integer=True)
    ax_ranks.legend(handles=handles, loc="lower left", fontsize=7, framealpha=0.8)

    # Answers per second.
    start = rec.start_t
    for result, colour, label in (
        (AttemptResult.OK, "#2ca02c", "correct answers / s"),
        (AttemptResult.NO_ANSWER, "#d62728", "unanswered attempts / s (retried)"),
        (AttemptResult.WRONG, "#000000", "wrong answers / s"),
    ):
        times, rates = answers_per_second(rec.attempts, result, start, rec.stop_t)
        if result is not AttemptResult.OK and not any(rates):
            continue
        ax_rps.plot([t - k for t in times], rates, color=colour, lw=1.5, label=label)
    ax_rps.set_ylabel("per second (3 s window)")
    ax_rps.set_ylim(bottom=0)
    ax_rps.legend(loc="lower left", fontsize=7, framealpha=0.8)

    _draw_lanes(ax_lanes, rec, n_members)
    ax_lanes.set_xlabel(f"seconds since the kill of member {rec.member}")

    missing = []
    for label, at in marks.items():
        if at is None:
            missing.append(label)
            continue
        colour = MARK_COLOURS[label]
        for ax in (ax_ranks, ax_rps, ax_lanes):
            ax.axvline(at, color=colour, lw=1.2, ls=":" if label != "kill" else "-")
    # Labels above the top panel, staggered so close marks stay readable.
    placed = [(label, at) for label, at in marks.items() if at is not None]
    for i, (label, at) in enumerate(placed):
        ax_ranks.annotate(
            f"{label} {at:+.1f} s" if label != "kill" else "kill",
            xy=(at, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, 2 + 10 * (i % 3)),
            textcoords="offset points",
            color=MARK_COLOURS[label],
            fontsize=8,
            fontweight="bold",
            annotation_clip=False,
        )
    if missing:
        ax_rps.text(
            0.99,
            0.97,
            "not in this recovery: " + ", ".join(missing),
            transform=ax_rps.transAxes,
            ha="right",
            va="top",
            fontsize=7,
            color="#555555",
        )
    ax_ranks.set_xlim(lo, hi)
    if legend:
        handles = [Patch(color=c, label=s) for s, c in STATE_COLOURS.items()]
        ax_lanes.legend(
            handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, title="member state"
        )


def _segments(samples: Sequence[StatusSample], stop: float, key: Any) -> list[tuple[float, float, str]]:
    """(start, width, value) runs of `key(sample)` (None: no bar), each held until the next sample."""
    out: list[tuple[float, float, str]] = []
    for i, s in enumerate(samples):
        end = samples[i + 1].t if i + 1 < len(samples) else stop
        v = key(s)
        if v is None:
            continue
        if out and out[-1][2] == v and math.isclose(out[-1][0] + out[-1][1], s.t):
            out[-1] = (out[-1][0], end - out[-1][0], v)
        else:
            out.append((s.t, end - s.t, v))
    return out


def _draw_lanes(ax: Axes, rec: Recording, n_members: int) -> None:
    k = rec.kill_t
    labels = []
    for lane in range(n_members):

        def state(s: StatusSample, lane: int = lane) -> str | None:
            m: MemberSample | None = s.member(lane)
            return None if m is None else m.state

        segs = _segments(rec.samples, rec.stop_t, state)
        y = n_members - lane
        ax.broken_barh(
            [(a - k, w) for a, w, _ in segs],
            (y - 0.35, 0.7),
            facecolors=[STATE_COLOURS.get(v, "#cccccc") for _, _, v in segs],
        )
        labels.append((y, f"member {lane}" + (" (killed)" if lane == rec.member else "")))
    phase_y = n_members + 1
    span = max(rec.stop_t - rec.start_t, 1e-9)
    for a, w, v in _segments(rec.samples, rec.stop_t, lambda s: s.phase):
        ax.broken_barh([(a - k, w)], (phase_y - 0.35, 0.7), facecolors=PHASE_COLOURS.get(v, "#cccccc"))
        if w / span > 0.07:  # a name wider than its bar would cover its neighbours'
            ax.text(a - k + w / 2, phase_y, v, ha="center", va="center", fontsize=6.5, clip_on=True)
    labels.append((phase_y, "cluster phase"))
    ax.set_yticks([y for y, _ in labels], [t for _, t in labels], fontsize=7)
    ax.set_ylim(0.4, phase_y + 0.6)


def _draw_summary(ax: Axes, run: Mapping[str, Any] | None, mode: str, delay: float, hi: float) -> None:
    ax.set_title(f"{mode}, weight-load time {delay:g} s", fontsize=9)
    ax.set_yticks([])
    ax.set_xlim(-0.05 * hi, 1.08 * hi)
    ax.set_ylim(0, 1)
    if run is None or "error" in run:
        ax.text(0.5, 0.5, "no result" if run is None else "run failed", ha="center", transform=ax.transAxes)
        return
    no_serving = run.get("no_serving_s")
    if isinstance(no_serving, int | float):
        ax.barh(0.25, no_serving, height=0.2, color="#d62728", alpha=0.6)
        ax.text(no_serving, 0.25, f"  no serving, in all {no_serving:.1f} s", va="center", fontsize=7)
    ax.axvline(0.0, color=MARK_COLOURS["kill"], lw=1.2)
    ax.text(0.0, 0.93, "kill", color=MARK_COLOURS["kill"], fontsize=8, fontweight="bold", va="top")
    for label, key, colour, y in (
        ("detection", "detect_s", MARK_COLOURS["detection"], 0.8),
        ("serving resumed", "resume_s", "#555555", 0.65),
        ("full capacity", "full_s", MARK_COLOURS["full capacity"], 0.5),
    ):
        at = run.get(key)
        if not isinstance(at, int | float):
            continue
        ax.axvline(at, color=colour, lw=1.2, ls=":")
        ax.text(at, y, f" {label} {at:.1f} s", color=colour, fontsize=7.5, fontweight="bold", va="center")
    ax.set_xlabel("seconds since the kill")
