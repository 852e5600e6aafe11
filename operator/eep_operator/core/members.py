"""Member state machine: the allowed transitions of `MemberState`, as an explicit table.

The planner (`eep_operator.core.planner`) changes a member's state only through `move()`, which checks the
move against the table, so an illegal move is a bug that raises instead of silently corrupting the status
that workers and people read. Each move is also returned as a `Move` and listed in the plan (`Plan.moves`):
the planner simulation (tests/operator/operator_sim.py, `check_step`) replays them at every step and fails
if a member's new state is not what its moves explain, i.e. if anything wrote a state past the table.

```
                 group (re)start: every member, fresh pod, no join flag
   +-------------------------------------------------------------------+
   v                                                                   |
Pending --Ready--> Healthy --lost--> Failed --backoff--> Restarting --running--> Joining --Ready--> Healthy
   |                                  ^                      |                      |
   +--lost (during a group start)-----+<-----lost / rejoin timeout-----------------+
```

- Pending: the pod belongs to a fresh (group) start; it is not Ready yet. Every member is created Pending
  (`INITIAL`).
- Failed: the pod is gone or going; its ranks left `activeRanks`; the member waits for its backoff.
- Restarting: the replacement pod is created (or about to be: the status is written before the pod) with the
  join flag.
- Joining: the replacement runs; its ranks are in `joiningRanks`, so the survivors admit it.
- Any state may go to Pending when the whole group restarts, and any live state may go to Failed. That
  includes Failed -> Pending: a member that failed as part of a group restart, and every Failed member of a
  cluster in phase Failed whose spec a person changed (the operator restarts the group then).
- Pending -> Pending: a group restart while a group start is still under way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from eep_contract.v1alpha1 import MemberState, MemberStatus

S = MemberState

TRANSITIONS: Mapping[MemberState, frozenset[MemberState]] = {
    S.PENDING: frozenset({S.HEALTHY, S.FAILED, S.PENDING}),
    S.HEALTHY: frozenset({S.FAILED, S.PENDING}),
    S.FAILED: frozenset({S.RESTARTING, S.PENDING}),
    S.RESTARTING: frozenset({S.JOINING, S.FAILED, S.PENDING}),
    S.JOINING: frozenset({S.HEALTHY, S.FAILED, S.PENDING}),
}
"""state -> states it may move to (the diagram above; the module docstring says why each move exists)."""

INITIAL: MemberState = S.PENDING
"""The state every member is created in (the first plan, or a member list rebuilt for `spec.nodes`)."""

DOWN: frozenset[MemberState] = frozenset({S.FAILED, S.RESTARTING, S.JOINING})
"""States of a member under per-member recovery: it does not serve, the others do."""


class IllegalTransitionError(ValueError):
    """The planner tried a move the table does not allow (a bug in the planner)."""


def can_transition(current: MemberState, target: MemberState) -> bool:
    """Whether `current -> target` is in the table."""
    return target in TRANSITIONS[current]


def transition(current: MemberState, target: MemberState) -> MemberState:
    """Return `target` if the move is allowed. Raises `IllegalTransitionError` otherwise."""
    if not can_transition(current, target):
        raise IllegalTransitionError(f"member state {current.value} -> {target.value} is not allowed")
    return target


@dataclass(frozen=True)
class Move:
    """One state change within a plan: member `member` went `source -> target` (a pair in the table), or,
    with `rebuilt`, the state read back from the member's pod after the status was lost (`rebuild`)."""

    member: int
    source: MemberState
    target: MemberState
    rebuilt: bool = False


def move(m: MemberStatus, target: MemberState, now: datetime) -> Move:
    """Move member `m` to `target` and restart its `stateSince`; the only writer of a member's state once the
    member exists. Raises `IllegalTransitionError` if the table does not allow the move."""
    source = m.state
    m.state = transition(source, target)
    m.state_since = now
    return Move(member=m.index, source=source, target=target)


def rebuild(m: MemberStatus, target: MemberState, now: datetime) -> Move:
    """Set `m`'s state to what its pod shows, after the status (the operator's memory) was lost or is older
    than the pods. Not a transition: the table describes what the operator decides, this restores what it had
    decided before. The returned `Move` says so (`rebuilt`)."""
    source = m.state
    m.state = target
    m.state_since = now
    return Move(member=m.index, source=source, target=target, rebuilt=True)
