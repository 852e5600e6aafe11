"""The worker's log lines read back with their times."""

from __future__ import annotations

from datetime import datetime

from eep_testkit.logs import log_lines, logged_at

LOG = """2026-11-30 17:00:11,226 rank0 INFO eep_worker.rank: rank 0: groups ready
not a log line
2026-11-30 17:00:12,500 rank1 WARNING eep_worker.fence: rank 1 epoch 2 step 9: fence passed after 1.2s
"""


def test_lines_in_the_workers_format_are_read_with_their_times() -> None:
    lines = log_lines(LOG)
    assert [m for _, m in lines] == ["rank 0: groups ready", "rank 1 epoch 2 step 9: fence passed after 1.2s"]
    assert abs(lines[1][0] - lines[0][0] - 1.274) < 1e-6


def test_logged_at_filters_by_text_and_time() -> None:
    t = datetime(2026, 11, 30, 17, 0, 12, 500000).timestamp()
    assert logged_at(LOG, "fence passed", t - 1) == [t]
    assert logged_at(LOG, "fence passed", t + 1) == []
    assert logged_at(LOG, "joined", 0) == []
