"""The step fence: after a failure, every rank issues nothing until Mooncake's new view has reached it.

Who calls it: the step executor (`execution.StepExecutor.run`), on every rank, when a `FENCE` plan arrives;
the leader sends one after a step it did not trust, naming the ranks it saw fail (`StepPlan.failed`).

Why. Groups are created with Mooncake's in-collective sync off (`mooncake.Mooncake.options`), so a collective
that sees a dead peer returns at once, and Mooncake's coordinator applies its new view when its
reconciliation window closes. Mooncake restarts a group's per-collective buffer-slot counter whenever the
group's active set changes; two survivors that applied the view at different points of their collective
streams would wait on different slots forever (docs/known-issues.md, "survivors hung after a mid-stream
kill"). Parked here, every survivor applies the view between the same two collectives. This needs the leader
to reach the fence before the window closes; `Settings.fence_window_s` sizes the window.

How. The coordinator applies one decision: the world group's CPU mirror shows which suspects it deactivated,
and the fence then waits until every group of this rank shows those inactive. The window closes at most one
window after the first failure report, which came before the leader's fence; so after
`Settings.fence_settle_s` with no suspect deactivated, no view is coming: the suspects were slow, not dead
(Mooncake's failure hints also name live ranks at times), and serving goes on with them. A rank that Mooncake
deactivated itself leaves (`ExitCode.FENCED`: the operator restarts it with the join flag); one that sees
rank 0 inactive leaves with `ExitCode.LEADER_LOST`.

It polls the mirrors every `POLL_S`: Mooncake updates them in place and offers nothing to wait on, and
nothing else runs on this rank meanwhile (no collective may be issued).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from eep_contract.exitcodes import ExitCode
from eep_contract.reasons import RecoveryPhase
from eep_worker.events import LEADER_LOST, Exit
from eep_worker.groups import Group
from eep_worker.metrics import MetricsSink
from eep_worker.protocol import StepPlan

__all__ = ["POLL_S", "FenceOutcome", "pass_fence"]

log = logging.getLogger(__name__)
POLL_S = 0.002
"""Seconds between two reads of the mirrors."""


class Groups(Protocol):
    """The part of `groups.GroupRegistry` the fence reads."""

    @property
    def world(self) -> Group: ...
    def member_groups(self) -> Iterator[Group]: ...


@dataclasses.dataclass(frozen=True)
class FenceOutcome:
    waited: float
    """Seconds parked at the fence."""
    gone: list[int]
    """Suspects the new view deactivated."""
    kept: list[int]
    """Suspects Mooncake kept active (slow, not dead): serving goes on with them."""
    pending: list[str]
    """Groups that still showed a deactivated suspect active when the fence gave up waiting."""


def pass_fence(
    plan: StepPlan,
    *,
    registry: Groups,
    rank: int,
    settle_s: float,
    sink: MetricsSink,
    exit_rank: Exit,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> FenceOutcome:
    """Park until this rank's groups show the new view without `plan.failed` (module doc), or until
    ``settle_s`` seconds have passed. Reports the wait as the `fence` phase and logs the outcome. Ends the
    rank (``exit_rank``) when Mooncake deactivated this rank or rank 0."""
    t0 = clock()
    world = registry.world
    gone: list[int] = []
    pending: list[str] = []
    while True:
        waited = clock() - t0
        flags = world.cpu_mirror.tolist()
        if not flags[rank]:
            exit_rank(ExitCode.FENCED, "Mooncake deactivated this rank")
        if not flags[0]:
            exit_rank(ExitCode.LEADER_LOST, LEADER_LOST)
        gone = [r for r in sorted(plan.failed) if not flags[r]]
        if gone:
            pending = [
                group.name
                for group in registry.member_groups()
                for mirror in (group.device_mirror, group.cpu_mirror)
                # a device read on GPU: fine here, nothing is in flight
                if any(mirror.tolist()[i] for i in group.spec.locals_of(gone))
            ]
            if not pending:
                break
        if waited > settle_s:
            break
        sleep(POLL_S)
    sink.phase(RecoveryPhase.FENCE, waited)
    kept = sorted(plan.failed - set(gone))
    log.log(
        logging.WARNING if kept or pending else logging.INFO,
        "rank %d epoch %d step %d: fence passed after %.3fs: ranks %s inactive%s%s",
        rank,
        plan.epoch,
        plan.step,
        waited,
        gone,
        f"; suspected ranks {kept} kept active by Mooncake, serving on with them" if kept else "",
        f"; groups {sorted(set(pending))} still without the new view" if pending else "",
    )
    return FenceOutcome(waited, gone, kept, pending)
