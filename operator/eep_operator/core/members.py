"""Member state machine: the allowed transitions of `MemberState`, as an explicit table.

The planner (`eep_operator.core.planner`) moves members only through `transition()`, so an illegal move is a
bug that raises instead of silently corrupting the status that workers and people read.

```
                 group (re)start: every member, fresh pod, no join flag
   +-------------------------------------------------------------------+
   v                                                                   |
Pending --Ready--> Healthy --lost--> Failed --backoff--> Restarting --running--> Joining --Ready--> Healthy
   |                                  ^                      |                      |
   +--lost (during a group start)-----+<-----lost / rejoin timeout-----------------+
```

- Pending: the pod belongs to a fresh (group) start; it is not Ready yet.
- Failed: the pod is gone or going; its ranks left `activeRanks`; the member waits for its backoff.
- Restarting: the replacement pod is created (or about to be: the status is written before the pod) with the
  join flag.
- Joining: the replacement runs; its ranks are in `joiningRanks`, so the survivors admit it.
- Any state may go to Pending when the whole group restarts, and any live state may go to Failed.
"""

from __future__ import annotations

from collections.abc import Mapping

from eep_operator.api.v1alpha1 import MemberState

S = MemberState

TRANSITIONS: Mapping[MemberState, frozenset[MemberState]] = {
    S.PENDING: frozenset({S.HEALTHY, S.FAILED, S.PENDING}),
    S.HEALTHY: frozenset({S.FAILED, S.PENDING}),
    S.FAILED: frozenset({S.RESTARTING, S.PENDING}),
    S.RESTARTING: frozenset({S.JOINING, S.FAILED, S.PENDING}),
    S.JOINING: frozenset({S.HEALTHY, S.FAILED, S.PENDING}),
}
"""state -> states it may move to. Pending -> Pending is a group restart during a group start."""

SERVING: frozenset[MemberState] = frozenset({S.HEALTHY})
"""States whose ranks are in `membership.activeRanks`."""

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
