"""The demo's terminal view: the status CLI's member/rank table (`eep_operator.cli.render`) plus a progress
line (current step, elapsed seconds, client counters). Called by `eep_demo.scenario` through the `View`
protocol; `LiveView` draws with rich.live on a terminal, `LogView` prints one line per change (tests, logs).
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
from eep_operator.cli.render import render_status

__all__ = ["LiveView", "LogView", "View", "progress_line", "render"]


class View(Protocol):
    def step(self, text: str) -> None:
        """A new step began (printed permanently)."""

    def update(self, cr: dict[str, Any] | None, counters: dict[str, int] | None, note: str) -> None:
        """Redraw the live part: the CR's member table and a progress line."""

    def close(self) -> None: ...


def progress_line(note: str, elapsed_s: float, counters: dict[str, int] | None) -> Text:
    """Pure: `⠿ note  12.3s  requests 120 ok 118 retried 3 wrong 0`."""
    text = Text()
    text.append(f"{note}  ", style="bold")
    text.append(f"{elapsed_s:5.1f}s")
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

    def update(self, cr: dict[str, Any] | None, counters: dict[str, int] | None, note: str) -> None:
        line = progress_line(note, time.monotonic() - self._since, counters)
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
    """One line per change of the note or of the phase/epoch/states: readable in a log or a test report."""

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self.say = say or (lambda line: print(line, flush=True))
        self._last = ""
        self._since = time.monotonic()

    def step(self, text: str) -> None:
        self._since = time.monotonic()
        self.say(f"==> {text}")

    def update(self, cr: dict[str, Any] | None, counters: dict[str, int] | None, note: str) -> None:
        status = (cr or {}).get("status") or {}
        states = ",".join(str(m.get("state", "?"))[0] for m in status.get("members") or [])
        epoch = (status.get("membership") or {}).get("epoch")
        key = f"{note} phase={status.get('phase')} epoch={epoch} [{states}]"
        if key != self._last:
            self._last = key
            extra = f" {counters}" if counters else ""
            self.say(f"   {time.monotonic() - self._since:6.1f}s {key}{extra}")

    def close(self) -> None:
        pass
