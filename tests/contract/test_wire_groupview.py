"""`GroupView`, member 0's answer to GET /v1/group: what it accepts and what it refuses on the wire."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from eep_contract import wire
from eep_contract.wire import GROUP_PATH, GroupView

GOOD: dict[str, Any] = {"epoch": 4, "world_size": 4, "live_ranks": [0, 1, 3], "updated_seconds_ago": 0.25}


def test_the_path_and_the_model_are_exported() -> None:
    assert GROUP_PATH == "/v1/group"
    assert {"GROUP_PATH", "GroupView"} <= set(wire.__all__)


def test_a_view_round_trips_through_json() -> None:
    view = GroupView.model_validate_json(json.dumps(GOOD))
    assert view == GroupView(epoch=4, world_size=4, live_ranks=[0, 1, 3], updated_seconds_ago=0.25)
    assert json.loads(view.model_dump_json()) == GOOD
    assert GroupView.model_validate(view.model_dump()) == view


def test_an_integer_age_and_no_live_rank_are_valid() -> None:
    view = GroupView.model_validate_json(json.dumps({**GOOD, "live_ranks": [], "updated_seconds_ago": 3}))
    assert view.live_ranks == []
    assert view.updated_seconds_ago == 3.0


def test_a_view_is_frozen() -> None:
    view = GroupView.model_validate(GOOD)
    with pytest.raises(ValidationError):
        view.epoch = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"live_ranks": [0, 4]}, "a rank outside the world"),
        ({"live_ranks": [-1, 0]}, "a negative rank"),
        ({"live_ranks": [0, 1, 1]}, "a repeated rank"),
        ({"live_ranks": [1, 0]}, "ranks not ascending"),
        ({"live_ranks": ["0", "1"]}, "ranks as strings"),
        ({"live_ranks": [0.0]}, "a rank as a float"),
        ({"epoch": -1}, "a negative epoch"),
        ({"epoch": "4"}, "an epoch as a string"),
        ({"world_size": 0}, "an empty world"),
        ({"updated_seconds_ago": -0.1}, "a negative age"),
        ({"stale": True}, "an unknown field"),
    ],
)
def test_a_malformed_view_is_refused(change: dict[str, Any], why: str) -> None:
    with pytest.raises(ValidationError):
        GroupView.model_validate_json(json.dumps({**GOOD, **change}))


@pytest.mark.parametrize("missing", sorted(GOOD))
def test_every_field_is_required(missing: str) -> None:
    body = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(ValidationError):
        GroupView.model_validate_json(json.dumps(body))


def test_a_non_finite_age_is_refused() -> None:
    with pytest.raises(ValidationError):
        GroupView.model_validate_json(
            b'{"epoch": 1, "world_size": 2, "live_ranks": [0], "updated_seconds_ago": Infinity}'
        )
    with pytest.raises(ValidationError):
        GroupView(epoch=1, world_size=2, live_ranks=[0], updated_seconds_ago=float("nan"))
