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
    """Mooncake's coordinator refused this joiner's registration for the whole of Mooncake's registration
    wait (30 s) because an earlier incarnation of its ranks is still registered as healthy: a joiner that
    died inside its join stays so until Mooncake's heartbeat timeout (`JOINER_REGISTRATION_HOLD_S`), an old
    process that still runs stays so for as long as it runs. The group's creation then raises "timed out
    waiting for agent registration" (the refusal's reason is only in Mooncake's log), which a joiner takes
    for this (`eep_worker.admission.registration_refused`). Not a crash: the operator retries after the
    hold without spending the member's restart budget (once in a row)."""


JOINER_REGISTRATION_HOLD_S = 30.0
"""Seconds Mooncake keeps a dead joiner's ranks registered as healthy, during which a new registration of
those ranks is refused ("rank already registered and is Healthy; replacement must wait for the old process
to leave the healthy set."); the operator waits it out before retrying a member that died inside its join.

Source (mooncake-pg, kvcache-ai/Mooncake at 3b5a594; the same texts are in mooncake-transfer-engine
0.3.13.post1's libmooncake_pg.so): the refusal, `src/control_plane/coordinator.cpp` lines 70-75
(`handleRegisterAgent`); the hold, `kHeartbeatTimeout = std::chrono::seconds(30)` in
`include/control_plane/coordinator.h` line 215, a compile-time constant (no setting, no environment
variable), checked on every coordinator tick (coordinator.cpp lines 559-566; ticks every 50 ms or less);
agents heartbeat every second. A refused agent retries on its own ticks
(`src/control_plane/agent_host.cpp` lines 519-526) until the group's creation gives up after 30 s
(`waitUntilRegistered(std::chrono::seconds(30))`, `src/mooncake_communicator.cpp` line 543).

Measured on mooncake-cpu 0.3.13.post1 (2 members x 1 rank, issue 13, scenario 12): a joiner SIGKILLed while
blocked in `join_group` was timed out ("handleTimedOutAgent rank=1 ... reason=heartbeat timeout") 29.7 s
after its death; a second joiner started at once was refused from its first registration (5.3 s after the
death, after its start-up) for 24.3 s, then registered and joined 30.8 s after the death. A joiner started
while the first one still lived was refused for its whole 30 s wait and exited ("timed out waiting for agent
registration"). So a retry sooner than this hold after a death blocks in its group's creation until the hold
ends (its own 30 s wait starts after the death, so it outlasts the hold); a refusal that ends a joiner
(`ExitCode.JOIN_REFUSED`) needs an earlier incarnation that still heartbeats."""


def describe(code: int | None) -> str | None:
    """The name of a contract exit code (`"LeaderLost"` for 3), or None for any other code."""
    try:
        member = ExitCode(code) if code is not None else None
    except ValueError:
        return None
    if member is None:
        return None
    return "".join(part.capitalize() for part in member.name.split("_"))
