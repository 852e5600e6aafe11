"""The progress reporter of long work (`eep_localcluster.progress`): plain lines and the terminal line on a
fake clock, wrapped commands keeping their exit status and output, the script form the Makefile and the build
script call, and the demo's waits (`eep_demo.live`) against their bounds."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eep_demo.live import LogView, progress_line, wait_text
from eep_localcluster.progress import EXPECTED, Expected, Reporter, format_duration, run_step

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "eep_localcluster" / "progress.py"
BUILD = Expected(120, 2, "test")


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def plain(clock: FakeClock, interval_s: float = 30.0, cores: int | None = 2) -> tuple[Reporter, io.StringIO]:
    out = io.StringIO()
    return Reporter(out, tty=False, clock=clock, interval_s=interval_s, cores=cores), out


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (60, "1m00s"), (527, "8m47s"), (3599, "59m59s"), (3720, "1h02m"), (-3, "0s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_plain_lines_start_every_interval_end() -> None:
    clock = FakeClock()
    r, out = plain(clock, cores=16)
    r.start("go build kube-apiserver", BUILD)
    for _ in range(65):  # one tick a second for 65 s: lines at 30 s and 60 s only
        clock.t += 1
        r.tick()
    r.end(True)
    assert out.getvalue().splitlines() == [
        "==> go build kube-apiserver: started (expected ~2m00s on 2 cores (this machine: 16))",
        "    go build kube-apiserver: 30s elapsed, expected ~2m00s on 2 cores (this machine: 16)",
        "    go build kube-apiserver: 1m00s elapsed, expected ~2m00s on 2 cores (this machine: 16)",
        "==> go build kube-apiserver: done in 1m05s (expected ~2m00s)",
    ]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_plain_failure_without_figure_names_the_bound() -> None:
    clock = FakeClock()
    r, out = plain(clock)
    r.start("a step nobody measured", None, bound_s=300)
    clock.t += 31
    r.tick()
    r.output("error: it broke")
    r.end(False, "exit 2")
    assert out.getvalue().splitlines() == [
        "==> a step nobody measured: started (no measured duration, gives up after 5m00s)",
        "    a step nobody measured: 31s elapsed, gives up after 5m00s",
        "error: it broke",
        "!!! a step nobody measured: FAILED after 31s (exit 2)",
    ]


def test_tty_one_line_redrawn_with_a_bar() -> None:
    clock = FakeClock()
    out = io.StringIO()
    r = Reporter(out, tty=True, clock=clock, cores=2)
    r.start("go build etcd", BUILD)
    clock.t += 60
    r.tick()
    r.output("go: downloading something")
    clock.t += 600  # far past the expected 2 min: the bar stops one short of full
    r.tick()
    r.end(True)
    # Every write begins by erasing the line: status lines are redrawn in place, and the command's output
    # and the end line replace the status line rather than follow it.
    assert out.getvalue().split("\r\x1b[K") == [
        "",
        "[--------------------] go build etcd: 0s elapsed, expected ~2m00s on 2 cores",
        "[##########----------] go build etcd: 1m00s elapsed, expected ~2m00s on 2 cores",
        "go: downloading something\n",
        "[##########----------] go build etcd: 1m00s elapsed, expected ~2m00s on 2 cores",
        "[###################-] go build etcd: 11m00s elapsed, expected ~2m00s on 2 cores",
        "==> go build etcd: done in 11m00s (expected ~2m00s)\n",
    ]


def test_tty_line_cut_to_the_terminal_width() -> None:
    out = io.StringIO()
    Reporter(out, tty=True, clock=FakeClock(), width=30).start("go build kube-controller-manager", BUILD)
    assert out.getvalue() == "\r\x1b[K[--------------------] go bui"


def test_failing_command_keeps_exit_status_and_output() -> None:
    out = io.StringIO()
    r = Reporter(out, tty=False, interval_s=0.2)
    cmd = ["bash", "-c", "echo to-stdout; echo to-stderr >&2; sleep 0.6; exit 3"]
    status, kept = run_step(cmd, r, "failing step", tick_s=0.1)
    assert status == 3
    assert kept.splitlines() == ["to-stdout", "to-stderr"]
    lines = out.getvalue().splitlines()
    assert lines[1:3] == ["to-stdout", "to-stderr"]
    assert any(re.fullmatch(r" {4}failing step: 0s elapsed", line) for line in lines)  # a heartbeat
    assert re.fullmatch(r"!!! failing step: FAILED after 0s \(exit 3\)", lines[-1])


def test_command_killed_by_a_signal_gives_128_plus_the_signal() -> None:
    status, _ = run_step(["bash", "-c", "kill -TERM $$"], Reporter(io.StringIO(), tty=False), "killed")
    assert status == 128 + 15


def test_echo_off_returns_the_output_without_showing_it() -> None:
    out = io.StringIO()
    status, kept = run_step(["echo", "secret"], Reporter(out, tty=False), "quiet", echo=False)
    assert (status, kept) == (0, "secret")
    assert "secret" not in out.getvalue()


def test_timeout_kills_the_command() -> None:
    out = io.StringIO()
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_step(["sleep", "30"], Reporter(out, tty=False), "slow", timeout_s=0.5, tick_s=0.1)
    assert time.monotonic() - t0 < 10
    assert "FAILED after 0s (no end within 0s)" in out.getvalue()


def test_a_process_left_behind_holding_the_pipe_does_not_hold_the_step() -> None:
    """`eep-localcluster up` leaves daemons behind: the step ends when the command exits."""
    t0 = time.monotonic()
    status, kept = run_step(
        ["bash", "-c", "sleep 20 & echo started"], Reporter(io.StringIO(), tty=False), "daemon", tick_s=0.2
    )
    assert (status, kept) == (0, "started")
    assert time.monotonic() - t0 < 10


def test_script_form_as_make_calls_it() -> None:
    """`python3 hack/eep_localcluster/progress.py --step ... -- CMD` under the system's python3 (no
    virtualenv): CMD's status is the script's, CMD's output is in what it prints (stderr)."""
    cmd = ["bash", "-c", "echo building; echo 'compile error: x.go:3' >&2; exit 2"]
    done = subprocess.run(
        ["python3", str(SCRIPT), "--step", "go build kube-scheduler", "--", *cmd],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines()[1:3] == ["building", "compile error: x.go:3"]
    assert done.stderr.startswith("==> go build kube-scheduler: started (expected ~9s on 2 cores")
    assert done.stderr.splitlines()[-1].startswith("!!! go build kube-scheduler: FAILED after")
    missing = subprocess.run(
        [sys.executable, str(SCRIPT), "--step", "x", "--", "/nonexistent/tool"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 127
    assert "cannot start /nonexistent/tool" in missing.stderr


def test_a_failing_step_fails_the_make_recipe() -> None:
    """The Makefile's pattern: a wrapped step's failure stops the recipe with the step's status."""
    recipe = f"set -e; python3 {SCRIPT} --step s -- bash -c 'echo boom; exit 4'; echo after"
    done = subprocess.run(["bash", "-c", recipe], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 4
    assert "boom" in done.stderr and "after" not in done.stdout


def wrapped_steps() -> list[str]:
    """Every step name the Makefile and the hack scripts pass to the reporter."""
    names = []
    for path in ("Makefile", "hack/setup-mooncake-cpu.sh"):
        names += re.findall(r'--step "([^"]+)"', (REPO / path).read_text())
    scripts = sorted((REPO / "hack").glob("build-*.sh"))
    for name in [
        n for s in scripts for n in re.findall(r"^\s*(?:\(cd .*? && )?step \"([^\"]+)\"", s.read_text(), re.M)
    ]:
        if "$b" in name:
            names += [
                name.replace("$b", b) for b in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
            ]
        else:
            names.append(name)
    return names


def test_every_wrapped_step_has_a_measured_duration_with_its_source() -> None:
    names = wrapped_steps()
    # The control plane's 4 Go builds and 2 resolves, Kueue's build and resolve, kubeconform's build, its
    # schema tool's pip install and its schema generation, the 2 pip installs of the virtualenv.
    assert len(names) == 13, names
    assert [n for n in names if n not in EXPECTED] == []
    for name, figure in EXPECTED.items():
        assert figure.seconds > 0 and figure.cores >= 1 and "2026-" in figure.source, name


def test_wait_text_and_progress_line_name_the_bound_and_the_figure() -> None:
    figure = EXPECTED["demo: wait until Ready"]
    assert wait_text(47.25, 300, figure) == " 47.2s of at most 5m00s (took ~1m00s in a measured run)"
    assert wait_text(3.0, None, None) == "  3.0s"
    line = progress_line("recovering member 1", 4.0, None, 240, EXPECTED["demo: recovery to full capacity"])
    assert line.plain == "recovering member 1    4.0s of at most 4m00s (took ~12s in a measured run)"


def test_logview_heartbeat_while_nothing_changes() -> None:
    clock = FakeClock()
    said: list[str] = []
    view = LogView(said.append, heartbeat_s=30, clock=clock)
    view.step("wait until Ready")
    cr = {"status": {"phase": "Pending", "membership": {"epoch": 0}, "members": [{"state": "Pending"}]}}
    for _ in range(70):  # one update a second, the CR never changes
        view.update(cr, None, "waiting until Ready", bound_s=300)
        clock.t += 1
    assert said == [
        "==> wait until Ready",
        "     0.0s of at most 5m00s waiting until Ready phase=Pending epoch=0 [P]",
        "    30.0s of at most 5m00s waiting until Ready phase=Pending epoch=0 [P]",
        "    60.0s of at most 5m00s waiting until Ready phase=Pending epoch=0 [P]",
    ]
