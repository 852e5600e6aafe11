"""The answer channel of a dedicated coordinator (`eep_worker.answer`): rank 0 takes the output rank's answer
to its own step and nothing else, whatever order the answers arrive in, and a malformed message never stops
it.

The fault it exists for (docs/known-issues.md, "Mooncake's collectives can lag a step"): on
Mooncake's broadcast, after a kill, every answer rank 0 read was the previous step's, and every step was
re-run until the joiner timed out and rank 0 exited (a clean-clone `make test` of 2026-12-01). Here the
previous step's answer arrives first, every time, and rank 0 still takes the right one."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import torch
import zmq

from eep_worker.answer import HEADER_MAX, Answer, AnswerError, AnswerInbox, AnswerOutbox, decode, encode

HIDDEN = 8


def answer(
    step: int, rank: int = 1, *, tokens: int = 3, ok: bool = True, failed: frozenset[int] = frozenset()
) -> Answer:
    rows = torch.arange(tokens * HIDDEN, dtype=torch.float32).view(tokens, HIDDEN) + 1000 * step
    return Answer(rank, step, step - 1, ok, failed, rows)


@pytest.fixture
def channel() -> Iterator[tuple[AnswerInbox, AnswerOutbox]]:
    inbox = AnswerInbox("127.0.0.1", hidden=HIDDEN, max_rows=16)
    outbox = AnswerOutbox(inbox.address)
    try:
        yield inbox, outbox
    finally:
        outbox.close()
        inbox.close()


def test_an_answer_survives_the_wire_whole() -> None:
    sent = answer(7, ok=False, failed=frozenset({2, 3}))
    got = decode(encode(sent), HIDDEN)
    assert (got.rank, got.step, got.after, got.ok, got.failed) == (1, 7, 6, False, frozenset({2, 3}))
    assert torch.equal(got.rows, sent.rows)
    wide = Answer(1, 2, 1, True, frozenset(), torch.ones(2, HIDDEN, dtype=torch.float64))
    assert decode(encode(wide), HIDDEN).rows.dtype == torch.float64
    empty = Answer(1, -1, 4, False, frozenset(), torch.zeros(0, HIDDEN))
    assert decode(encode(empty), HIDDEN).rows.shape == (0, HIDDEN)


def _header(**change: object) -> bytes:
    header: dict[str, object] = dict(rank=1, step=5, after=4, ok=True, failed=[], rows=1, hidden=HIDDEN)
    header["dtype"] = "float32"
    header.update(change)
    return json.dumps(header).encode()


ROW = bytes(4 * HIDDEN)


@pytest.mark.parametrize(
    ("frames", "why"),
    [
        ([_header()], "2 frames"),
        ([_header(), ROW, ROW], "2 frames"),
        ([b"x" * (HEADER_MAX + 1), ROW], "2 frames"),
        ([b"\xff{", ROW], "not JSON"),
        ([b"[1]", ROW], "JSON object"),
        ([_header(rank=-1), ROW], "rank"),
        ([_header(step=True), ROW], "step"),
        ([_header(step=-2), ROW], "step"),
        ([_header(ok=1), ROW], "ok"),
        ([_header(failed=[1, "2"]), ROW], "failed"),
        ([_header(failed=[64]), ROW], "failed"),
        ([b"[" * 5000, ROW], "2 frames"),
        ([b"[" * 4000, ROW], "not JSON"),
        ([_header(hidden=HIDDEN + 1), ROW], "wide"),
        ([_header(dtype="int8"), ROW], "float32 or float64"),
        ([_header(), ROW[:-1]], "bytes"),
        ([_header(rows=2), ROW], "bytes"),
    ],
)
def test_a_malformed_message_is_refused_with_its_reason(frames: list[bytes], why: str) -> None:
    with pytest.raises(AnswerError, match=why):
        decode(frames, HIDDEN)


def test_rank_0_takes_its_steps_answer_when_the_previous_ones_arrive_first(
    channel: tuple[AnswerInbox, AnswerOutbox],
) -> None:
    inbox, outbox = channel
    for step in range(10, 20):
        outbox.send(answer(step - 1))  # the lag the Mooncake broadcast had: the previous step's, first
        outbox.send(answer(step, rank=2))  # another rank's answer to this step
        outbox.send(answer(step))
        got = inbox.take(step, 1, timeout_s=5)
        assert got is not None and got.step == step and got.rank == 1
        assert torch.equal(got.rows, answer(step).rows)
    assert inbox.dropped == 20


def test_an_answer_that_comes_late_is_waited_for(channel: tuple[AnswerInbox, AnswerOutbox]) -> None:
    inbox, outbox = channel
    timer = threading.Timer(0.2, lambda: outbox.send(answer(3)))
    timer.start()
    t0 = time.monotonic()
    got = inbox.take(3, 1, timeout_s=5)
    timer.join()
    assert got is not None and got.step == 3 and 0.15 < time.monotonic() - t0 < 4


def test_no_answer_in_time_is_none_and_a_late_one_is_dropped_later(
    channel: tuple[AnswerInbox, AnswerOutbox],
) -> None:
    inbox, outbox = channel
    assert inbox.take(3, 1, timeout_s=0.05) is None
    outbox.send(answer(3))
    outbox.send(answer(4))
    got = inbox.take(4, 1, timeout_s=5)
    assert got is not None and got.step == 4 and inbox.dropped == 1


def test_an_output_rank_that_could_not_read_the_plan_answers_so(
    channel: tuple[AnswerInbox, AnswerOutbox],
) -> None:
    """Its word (step -1) ends rank 0's wait for any step: it is only ever sent for a plan the rank could not
    read, so taking one for the wrong step makes that step untrusted, never wrong; and a rank that reads no
    plan for several steps must not leave rank 0 waiting for answers that will not come."""
    inbox, outbox = channel
    outbox.send(answer(4, rank=2))
    outbox.send(Answer(1, -1, 3, False, frozenset(), torch.zeros(0, HIDDEN)))
    got = inbox.take(6, 1, timeout_s=5)
    assert got is not None and (got.step, got.after, got.ok) == (-1, 3, False) and inbox.dropped == 1


def test_a_malformed_message_never_stops_rank_0(channel: tuple[AnswerInbox, AnswerOutbox]) -> None:
    inbox, outbox = channel
    ctx = zmq.Context.instance()
    rogue = ctx.socket(zmq.PUSH)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(inbox.address)
    try:
        rogue.send(b"not an answer")
        rogue.send_multipart([_header(rows=1000), ROW])
        rogue.send(b"x" * (2 * HEADER_MAX))  # over the size limit: ZMQ drops it and the connection
        assert inbox.take(8, 1, timeout_s=0.3) is None
        assert inbox.malformed == 2
        outbox.send(answer(9))
        got = inbox.take(9, 1, timeout_s=5)
        assert got is not None and got.step == 9
    finally:
        rogue.close(linger=0)


def test_an_outbox_with_rank_0_gone_drops_answers_without_blocking() -> None:
    inbox = AnswerInbox("127.0.0.1", hidden=HIDDEN, max_rows=16)
    address = inbox.address
    inbox.close()
    outbox = AnswerOutbox(address)
    try:
        t0 = time.monotonic()
        sent = [outbox.send(answer(s)) for s in range(AnswerOutbox.QUEUE + 10)]
        assert time.monotonic() - t0 < 2
        assert not all(sent)
    finally:
        outbox.close()
