"""The worker's log lines with their wall times: `2026-11-30 17:00:11,226 rank0 INFO eep_worker.rank: ...`
(the format `eep_worker.__main__` configures).

Who uses it: bench/cpu_recovery.py and bench/kill_probe.py (recovery phases and moments read from the pods'
logs), tests/worker/test_recovery_pause.py (when the survivors passed their fence).
"""

from __future__ import annotations

import re
from datetime import datetime

__all__ = ["log_lines", "logged_at"]

_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\S+) \w+ [\w.]+: (.*)$")
_FORMAT = "%Y-%m-%d %H:%M:%S,%f"
SLACK_S = 0.05
"""Log times have millisecond resolution and come from another process's clock read: lines up to this much
before `after` still count."""


def log_lines(text: str) -> list[tuple[float, str]]:
    """(wall time in seconds since the epoch, message) of each line in the worker's format; others skipped."""
    return [
        (datetime.strptime(m.group(1), _FORMAT).timestamp(), m.group(3))
        for line in text.splitlines()
        if (m := _LINE.match(line))
    ]


def logged_at(text: str, needle: str, after: float) -> list[float]:
    """Wall times of the lines of `text` whose message contains `needle`, at or after `after` (seconds since
    the epoch, less `SLACK_S`)."""
    return [t for t, message in log_lines(text) if needle in message and t >= after - SLACK_S]
