"""The status view is a pure function of (ElasticEPCluster, now): checked as text and as colours."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from eep_contract.v1alpha1 import (
    Condition,
    ConditionStatus,
    ConditionType,
    ElasticEPCluster,
    ElasticEPClusterSpec,
    ElasticEPClusterStatus,
    ExitRecord,
    Membership,
    MemberState,
    MemberStatus,
    Phase,
)
from eep_operator.cli import status
from eep_operator.cli.render import STATE_STYLE, age, rank_range, render_status

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def member(index: int, state: MemberState, **kw: object) -> MemberStatus:
    return MemberStatus.model_validate(
        {
            "index": index,
            "pod_name": f"ds-{index}",
            "node": f"gpu-{index}",
            "first_rank": index * 8,
            "rank_count": 8,
            "state": state,
            **kw,
        }
    )


def recovering_cluster() -> ElasticEPCluster:
    """Member 2 died (SIGKILL) and its replacement is joining; member 1 recovered once before."""
    return ElasticEPCluster(
        metadata={"name": "ds", "namespace": "ml", "generation": 1},
        spec=ElasticEPClusterSpec(image="img", nodes=3, ranks_per_node=8),
        status=ElasticEPClusterStatus(
            phase=Phase.RECOVERING,
            world_size=24,
            membership=Membership(epoch=7, active_ranks=list(range(16)), joining_ranks=list(range(16, 24))),
            members=[
                member(0, MemberState.HEALTHY, state_since=NOW - timedelta(hours=2, minutes=5)),
                member(1, MemberState.HEALTHY, restarts=1, last_recovery_seconds=41.25),
                member(
                    2,
                    MemberState.JOINING,
                    restarts=2,
                    state_since=NOW - timedelta(seconds=12),
                    last_exit=ExitRecord(exit_code=137, reason="Error"),
                ),
            ],
            total_restarts=3,
            last_recovery_seconds=41.25,
            conditions=[
                Condition(type=ConditionType.READY, status=ConditionStatus.FALSE, reason="MemberJoining"),
                Condition(
                    type=ConditionType.RECOVERING,
                    status=ConditionStatus.TRUE,
                    reason="MemberJoining",
                    message="member 2 joins at epoch 7",
                    last_transition_time=NOW - timedelta(minutes=1, seconds=3),
                ),
            ],
        ),
    )


def text_of(cluster: ElasticEPCluster) -> str:
    console = Console(file=io.StringIO(), width=200, record=True, color_system=None, force_terminal=False)
    console.print(render_status(cluster, NOW))
    return console.export_text()


def test_header_names_phase_epoch_and_ranks() -> None:
    first = text_of(recovering_cluster()).splitlines()[0]
    assert first.startswith("ml/ds  phase Recovering  epoch 7  ranks 16/24  joining 16,17,18,19,20,21,22,23")
    assert "restarts 3 (group 0)" in first and "last recovery 41.2s" in first


def test_member_rows_show_ranks_state_restarts_exit_and_recovery() -> None:
    rows = {
        line.split("│")[1].strip(): line
        for line in text_of(recovering_cluster()).splitlines()
        if "ds-" in line
    }
    cells = {k: [c.strip() for c in v.split("│")[1:-1]] for k, v in rows.items()}
    assert cells["0"] == ["0", "ds-0", "gpu-0", "0-7", "Healthy", "2h5m", "0", "-", "-"]
    assert cells["1"] == ["1", "ds-1", "gpu-1", "8-15", "Healthy", "-", "1", "-", "41.2s"]
    assert cells["2"] == ["2", "ds-2", "gpu-2", "16-23", "Joining", "12s", "2", "137 Error", "-"]


def test_conditions_are_listed_with_age_and_message() -> None:
    text = text_of(recovering_cluster())
    assert "Recovering │ True   │ MemberJoining │ 1m3s │ member 2 joins at epoch 7" in text
    assert "Ready      │ False  │ MemberJoining │ -" in text


def test_messages_are_text_not_markup() -> None:
    """A condition message such as "[member 1] ..." was read by rich as markup and vanished from the table."""
    cluster = recovering_cluster()
    cluster.status.conditions[1].message = "[member 1] lost [bold]twice[/bold]"
    assert "[member 1] lost [bold]twice[/bold]" in text_of(cluster)


def test_states_and_phase_are_coloured() -> None:
    cluster = recovering_cluster()
    cluster.status.phase = Phase.FAILED
    cluster.status.members[2].state = MemberState.FAILED
    console = Console(
        file=io.StringIO(), width=200, record=True, color_system="truecolor", force_terminal=True
    )
    console.print(render_status(cluster, NOW))
    styled = console.export_text(styles=True)
    assert STATE_STYLE[MemberState.FAILED] == "bold red"
    assert "\x1b[1;31mFailed" in styled  # the member's state
    assert "\x1b[1;37;41mFailed" in styled  # the phase, white on red


def test_a_fresh_cluster_without_status_renders() -> None:
    cluster = ElasticEPCluster(
        metadata={"name": "new", "namespace": "ml"}, spec=ElasticEPClusterSpec(image="img", nodes=2)
    )
    text = text_of(cluster)
    assert text.startswith("ml/new  phase Pending  epoch 0  ranks 0/0")
    assert "no members reported yet" in text


@pytest.mark.parametrize(
    ("delta", "expected"),
    [(0, "0s"), (59, "59s"), (60, "1m"), (192, "3m12s"), (7500, "2h5m"), (3600 * 27, "1d3h"), (-5, "0s")],
)
def test_age(delta: int, expected: str) -> None:
    assert age(NOW - timedelta(seconds=delta), NOW) == expected


def test_rank_range() -> None:
    assert rank_range(3, 1) == "3"
    assert rank_range(8, 8) == "8-15"


def test_render_is_deterministic() -> None:
    assert text_of(recovering_cluster()) == text_of(recovering_cluster())


def test_parse_args() -> None:
    args = status.parse_args(["ds", "-n", "ml", "--watch", "--kubeconfig", "/k", "--timeout", "5"])
    assert (args.name, args.namespace, args.watch, args.kubeconfig, args.timeout) == (
        "ds",
        "ml",
        True,
        "/k",
        5.0,
    )
    with pytest.raises(SystemExit):
        status.parse_args([])


def test_a_missing_kubeconfig_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = status.main(["ds", "--kubeconfig", str(tmp_path / "nope")])
    assert code == status.EXIT_ERROR
    assert "cannot load Kubernetes configuration" in capsys.readouterr().err
