"""fence.py: when a rank leaves the fence, and when it ends instead (mirrors as tensors, a fake clock)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NoReturn

import pytest

torch = pytest.importorskip("torch")

from eep_contract.exitcodes import ExitCode  # noqa: E402
from eep_contract.reasons import RecoveryPhase, RecoveryResult  # noqa: E402
from eep_worker.fence import POLL_S, FenceOutcome, pass_fence  # noqa: E402
from eep_worker.groups import Group, GroupSpec  # noqa: E402
from eep_worker.protocol import Kind, StepPlan  # noqa: E402

SETTLE_S = 1.0
WORLD = 4


class Exited(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code


def _exit(code: int, reason: str) -> NoReturn:
    raise Exited(code, reason)


def _group(name: str, ranks: tuple[int, ...]) -> Group:
    ones = torch.ones(len(ranks), dtype=torch.int32)
    return Group(GroupSpec(name, ranks), None, None, ones.clone(), ones.clone())


class Registry:
    """The world and one column group (ranks 1 and 3), as mooncake groups show them to rank 1."""

    def __init__(self) -> None:
        self.world = _group("world", tuple(range(WORLD)))
        self.column = _group("column-001", (1, 3))

    def member_groups(self) -> Iterator[Group]:
        return iter([self.world, self.column])

    def deactivate(self, rank: int, *, column: bool = True, device: bool = True) -> None:
        self.world.cpu_mirror[rank] = 0
        if device:
            self.world.device_mirror[rank] = 0
        if column and rank in self.column.spec.ranks:
            self.column.cpu_mirror[self.column.spec.ranks.index(rank)] = 0
            if device:
                self.column.device_mirror[self.column.spec.ranks.index(rank)] = 0


class Sink:
    def __init__(self) -> None:
        self.phases: list[tuple[RecoveryPhase, float]] = []

    def recovery(self, result: RecoveryResult) -> None: ...
    def phase(self, phase: RecoveryPhase, seconds: float) -> None:
        self.phases.append((phase, seconds))

    def steps(self, total: int = 1, degraded: int = 0, rerun: int = 0) -> None: ...
    def membership(self, active_ranks: int, epoch: int) -> None: ...


def _run(
    registry: Registry, failed: set[int], on_tick: Callable[[float], None] = lambda now: None, rank: int = 1
) -> tuple[FenceOutcome, Sink]:
    now = [0.0]

    def sleep(s: float) -> None:
        assert s == POLL_S
        now[0] += s
        on_tick(now[0])

    sink = Sink()
    plan = StepPlan(2, 40, Kind.FENCE, (), frozenset(range(WORLD)), failed=frozenset(failed))
    outcome = pass_fence(
        plan,
        registry=registry,
        rank=rank,
        settle_s=SETTLE_S,
        sink=sink,
        exit_rank=_exit,
        clock=lambda: now[0],
        sleep=sleep,
    )
    return outcome, sink


def test_passes_once_every_group_shows_the_view() -> None:
    registry = Registry()

    def view_lands(now: float) -> None:
        if now >= 0.1:
            registry.deactivate(3)

    outcome, sink = _run(registry, {3}, view_lands)
    assert outcome.gone == [3] and outcome.kept == [] and outcome.pending == []
    assert 0.1 <= outcome.waited < 0.11
    assert sink.phases == [(RecoveryPhase.FENCE, outcome.waited)]


def test_keeps_suspects_that_mooncake_kept_active() -> None:
    """A suspect the coordinator did not deactivate was slow, not dead: serving goes on with it."""
    registry = Registry()

    def only_two_goes(now: float) -> None:
        if now >= 0.05:
            registry.deactivate(2)

    outcome, _ = _run(registry, {2, 3}, only_two_goes)
    assert outcome.gone == [2] and outcome.kept == [3]


def test_gives_up_after_the_settle_time_with_a_group_still_behind() -> None:
    registry = Registry()
    registry.deactivate(3, column=False)
    outcome, _ = _run(registry, {3})
    assert outcome.gone == [3] and outcome.pending == ["column-001", "column-001"]
    assert outcome.waited > SETTLE_S


def test_nothing_happens_nobody_is_gone() -> None:
    outcome, _ = _run(Registry(), {3})
    assert outcome.gone == [] and outcome.kept == [3]
    assert SETTLE_S < outcome.waited < SETTLE_S + 2 * POLL_S


@pytest.mark.parametrize(("gone", "code"), [(1, ExitCode.FENCED), (0, ExitCode.LEADER_LOST)])
def test_ends_the_rank_when_it_or_rank_zero_is_deactivated(gone: int, code: ExitCode) -> None:
    registry = Registry()
    registry.deactivate(gone)
    with pytest.raises(Exited) as raised:
        _run(registry, {3}, rank=1)
    assert raised.value.code == code
