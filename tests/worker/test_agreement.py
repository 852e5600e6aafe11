"""agreement.py on a real TCPStore: the counting barrier and the all-or-nothing vote, ranks as threads.

Each rank gets its own store client, as each rank process has (a client serves one blocking call at a time).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import pytest

dist = pytest.importorskip("torch.distributed")

from eep_worker.agreement import AgreementTimeout, StoreAgreement  # noqa: E402

T = TypeVar("T")


@pytest.fixture
def store_port() -> Iterator[int]:
    master = dist.TCPStore("127.0.0.1", 0, 1, True, timeout=timedelta(seconds=10), wait_for_workers=False)
    yield int(master.port)
    del master


def _agreement(port: int, rank: int, timeout_s: float) -> StoreAgreement:
    client = dist.TCPStore("127.0.0.1", port, 1, False, timeout=timedelta(seconds=10))
    return StoreAgreement(client, rank, timeout_s)


def _on_threads(
    port: int, ranks: list[int], timeout_s: float, body: Callable[[StoreAgreement], T]
) -> dict[int, Any]:
    results: dict[int, Any] = {}

    def run(rank: int) -> None:
        try:
            results[rank] = body(_agreement(port, rank, timeout_s))
        except Exception as e:
            results[rank] = e

    threads = [threading.Thread(target=run, args=(r,)) for r in ranks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_barrier_releases_every_party_once_the_last_arrives(store_port: int) -> None:
    arrived: list[float] = []

    def body(a: StoreAgreement) -> float:
        time.sleep(0.1 * a.rank)  # the last party comes 0.2 s after the first
        arrived.append(time.monotonic())
        a.barrier("eep/admitted/5", 3)
        return time.monotonic()

    results = _on_threads(store_port, [0, 1, 2], 10.0, body)
    assert all(isinstance(t, float) for t in results.values()), results
    assert min(results.values()) >= max(arrived)  # nobody left before the last arrived
    assert max(results.values()) - max(arrived) < 1.0  # and nobody waited out a poll or the timeout


def test_barrier_times_out_with_the_count_of_those_that_came(store_port: int) -> None:
    results = _on_threads(store_port, [0, 1], 0.3, lambda a: a.barrier("eep/admitted/6", 3))
    for error in results.values():
        assert isinstance(error, AgreementTimeout)
        assert (error.arrived, error.parties) == (2, 3)


@pytest.mark.parametrize(
    ("votes", "expected"),
    [({0: True, 1: True, 2: True}, True), ({0: True, 1: False, 2: True}, False)],
)
def test_vote_is_the_same_for_every_voter(store_port: int, votes: dict[int, bool], expected: bool) -> None:
    results = _on_threads(
        store_port, list(votes), 10.0, lambda a: a.vote("3/world/0", [0, 1, 2], votes[a.rank])
    )
    assert results == dict.fromkeys(votes, expected)


def test_a_voter_that_never_votes_counts_as_no(store_port: int) -> None:
    t0 = time.monotonic()
    results = _on_threads(store_port, [0, 1], 0.3, lambda a: a.vote("4/world/0", [0, 1, 2], True))
    assert results == {0: False, 1: False}
    assert time.monotonic() - t0 < 5.0
