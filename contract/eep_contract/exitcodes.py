"""Exit codes of a worker pod, and what each tells the operator.

Who uses it: the worker ends a rank (and so its pod) with one of these (`eep_worker`); the operator names the
meaning of a member's exit code in its Event and in the member's `lastExit.message`
(`eep_operator.core.planner`); `lastExit.reason` keeps the container's own reason. Codes 1 and 2 stay
Python's own (an exception, a usage error); 128+N is a signal.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["JOINER_REGISTRATION_HOLD_S", "ExitCode", "describe"]


class ExitCode(IntEnum):
    """A rank's deliberate exit. Every one ends the pod; the operator decides what follows."""

    LEADER_LOST = 3
    """Member 0 (global rank 0: the leader and Mooncake's coordinator) is gone: not recoverable in place; the
    operator restarts the whole group."""
    JOIN_FAILED = 4
    """A joiner's join did not complete within its join timeout (or it received metadata that does not match
    its shard); the operator replaces it again after its backoff."""
    UNCOVERED = 5
    """Some logical expert has no live replica: answers would be wrong, so the rank stops serving."""
    STALLED = 6
    """A step hung in a collective past its bound; the pod ends and the operator's recovery takes over."""
    FENCED = 7
    """Mooncake deactivated this rank while it lived (seen at a fence): it is out of the group; the operator
    restarts it with the join flag."""
    NO_DATA_PATH = 8
    """No allowed data path passed its start-up probe (`spec.elasticEP.dataPath`): the device route and, under
    `Auto`, the staged route failed, returned a wrong sum or exceeded their bound on some rank; serving would
    risk wrong answers, so every rank stops before it serves. The message names the route and what was seen.
    A whole-group start fails the same way each time: see docs/runbook.md, "Worker exit NoDataPath"."""

    JOIN_REFUSED = 9
    """Mooncake refused this joiner's registration because an earlier incarnation of its ranks is still
    registered (a joiner that died inside its join stays registered as healthy until Mooncake's heartbeat
    timeout, `JOINER_REGISTRATION_HOLD_S`). Not a crash: the operator retries after that window without
    spending the member's restart budget."""


JOINER_REGISTRATION_HOLD_S = 30.0
"""Seconds Mooncake keeps a dead joiner's ranks registered as healthy (its heartbeat timeout), during which a
new registration of those ranks is refused. Measured with mooncake-transfer-engine 0.3.14 (issue #13,
scenario 12); the operator waits it out before retrying a member that died inside its join."""


def describe(code: int | None) -> str | None:
    """The name of a contract exit code (`"LeaderLost"` for 3), or None for any other code."""
    try:
        member = ExitCode(code) if code is not None else None
    except ValueError:
        return None
    if member is None:
        return None
    return "".join(part.capitalize() for part in member.name.split("_"))
