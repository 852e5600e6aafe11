"""Pure rendering of an ElasticEPCluster's status for a terminal: model + now -> rich renderable.

Called by `eep_operator.cli.status` (one-shot and `--watch`). No I/O and no clock: `now` is passed in, so the
same object always renders the same text and the tests compare it directly.
"""

from __future__ import annotations

from datetime import datetime

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from eep_contract.v1alpha1 import (
    Condition,
    ConditionStatus,
    ConditionType,
    ElasticEPCluster,
    MemberState,
    MemberStatus,
    Phase,
)

PHASE_STYLE: dict[Phase, str] = {
    Phase.PENDING: "yellow",
    Phase.RUNNING: "bold green",
    Phase.DEGRADED: "bold yellow",
    Phase.RECOVERING: "bold cyan",
    Phase.RESTARTING: "bold magenta",
    Phase.FAILED: "bold white on red",
}

STATE_STYLE: dict[MemberState, str] = {
    MemberState.PENDING: "yellow",
    MemberState.HEALTHY: "green",
    MemberState.FAILED: "bold red",
    MemberState.RESTARTING: "magenta",
    MemberState.JOINING: "cyan",
}

# A True Degraded/Recovering condition is news; True Ready or RecoveryPauseBounded is the good case.
_GOOD_WHEN_TRUE = {ConditionType.READY, ConditionType.RECOVERY_PAUSE_BOUNDED}


def rank_range(first: int, count: int) -> str:
    """`3` for one rank, `8-15` for a span: how ranks read in logs and in Mooncake's messages."""
    return str(first) if count == 1 else f"{first}-{first + count - 1}"


def age(since: datetime | None, now: datetime) -> str:
    """Compact age like kubectl prints it (`45s`, `3m12s`, `2h5m`, `3d4h`); `-` when unknown."""
    if since is None:
        return "-"
    seconds = max(0, int((now - since).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds}s" if seconds else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def last_exit(member: MemberStatus) -> Text:
    record = member.last_exit
    if record is None:
        return Text("-", style="dim")
    parts = []
    if record.exit_code is not None:
        parts.append(str(record.exit_code))
    if record.reason:
        parts.append(record.reason)
    return Text(" ".join(parts) or "?", style="red" if record.exit_code not in (None, 0) else "")


def header(cluster: ElasticEPCluster, now: datetime) -> Text:
    meta = cluster.metadata
    status = cluster.status
    text = Text()
    text.append(f"{meta.get('namespace', '?')}/{meta.get('name', '?')}", style="bold")
    text.append("  phase ")
    text.append(status.phase.value, style=PHASE_STYLE[status.phase])
    text.append(f"  epoch {status.membership.epoch}")
    active, world = len(status.membership.active_ranks), status.world_size
    text.append("  ranks ")
    text.append(f"{active}/{world}", style="green" if world and active == world else "bold yellow")
    if status.membership.joining_ranks:
        joining = ",".join(map(str, status.membership.joining_ranks))
        text.append(f"  joining {joining}", style="cyan")
    text.append(f"  restarts {status.total_restarts} (group {status.group_restarts})")
    text.append(f"  last recovery {seconds(status.last_recovery_seconds)}")
    generation = meta.get("generation")
    observed = status.observed_generation
    if generation is not None and observed is not None and observed < generation:
        text.append(f"  spec generation {generation} not yet observed", style="yellow")
    return text


def members_table(cluster: ElasticEPCluster, now: datetime) -> Table:
    table = Table(title="members", title_justify="left", expand=False)
    columns = ("member", "pod", "node", "ranks", "state", "since", "restarts", "last exit", "last recovery")
    for column in columns:
        table.add_column(
            column, no_wrap=True, justify="right" if column in {"member", "restarts"} else "left"
        )
    for m in sorted(cluster.status.members, key=lambda m: m.index):
        table.add_row(
            str(m.index),
            Text(m.pod_name or "-"),
            Text(m.node or "-"),
            rank_range(m.first_rank, m.rank_count),
            Text(m.state.value, style=STATE_STYLE[m.state]),
            age(m.state_since, now),
            str(m.restarts),
            last_exit(m),
            seconds(m.last_recovery_seconds),
        )
    return table


def condition_style(condition: Condition) -> str:
    if condition.status is ConditionStatus.UNKNOWN:
        return "yellow"
    good = (condition.status is ConditionStatus.TRUE) == (condition.type in _GOOD_WHEN_TRUE)
    return "green" if good else "bold yellow"


def conditions_table(cluster: ElasticEPCluster, now: datetime) -> Table:
    table = Table(title="conditions", title_justify="left", expand=False)
    for column in ("type", "status", "reason", "age", "message"):
        table.add_column(column, no_wrap=column != "message")
    for c in cluster.status.conditions:
        table.add_row(
            c.type.value,
            Text(c.status.value, style=condition_style(c)),
            Text(c.reason or "-"),
            age(c.last_transition_time, now),
            # Text, not str: rich would read "[member 1] ..." in a message as markup and drop it.
            Text(c.message or ""),
        )
    return table


def render_status(cluster: ElasticEPCluster, now: datetime) -> RenderableType:
    """The whole view: header line, member/rank map, conditions. Pure: same input, same output."""
    parts: list[RenderableType] = [header(cluster, now)]
    if cluster.status.members:
        parts.append(members_table(cluster, now))
    else:
        parts.append(
            Text("no members reported yet: the operator has not reconciled this cluster", style="dim")
        )
    if cluster.status.conditions:
        parts.append(conditions_table(cluster, now))
    return Group(*parts)
