"""Exit codes: one definition; the operator names a worker's deliberate exit in its failure record."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from eep_contract.exitcodes import ExitCode, describe
from eep_contract.v1alpha1 import ElasticEPClusterSpec, MemberState, MemberStatus
from eep_operator.core.observe import Observed, PodObs, Termination
from eep_operator.core.planner import detect_failure


def test_codes_are_distinct_and_clear_of_python_and_signals() -> None:
    values = [int(c) for c in ExitCode]
    assert len(set(values)) == len(values)
    assert all(2 < v < 128 for v in values), "1-2 are Python's own, 128+N a signal"


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (3, "LeaderLost"),
        (4, "JoinFailed"),
        (7, "Fenced"),
        (8, "NoDataPath"),
        (137, None),
        (1, None),
        (None, None),
    ],
)
def test_describe(code: int | None, name: str | None) -> None:
    assert describe(code) == name


def test_the_planner_records_the_meaning_of_a_worker_exit() -> None:
    spec = ElasticEPClusterSpec.model_validate({"image": "w", "nodes": 2})
    member = MemberStatus(
        index=1,
        pod_name="c-1",
        pod_uid="u1",
        first_rank=1,
        rank_count=1,
        state=MemberState.HEALTHY,
        incarnation=1,
    )
    term = Termination(exit_code=int(ExitCode.FENCED), reason="Error", message="deactivated")
    pod = PodObs(name="c-1", uid="u1", member=1, incarnation=1, join=False, phase="Failed", terminated=term)
    failure = detect_failure(member, pod, Observed(name="c", namespace="n", uid="u"), spec, datetime.now(UTC))
    assert failure is not None and failure.exit.exit_code == 7
    assert failure.exit.message == "worker exit Fenced. deactivated"
