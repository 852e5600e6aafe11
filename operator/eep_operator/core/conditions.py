"""Conditions: set one, keeping `lastTransitionTime` unless the status flips (Kubernetes convention).

Called by the planner with its `now`; never reads the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from eep_contract.v1alpha1 import Condition, ConditionType


def set_condition(conditions: Sequence[Condition], new: Condition, now: datetime) -> list[Condition]:
    """Return `conditions` with `new` put in place of the condition of the same type.

    `lastTransitionTime` becomes `now` only if the type is new or its status changed; reason, message and
    observedGeneration are always taken from `new`. Order is preserved; a new type is appended.
    """
    out: list[Condition] = []
    replaced = False
    for cond in conditions:
        if cond.type != new.type:
            out.append(cond)
            continue
        replaced = True
        flipped = cond.status != new.status or cond.last_transition_time is None
        out.append(
            new.model_copy(update={"last_transition_time": now if flipped else cond.last_transition_time})
        )
    if not replaced:
        out.append(new.model_copy(update={"last_transition_time": now}))
    return out


def get_condition(conditions: Sequence[Condition], ctype: ConditionType) -> Condition | None:
    """The condition of type `ctype`, or None."""
    return next((c for c in conditions if c.type == ctype), None)
