"""Unit tests of eep_demo.client (the demo's retrying load client) against a fake member 0 (no cluster, no
mooncake): its retrying and bookkeeping on top of the test kit's checking (tests/testkit tests that part).

The fake (tests/fakes/member0.py) answers /v1/infer with the float64 reference's numbers, or wrong ones, or
503, or a dropped connection, as the test sets.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fakes.member0 import Member0

from eep_demo.client import ClientSettings, LoadClient
from eep_demo.timeline import AttemptResult, count_requests
from eep_testkit.reference import ReferenceChecker, fetch_model_config


class FixedEndpoint:
    def __init__(self, url: str) -> None:
        self._url = url
        self.invalidations = 0

    def url(self) -> str | None:
        return self._url

    def invalidate(self) -> None:
        self.invalidations += 1


@pytest.fixture
def standin() -> Iterator[Member0]:
    s = Member0()
    yield s
    s.close()


def run_client(standin: Member0, plan: list[tuple[str, float]], drain_s: float = 5.0) -> LoadClient:
    checker = ReferenceChecker(fetch_model_config(standin.url))
    client = LoadClient(
        FixedEndpoint(standin.url),
        checker,
        ClientSettings(concurrency=2, pace_s=0.01, retry_backoff_s=0.05, prompts=4),
    )
    client.start()
    for mode, seconds in plan:
        standin.mode = mode
        time.sleep(seconds)
    client.stop(drain_s)
    return client


def test_correct_answers_pass(standin: Member0) -> None:
    client = run_client(standin, [("ok", 0.5)])
    counts = count_requests(client.attempts, client.request_ids)
    assert counts.sent > 5 and counts.ok == counts.sent and counts.wrong == counts.failed == 0


def test_wrong_answers_are_caught(standin: Member0) -> None:
    client = run_client(standin, [("ok", 0.3), ("wrong", 0.3), ("ok", 0.3)])
    counts = count_requests(client.attempts, client.request_ids)
    assert counts.wrong > 0 and counts.failed == 0
    wrong = [a for a in client.attempts if a.result is AttemptResult.WRONG]
    assert "max_abs_error" in wrong[0].detail


@pytest.mark.parametrize("outage", ["503", "drop"])
def test_unanswered_requests_are_retried_not_lost(standin: Member0, outage: str) -> None:
    client = run_client(standin, [("ok", 0.3), (outage, 0.6), ("ok", 0.3)])
    counts = count_requests(client.attempts, client.request_ids)
    assert counts.retries > 0, "the outage produced no unanswered attempt"
    assert counts.failed == 0 and counts.wrong == 0 and counts.ok == counts.sent


def test_a_request_unanswered_at_the_end_is_failed(standin: Member0) -> None:
    client = run_client(standin, [("ok", 0.3), ("503", 0.3)], drain_s=0.3)
    counts = count_requests(client.attempts, client.request_ids)
    assert counts.failed >= 1 and counts.wrong == 0
