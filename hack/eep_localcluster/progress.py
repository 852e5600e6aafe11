"""Progress of long work: which step runs, how long it took on a measured machine, and how long it has run.

Called three ways: by `hack/build-control-plane.sh` (each Go resolve and build), the Makefile's virtualenv
targets and `hack/setup-mooncake-cpu.sh` (each pip install), as a script, before any virtualenv exists:

    python3 hack/eep_localcluster/progress.py --step "go build kube-apiserver" -- go build ...

and by the demo (`eep_demo.scenario`, `eep_demo.live`) for its waits, which read `EXPECTED`. Standard library
only, and no import from this package: the script form runs under the system's python3.

On a terminal a `Reporter` keeps one line up to date (step, elapsed, a bar against the expected duration);
elsewhere (CI logs, a file) it prints a start line, one line every `interval_s` with the elapsed time, and an
end line with the duration. A wrapped command's output (stdout and stderr merged) is passed through line by
line as it comes, so a failure's output is always visible; its exit status is the wrapper's.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, TextIO

__all__ = [
    "EXPECTED",
    "Expected",
    "Reporter",
    "format_duration",
    "main",
    "run_step",
]


class Expected(NamedTuple):
    """How long a step took where it was measured."""

    seconds: float
    """Wall time of the step, in seconds."""
    cores: int
    """CPU cores of the machine it was measured on (`os.cpu_count()`)."""
    source: str
    """Where the figure comes from: the run, the date, how it was read."""


_CP_RUN = (
    "first `make demo` on a fresh machine, 2026-11-30 15:26-15:39 UTC, the virtualenv installing alongside "
    "for its first 4 min; from the mtimes in $EEP_CACHE/control-plane"
)
_VENV_RUN = "same first run, 2026-11-30 15:26-15:30 UTC; from the birth times of .venv's files"
_TOOLS_RUN = (
    "first builds from an empty cache, 2026-11-30 21:30-21:45 UTC, read from the reporter's end lines"
)
_DEMO_RUN = "`make demo` with the control plane built, 2026-11-30 17:35 UTC (131 s in all), LogView's lines"

EXPECTED: dict[str, Expected] = {
    # Go: 2 cores, the only measured size. Go compiles packages in parallel, but linking and the big
    # packages' compile are serial, so no scaling by core count is claimed: the reporter names the measured
    # size next to this machine's.
    "go: resolve the Kubernetes modules": Expected(
        17, 2, f"{_CP_RUN}; 830 MB of Go modules from a near mirror"
    ),
    "go build kube-apiserver": Expected(527, 2, _CP_RUN),
    "go build kube-controller-manager": Expected(186, 2, f"{_CP_RUN}; reuses kube-apiserver's packages"),
    "go build kube-scheduler": Expected(9, 2, f"{_CP_RUN}; reuses the packages built before it"),
    "go: resolve the etcd modules": Expected(8, 2, _CP_RUN),
    "go build etcd": Expected(76, 2, _CP_RUN),
    "go: resolve the Kueue modules": Expected(16, 2, f"{_TOOLS_RUN}; hack/build-kueue.sh"),
    "go build kueue": Expected(357, 2, f"{_TOOLS_RUN}; hack/build-kueue.sh, the Go cache cold"),
    "go build kubeconform": Expected(58, 2, f"{_TOOLS_RUN}; hack/build-kubeconform.sh"),
    "pip: openapi2jsonschema": Expected(2, 2, f"{_TOOLS_RUN}; hack/build-kubeconform.sh"),
    "openapi2jsonschema: the Kubernetes schemas": Expected(
        75, 2, f"{_TOOLS_RUN}; hack/build-kubeconform.sh, 63-75 s over three runs"
    ),
    # pip: mostly download and unpack time, bound by the network and the disk more than by cores.
    "pip: the project virtualenv": Expected(48, 2, f"{_VENV_RUN} (pyvenv.cfg to .base)"),
    "pip: the worker runtime (torch, mooncake)": Expected(
        182, 2, f"{_VENV_RUN} (.base to mooncake-cpu.env); 2.8 GB of wheels"
    ),
    # The demo's waits: bound by the cluster's own timers (probes, backoff, the alert's window).
    "demo: start the local control plane": Expected(
        18, 2, "README's `make cluster-up` warm run, 7-18 s (recorded 2026-11-28, commit 4dcb6c6)"
    ),
    "demo: wait until Ready": Expected(60, 2, _DEMO_RUN),
    "demo: recovery to full capacity": Expected(12, 2, f"{_DEMO_RUN}; bench/results/mttr.json 12-14 s"),
    "demo: alert fires and resolves": Expected(
        26, 2, f"{_DEMO_RUN}: resolved 42.5 s after the kill, the wait begins ~17 s after it"
    ),
}

_BAR = 20


def format_duration(seconds: float) -> str:
    """`42s`, `8m47s`, `1h02m`: seconds rounded down, for people."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def describe_expected(expected: Expected | None, cores: int | None) -> str:
    """`expected ~8m47s on 2 cores (this machine: 16)`, or `no measured duration`. Pure."""
    if expected is None:
        return "no measured duration"
    text = f"expected ~{format_duration(expected.seconds)} on {expected.cores} cores"
    if cores is not None and cores != expected.cores:
        text += f" (this machine: {cores})"
    return text


class Reporter:
    """One step at a time: `start`, then `tick` as often as convenient, `output` for the step's own lines,
    `end`. Writes to `stream` only; the clock is injected (seconds, monotonic).

    `tty=True` redraws one status line in place (carriage return and erase-line); `tty=False` writes plain
    lines: at the start, every `interval_s` of elapsed time, and at the end. `width`: the terminal's columns;
    the status line is cut to fit, since a wrapped line cannot be redrawn in place.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool,
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = 30.0,
        cores: int | None = None,
        width: int | None = None,
    ) -> None:
        self.stream, self.tty, self.clock, self.interval_s, self.cores = stream, tty, clock, interval_s, cores
        self.width = width
        self.step = ""
        self.expected: Expected | None = None
        self.bound_s: float | None = None
        self._started = 0.0
        self._next_line = 0.0
        self._drawn = False

    def elapsed(self) -> float:
        return self.clock() - self._started

    def start(self, step: str, expected: Expected | None = None, bound_s: float | None = None) -> None:
        """Begin `step`; `expected`: its measured duration; `bound_s`: seconds after which it is given up."""
        self.step, self.expected, self.bound_s = step, expected, bound_s
        self._started = self.clock()
        self._next_line = self._started + self.interval_s
        if self.tty:
            self._draw()
        else:
            bound = f", gives up after {format_duration(bound_s)}" if bound_s is not None else ""
            self._write(f"==> {step}: started ({describe_expected(expected, self.cores)}{bound})\n")

    def tick(self) -> None:
        """Redraw (terminal) or, once `interval_s` has passed since the last line, print one (plain)."""
        if self.tty:
            self._draw()
        elif self.clock() >= self._next_line:
            self._next_line = self.clock() + self.interval_s
            self._write(f"    {self.step}: {self._progress()}\n")

    def output(self, line: str) -> None:
        """A line of the step's own output (without its newline), shown above the status line."""
        self._clear()
        self._write(line + "\n")
        if self.tty:
            self._draw()

    def end(self, ok: bool, detail: str = "") -> None:
        """The step finished: one permanent line with its duration (and `detail`, e.g. `exit 2`)."""
        self._clear()
        took = format_duration(self.elapsed())
        versus = f" (expected ~{format_duration(self.expected.seconds)})" if self.expected else ""
        what = f"done in {took}{versus}" if ok else f"FAILED after {took}{f' ({detail})' if detail else ''}"
        self._write(f"{'==>' if ok else '!!!'} {self.step}: {what}\n")

    def _progress(self) -> str:
        text = f"{format_duration(self.elapsed())} elapsed"
        if self.expected is not None:
            text += f", {describe_expected(self.expected, self.cores)}"
        if self.bound_s is not None:
            text += f", gives up after {format_duration(self.bound_s)}"
        return text

    def _draw(self) -> None:
        bar = ""
        if self.expected is not None and self.expected.seconds > 0:
            # Past the expected time the bar stays one short of full: it is a guide, not a promise.
            filled = min(_BAR - 1, int(_BAR * self.elapsed() / self.expected.seconds))
            bar = "[" + "#" * filled + "-" * (_BAR - filled) + "] "
        line = f"{bar}{self.step}: {self._progress()}"
        if self.width is not None:
            line = line[: max(1, self.width - 1)]
        self._write(f"\r\x1b[K{line}")
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self._write("\r\x1b[K")
            self._drawn = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _pump(pipe: TextIO, lines: queue.Queue[str | None]) -> None:
    for line in pipe:
        lines.put(line.rstrip("\r\n"))
    lines.put(None)


def run_step(
    cmd: Sequence[str],
    reporter: Reporter,
    step: str,
    *,
    expected: Expected | None = None,
    echo: bool = True,
    timeout_s: float | None = None,
    tick_s: float = 1.0,
) -> tuple[int, str]:
    """Run `cmd` as the step `step`: returns (exit status, its merged stdout+stderr). The status follows the
    shell's convention: a command killed by signal N gives 128+N. `echo` passes each output line through the
    reporter as it comes; without it the output is only returned. Raises `subprocess.TimeoutExpired` (after
    killing the command) when it runs longer than `timeout_s`, `OSError` when it cannot start.
    """
    reporter.start(step, expected, timeout_s)
    proc = subprocess.Popen(
        list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1
    )
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(proc.stdout, lines), name="progress-output", daemon=True)
    reader.start()
    kept: list[str] = []
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                reporter.end(False, f"no end within {format_duration(timeout_s or 0)}")
                raise subprocess.TimeoutExpired(list(cmd), timeout_s or 0, "\n".join(kept))
            try:
                line = lines.get(timeout=tick_s)
            except queue.Empty:
                # Exited, and quiet for a tick: a process it left behind may hold the pipe open forever.
                if proc.poll() is not None:
                    break
                reporter.tick()
                continue
            if line is None:
                break
            kept.append(line)
            if echo:
                reporter.output(line)
        rc = proc.wait()
    except KeyboardInterrupt:
        # The command got the same SIGINT (one process group); let it stop before saying so.
        proc.terminate()
        proc.wait()
        reporter.end(False, "interrupted")
        raise
    status = 128 - rc if rc < 0 else rc
    reporter.end(status == 0, f"exit {status}")
    return status, "\n".join(kept)


def main(argv: Sequence[str] | None = None) -> int:
    """`progress.py --step NAME [--interval S] -- CMD...`: run CMD as a step; exit with CMD's status."""
    p = argparse.ArgumentParser(prog="progress.py", description=main.__doc__)
    p.add_argument(
        "--step",
        required=True,
        help=f"the step's name; a key of EXPECTED gets its duration: {list(EXPECTED)}",
    )
    p.add_argument(
        "--interval", type=float, default=30.0, help="seconds between plain lines (not a terminal)"
    )
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        p.error("no command after --")
    # Progress goes to stderr: the build script's stdout is its answer (the binaries' directory).
    stream = sys.stderr
    tty = stream.isatty() and os.environ.get("TERM", "") != "dumb" and not os.environ.get("CI")
    width = shutil.get_terminal_size().columns if tty else None
    reporter = Reporter(stream, tty=tty, interval_s=a.interval, cores=os.cpu_count(), width=width)
    try:
        status, _ = run_step(cmd, reporter, a.step, expected=EXPECTED.get(a.step))
    except OSError as exc:
        print(f"!!! {a.step}: cannot start {cmd[0]}: {exc}", file=sys.stderr)
        return 127
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    return status


if __name__ == "__main__":
    sys.exit(main())
