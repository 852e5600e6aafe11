"""The demo's terminal view: the status CLI's member/rank table (`eep_operator.cli.render`) plus a progress
line (current step, elapsed seconds against the wait's bound and its measured duration, client counters).
Called by `eep_demo.scenario` through the `View` protocol; `LiveView` draws with rich.live on a terminal,
`LogView` prints one line per change and one every `heartbeat_s` while nothing changes (tests, CI logs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from eep_contract.v1alpha1 import ElasticEPCluster
from eep_localcluster.progress import Expected, format_duration
from eep_operator.cli.render import render_status

__all__ = ["LiveView", "LogView", "View", "progress_line", "render", "wait_text"]


class View(Protocol):
    def step(self, text: str) -> None:
        """A new step began (printed permanently)."""

    def update(
        self,
        cr: dict[str, Any] | None,
        counters: dict[str, int] | None,
        note: str,
        *,
        bound_s: float | None = None,
        expected: Expected | None = None,
    ) -> None:
        """Redraw the live part: the CR's member table and a progress line. `bound_s`: seconds after which the
        wait gives up; `expected`: how long it took where measured (`eep_localcluster.progress.EXPECTED`)."""

    def close(self) -> None: ...


def wait_text(elapsed_s: float, bound_s: float | None, expected: Expected | None) -> str:
    """Pure: `12.3s of at most 5m00s (took ~1m00s in a measured run)`; `12.3s` without bound and figure."""
    text = f"{elapsed_s:5.1f}s"
    if bound_s is not None:
        text += f" of at most {format_duration(bound_s)}"
    if expected is not None:
        text += f" (took ~{format_duration(expected.seconds)} in a measured run)"
    return text


def progress_line(
    note: str,
    elapsed_s: float,
    counters: dict[str, int] | None,
    bound_s: float | None = None,
    expected: Expected | None = None,
) -> Text:
    """Pure: `note  12.3s of at most 4m00s (took ~12s in a measured run)  requests 120 ok 118 ...`."""
    text = Text()
    text.append(f"{note}  ", style="bold")
    text.append(wait_text(elapsed_s, bound_s, expected))
    if counters is not None:
        text.append(f"  requests {counters['sent']}  answers ok {counters['ok']}")
        text.append(
            f"  unanswered (retried) {counters['no_answer']}", style="yellow" if counters["no_answer"] else ""
        )
        text.append(f"  wrong {counters['wrong']}", style="bold red" if counters["wrong"] else "green")
    return text


def render(cr: dict[str, Any] | None, now: datetime, line: Text) -> RenderableType:
    if cr is None:
        return Group(Text("cluster not created yet", style="dim"), line)
    try:
        return Group(render_status(ElasticEPCluster.model_validate(cr), now), line)
    except ValidationError as exc:
        return Group(Text(f"status does not parse: {exc}", style="red"), line)


class LiveView:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self._live: Live | None = None
        self._since = time.monotonic()

    def step(self, text: str) -> None:
        self._since = time.monotonic()
        if self._live is not None:
            self._live.stop()
            self._live = None
        self.console.print(f"[bold cyan]==>[/bold cyan] {text}")

    def update(
        self,
        cr: dict[str, Any] | None,
        counters: dict[str, int] | None,
        note: str,
        *,
        bound_s: float | None = None,
        expected: Expected | None = None,
    ) -> None:
        line = progress_line(note, time.monotonic() - self._since, counters, bound_s, expected)
        view = render(cr, datetime.now(UTC), line)
        if self._live is None:
            self._live = Live(view, console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        self._live.update(view, refresh=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


class LogView:
    """One line per change of the note or of the phase/epoch/states, and one every `heartbeat_s` (seconds)
    while nothing changes, with the elapsed time against the wait's bound: readable in a log or a test report.
    `clock`: monotonic seconds (injected for tests)."""

    def __init__(
        self,
        say: Callable[[str], None] | None = None,
        *,
        heartbeat_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.say = say or (lambda line: print(line, flush=True))
        self.heartbeat_s, self.clock = heartbeat_s, clock
        self._last = ""
        self._since = self._said = clock()

    def step(self, text: str) -> None:
        self._since = self._said = self.clock()
        self._last = ""
        self.say(f"==> {text}")

    def update(
        self,
        cr: dict[str, Any] | None,
        counters: dict[str, int] | None,
        note: str,
        *,
        bound_s: float | None = None,
        expected: Expected | None = None,
    ) -> None:
        status = (cr or {}).get("status") or {}
        states = ",".join(str(m.get("state", "?"))[0] for m in status.get("members") or [])
        epoch = (status.get("membership") or {}).get("epoch")
        key = f"{note} phase={status.get('phase')} epoch={epoch} [{states}]"
        now = self.clock()
        if key != self._last or now - self._said >= self.heartbeat_s:
            self._last, self._said = key, now
            extra = f" {counters}" if counters else ""
            self.say(f"   {wait_text(now - self._since, bound_s, expected)} {key}{extra}")

    def close(self) -> None:
        pass
