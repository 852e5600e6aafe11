"""The step executor's side of a dedicated coordinator's answers (`StepExecutor._exchange_answer`) and of a
plan a rank could not read, on fakes of Mooncake (`dist.broadcast` patched): which outcomes rank 0 trusts,
what it names failed, when a rank leaves.

The faults (docs/known-issues.md, "Mooncake's collectives can lag a step"): Mooncake's broadcast
can end on a flag left by the previous op, so it returns at once with old data; before the answer channel,
rank 0 read the answer from that broadcast and, once lagging, re-ran every step forever. A follower that
could not read the plan contributed zeros to the combines, which the output rank summed into an answer
reported as good."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest
import torch

from eep_contract.exitcodes import ExitCode
from eep_worker import execution
from eep_worker import protocol as P
from eep_worker.answer import Answer, AnswerInbox, AnswerOutbox
from eep_worker.execution import OUT_OF_STEP_LIMIT, UNANSWERED_LIMIT, StepExecutor
from eep_worker.leader import Leader
from eep_worker.protocol import StepPlan
from eep_worker.settings import Settings, parse

WORLD, LAYERS, HIDDEN, TOKENS = 3, 2, 8, 4


class Work:
    def __init__(self, ok: bool = True, failed: tuple[int, ...] = ()) -> None:
        self.ok, self.failed = ok, failed

    def wait(self) -> bool:
        return True


class Mooncake:
    def local_success(self, work: Work) -> bool:
        return work.ok

    def failed_ranks(self, work: Work) -> list[int]:
        return list(work.failed)

    def all_succeeded(self, works: list[Work]) -> bool:
        return all(w.ok for w in works)

    def set_collective_timeout(self, seconds: float) -> None:
        pass


class Group:
    cpu = object()
    cpu_mirror = torch.ones(WORLD, dtype=torch.int32)
    spec = type("Spec", (), {"ranks": list(range(WORLD))})()


class Registry:
    world = Group()
    serving = type("Serving", (), {"device": None})()


class Path:
    """The combines: records what each rank contributed and its stamp; the stamps sum as on `WORLD - 1`
    serving ranks that all stamped alike, unless `lag` is set: then the result is that of the op two
    before (the same buffer slot, Mooncake's late flag), data and stamps."""

    mode = None

    def __init__(self) -> None:
        self.sent: list[torch.Tensor] = []
        self.stamps: list[int] = []
        self.results: list[tuple[torch.Tensor, float]] = []
        self.stamp_sum: float | None = None
        self.lag = False

    def all_reduce(self, t: torch.Tensor, stamp: int = 0) -> Work:
        self.sent.append(t.clone())
        self.stamps.append(stamp)
        result = (t * (WORLD - 1), float(stamp * (WORLD - 1)))
        self.results.append(result)
        data, self.stamp_sum = self.results[-3] if self.lag else result
        t.copy_(data)
        return Work()


class Sink:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


class Events(list[object]):
    def put(self, event: object) -> None:
        self.append(event)


class Exited(Exception):
    pass


def exit_rank(code: int, reason: str) -> NoReturn:
    raise Exited(code, reason)


def settings(rank: int) -> Settings:
    flags = {
        "--coordinator-mode": "Dedicated",
        "--world-size": str(WORLD),
        "--rank-count": "1",
        "--first-rank": str(rank),
        "--member-index": str(rank),
        "--layers": str(LAYERS),
        "--hidden": str(HIDDEN),
        "--max-batch-tokens": "8",
    }
    return parse(["serve", *(x for kv in flags.items() for x in kv)], {})


def executor(rank: int, answers: AnswerInbox | AnswerOutbox | None, path: Path | None = None) -> StepExecutor:
    return StepExecutor(
        settings(rank),
        rank,
        mc=Mooncake(),  # type: ignore[arg-type]
        registry=Registry(),  # type: ignore[arg-type]
        model=None,
        metadata=None,
        admission=None,  # type: ignore[arg-type]
        sink=Sink(),
        outbox=Events(),
        exit_rank=exit_rank,
        path=path,  # type: ignore[arg-type]
        answers=answers,
    )


@pytest.fixture
def inbox() -> Iterator[AnswerInbox]:
    box = AnswerInbox("127.0.0.1", hidden=HIDDEN, max_rows=8)
    yield box
    box.close()


def rows(step: int) -> torch.Tensor:
    return torch.full((TOKENS, HIDDEN), float(step))


def batch(step: int) -> StepPlan:
    return StepPlan(1, step, P.Kind.BATCH, tuple(range(TOKENS)), frozenset(range(WORLD)))


def test_rank_0_takes_each_steps_answer_while_the_broadcast_lags_a_step(
    inbox: AnswerInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every broadcast returns at once (ended by a stale flag); the output rank's answer to each step comes
    after the previous step's, 50 ms late. Rank 0 trusts each step, with its own step's rows."""
    monkeypatch.setattr(execution.dist, "broadcast", lambda *a, **k: Work())
    ex = executor(0, inbox)
    out = AnswerOutbox(inbox.address)
    try:
        for step in range(1, 6):
            out.send(Answer(1, step - 1, step - 2, True, frozenset(), rows(step - 1)))
            late = threading.Timer(0.05, out.send, [Answer(1, step, step - 1, True, frozenset(), rows(step))])
            late.start()
            _, got = ex.run(batch(step))
            late.join()
            assert ex.all_succeeded(), f"step {step} not trusted"
            assert got is not None and torch.equal(got, rows(step))
    finally:
        out.close()


def test_a_dead_output_rank_is_named_at_once(inbox: AnswerInbox, monkeypatch: pytest.MonkeyPatch) -> None:
    def broadcast(t: torch.Tensor, src: int, **_: object) -> Work:
        return Work() if src == 0 else Work(ok=False, failed=(1,))

    monkeypatch.setattr(execution.dist, "broadcast", broadcast)
    ex = executor(0, inbox)
    ex.answer_wait_s = 30.0  # not waited for: the broadcast said the output rank died
    _, got = ex.run(batch(1))
    assert not ex.all_succeeded() and ex.failed_ranks() == {1}
    assert got is not None and got.shape == (TOKENS, HIDDEN)


def test_the_output_ranks_failure_report_reaches_rank_0(
    inbox: AnswerInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(execution.dist, "broadcast", lambda *a, **k: Work())
    ex = executor(0, inbox)
    out = AnswerOutbox(inbox.address)
    try:
        out.send(Answer(1, 1, 0, False, frozenset({2}), rows(1)))
        ex.run(batch(1))
    finally:
        out.close()
    assert not ex.all_succeeded() and ex.failed_ranks() == {2}


def test_rank_0_leaves_when_no_answer_reaches_it(inbox: AnswerInbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(execution.dist, "broadcast", lambda *a, **k: Work())
    ex = executor(0, inbox)
    ex.answer_wait_s = 0.02
    for step in range(1, UNANSWERED_LIMIT):
        ex.run(batch(step))
        assert not ex.all_succeeded()
    with pytest.raises(Exited) as e:
        ex.run(batch(UNANSWERED_LIMIT))
    assert e.value.args[0] == ExitCode.STALLED and "no answer reached rank 0" in e.value.args[1]


def test_a_rank_that_cannot_read_the_plan_poisons_the_combines_and_says_so(
    inbox: AnswerInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan buffer holds no plan (a broadcast that delivered nothing): the output rank (rank 1) sends
    NaN through every combine and tells rank 0 it could not read the step after its last one."""
    monkeypatch.setattr(execution.dist, "broadcast", lambda *a, **k: Work())
    path = Path()
    out = AnswerOutbox(inbox.address)
    try:
        ex = executor(1, out, path)
        plan, result = ex.run(None)
        assert plan is None and result is None
        assert len(path.sent) == LAYERS and all(bool(t.isnan().all()) for t in path.sent)
        word = inbox.take(1, 1, timeout_s=5)
        assert word is not None and (word.step, word.after, word.ok) == (-1, 0, False)
    finally:
        out.close()


def test_a_rank_out_of_step_with_the_leader_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(execution.dist, "broadcast", lambda *a, **k: Work())
    ex = executor(2, None, Path())
    ex.dedicated = False  # the channel is not what this is about
    for _ in range(OUT_OF_STEP_LIMIT - 1):
        ex.run(None)
    with pytest.raises(Exited) as e:
        ex.run(None)
    assert e.value.args[0] == ExitCode.STALLED and "out of step" in e.value.args[1]


def test_the_leader_leaves_a_group_whose_steps_fail_with_no_rank_to_blame() -> None:
    """Mooncake's flags can keep a pair of ranks a step apart for good (docs/known-issues.md): every step is
    then untrusted and no rank is named. The leader ends the group after `OUT_OF_STEP_LIMIT` such steps in a
    row instead of re-running forever; a step with a failed rank starts the count again."""

    class Executor:
        world = Registry.world
        step_no = 0
        failed: frozenset[int] = frozenset()

        def failed_ranks(self) -> frozenset[int]:
            return self.failed

        def enter_tail(self) -> None:
            pass

        def run(self, plan: StepPlan) -> None:
            assert plan.kind is P.Kind.FENCE

    ex = Executor()
    leader = Leader(
        settings(0),
        executor=ex,  # type: ignore[arg-type]
        admission=None,  # type: ignore[arg-type]
        source=None,
        requests=None,  # type: ignore[arg-type]
        sink=Sink(),
        outbox=Events(),
        exit_rank=exit_rank,
    )
    for _ in range(OUT_OF_STEP_LIMIT - 1):
        leader._rerun(batch(1), [])
    ex.failed = frozenset({2})
    leader._rerun(batch(1), [])  # a kill: fenced, the count starts again
    assert leader.unexplained == 0
    ex.failed = frozenset()
    for _ in range(OUT_OF_STEP_LIMIT - 1):
        leader._rerun(batch(1), [])
    with pytest.raises(Exited) as e:
        leader._rerun(batch(1), [])
    assert e.value.args[0] == ExitCode.STALLED and "out of step" in e.value.args[1]


def test_a_combine_that_sums_another_ops_data_poisons_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """A serving rank runs BATCH steps; in the second, its combines return the result of the op two before
    (as Mooncake's late flag leaves them): finite numbers, reported as a success. Their stamps give them
    away and the rank's output is NaN, which the output rank's answer and the leader refuse."""
    plans: list[StepPlan] = []

    def broadcast(t: torch.Tensor, src: int, **_: object) -> Work:
        if src == 0 and t.dtype == torch.int64:
            P.encode_into(plans[-1], t.numpy())
        return Work()

    class Model:
        def forward(self, tokens: torch.Tensor, dispatch: object, combine: Any) -> torch.Tensor:
            hidden = torch.ones(TOKENS, HIDDEN)
            for _ in range(LAYERS):
                hidden = hidden + combine(torch.ones(TOKENS, HIDDEN))
            return hidden

    monkeypatch.setattr(execution.dist, "broadcast", broadcast)
    path = Path()
    ex = executor(2, None, path)
    ex.dedicated = False  # the answer is not what this is about
    ex.model = Model()  # type: ignore[assignment]
    ex.metadata = type("Metadata", (), {"logical_to_rank_dispatch_physical_map": None})()  # type: ignore[assignment]
    ex.dispatch_live = frozenset(range(WORLD))  # the live set of the plans: no dispatch map to rebuild
    plans.append(batch(1))
    _, out = ex.run(None)
    assert out is not None and bool(torch.isfinite(out).all()) and ex.lagged == 0
    assert path.stamps == [execution.stamp(1, LAYERS, i) for i in range(LAYERS)]
    path.lag = True
    plans.append(batch(2))
    _, out = ex.run(None)
    assert out is not None and bool(out.isnan().all()), "a lagged combine went unnoticed"
    assert ex.lagged >= 1


@pytest.mark.parametrize("layers", range(1, 10))
def test_stamps_tell_apart_near_ops_and_the_same_combine_of_consecutive_steps(layers: int) -> None:
    """A late flag gives a rank the data of the op two before in its group (ops here: the combines of
    consecutive steps, and in the world group one plan broadcast more per step); a rank a step behind sums
    combine i of the step before. Neither may carry the stamp of the op it stands in for."""
    for per_step in (layers, layers + 1):  # the serving group; the world group with the plan broadcast
        ops = [(s, i) for s in range(1, 9) for i in range(per_step)]
        marks = [execution.stamp(s, layers, i) if i < layers else None for s, i in ops]
        for k in range(len(ops)):
            for back in (1, 2):  # a late flag: the op two before (the group's other buffer slot is one)
                if k >= back and marks[k] is not None and marks[k - back] is not None:
                    assert marks[k] != marks[k - back], (layers, per_step, ops[k], back)
    for s in range(1, 9):
        for i in range(layers):
            assert execution.stamp(s, layers, i) != execution.stamp(s - 1, layers, i)


def test_a_rank_that_reads_each_plan_a_step_late_refuses_them_and_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lagging plan broadcast: this rank reads plan 1 at step 2, plan 2 at step 3, and so on. Each is a
    valid plan of a step it has not run; it must refuse them (running them would add last step's batch to
    this step's sums) until it leaves."""
    plans: list[StepPlan] = []

    def broadcast(t: torch.Tensor, src: int, **_: object) -> Work:
        if src == 0 and t.dtype == torch.int64:
            P.encode_into(plans[-2] if len(plans) > 1 else plans[-1], t.numpy())
        return Work()

    monkeypatch.setattr(execution.dist, "broadcast", broadcast)
    path = Path()
    ex = executor(2, None, path)
    ex.dedicated = False
    with pytest.raises(Exited) as e:
        for step in range(1, OUT_OF_STEP_LIMIT + 3):
            plans.append(batch(step))
            plan, _ = ex.run(None)
            assert plan is None or plan.step == 1, f"ran plan {plan.step} at step {step}"
    assert e.value.args[0] == ExitCode.STALLED and "out of step" in e.value.args[1]
