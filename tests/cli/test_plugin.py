"""`kubectl eep` (eep_operator.cli.plugin), offline: argument handling, the hand-off to `eep-operator status`,
and the pure rendering of a cluster's Events. On the local control plane through the real kubectl:
test_plugin_cluster.py."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console

from eep_operator.cli import plugin, status

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def console() -> Console:
    return Console(file=io.StringIO(), width=160, record=True, color_system=None)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["status", "ds"], ["ds"]),
        (["status", "ds", "-n", "ml"], ["ds", "--namespace", "ml"]),
        (
            ["status", "ds", "--namespace=ml", "--kubeconfig", "/k", "--context", "c"],
            ["ds", "--namespace", "ml", "--kubeconfig", "/k", "--context", "c"],
        ),
        (["watch", "ds", "-n", "ml"], ["ds", "--namespace", "ml", "--watch"]),
        (["watch", "ds", "--timeout", "5"], ["ds", "--watch", "--timeout", "5.0"]),
    ],
)
def test_status_and_watch_become_eep_operator_status(argv: list[str], expected: list[str]) -> None:
    assert plugin.status_argv(plugin.parse_args(argv)) == expected
    # and eep-operator status accepts what it is given
    parsed = status.parse_args(expected)
    assert parsed.name == "ds" and parsed.watch == (argv[0] == "watch")


@pytest.mark.parametrize(
    "argv",
    [[], ["status"], ["describe", "ds"], ["events", "ds", "--timeout", "3"], ["status", "ds", "extra"]],
    ids=["nothing", "no-name", "unknown-command", "timeout-outside-watch", "two-names"],
)
def test_wrong_arguments_exit_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        plugin.parse_args(argv)
    assert exc.value.code == 2
    assert "usage: kubectl eep" in capsys.readouterr().err


def test_main_hands_status_and_watch_to_the_status_command(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_status_main(argv: list[str], **kw: Any) -> int:
        calls.append(list(argv))
        return 7

    monkeypatch.setattr(status, "main", fake_status_main)
    assert plugin.main(["watch", "ds", "-n", "ml"], console=console()) == 7
    assert calls == [["ds", "--namespace", "ml", "--watch"]]


def event(reason: str, seconds_ago: int | None, **kw: Any) -> dict[str, Any]:
    stamp = None if seconds_ago is None else (NOW - timedelta(seconds=seconds_ago)).isoformat()
    return {"type": "Normal", "reason": reason, "message": f"{reason} happened", "lastTimestamp": stamp, **kw}


def test_events_are_listed_oldest_first_newest_last() -> None:
    events = [
        event("MemberJoined", 5),
        event("MemberFailed", 120, type="Warning", count=2),
        # A newer-style Event has no lastTimestamp, only eventTime.
        {"type": "Normal", "reason": "RecoveryCompleted", "eventTime": NOW - timedelta(seconds=1)},
        event("MembershipChanged", 65),
    ]
    rows = plugin.event_rows(events, NOW)
    assert [r[2] for r in rows] == ["MemberFailed", "MembershipChanged", "MemberJoined", "RecoveryCompleted"]
    assert rows[0] == ("2m", "Warning", "MemberFailed", "2", "MemberFailed happened")
    assert rows[1][0] == "1m5s" and rows[-1][:2] == ("1s", "Normal")


def test_events_of_the_same_second_keep_their_creation_order() -> None:
    same = [
        {**event("Second", 3), "metadata": {"resourceVersion": "1021"}},
        {**event("First", 3), "metadata": {"resourceVersion": "987"}},
    ]
    assert [r[2] for r in plugin.event_rows(same, NOW)] == ["First", "Second"]


def test_an_event_without_any_time_sorts_first_and_shows_a_dash() -> None:
    rows = plugin.event_rows([event("Later", 3), event("Undated", None)], NOW)
    assert [(r[0], r[2]) for r in rows] == [("-", "Undated"), ("3s", "Later")]


def test_render_events_table_and_empty_list() -> None:
    out = console()
    out.print(
        plugin.render_events("ml", "ds", [event("MemberFailed", 30, message="[member 1]\n  lost")], NOW)
    )
    text = out.export_text()
    assert "events of ml/ds" in text
    assert "30s" in text and "MemberFailed" in text and "[member 1] lost" in text  # not rich markup
    out = console()
    out.print(plugin.render_events("ml", "ds", [], NOW))
    assert "no Events for ElasticEPCluster ml/ds" in out.export_text()


def test_events_without_a_kubeconfig_is_an_error(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code = plugin.main(["events", "ds", "--kubeconfig", str(tmp_path / "missing")], console=console())
    assert code == status.EXIT_ERROR
    assert "cannot load Kubernetes configuration" in capsys.readouterr().err
