"""The answer channel of a dedicated coordinator: how the output rank's answer to each step reaches rank 0.

Who calls it: the step executor (`execution.StepExecutor`). With `Coordinator.DEDICATED`, rank 0 serves
nothing, so the output rank (the lowest live serving rank) sends it each BATCH step's answer: the step it
answers, its success, the ranks it saw fail, and the batch's output rows. Rank 0 binds an `AnswerInbox` and
publishes its address in the TCPStore (`ADDRESS_KEY`); every serving rank connects an `AnswerOutbox` to it.

Why not a Mooncake broadcast (what this replaced): Mooncake's CPU collectives end an op on a receiver when a
per-peer flag in the op's buffer slot is set, and that flag carries no sequence number (mooncake-pg,
kvcache-ai/Mooncake at 3b5a594, `src/mooncake_worker_thread.cpp`: a sender writes the data, then sets
`recv_sync[slot][sender] = 1`; the receiver waits for every active peer's flag and clears them all; the slot
is `taskCount % 2`). A flag that lands after its op already ended on the receiver (a live peer taken for
failed) ends the receiver's next op in that slot at once, on the old data, and the lag then sustains itself:
each later op reads the previous one's data. Rank 0's answers lagged so (docs/known-issues.md, "Mooncake's
collectives can lag a step"). ZMQ messages are whole and in order per connection, and each carries its step
and sender: a late answer is recognised and dropped, never read as the current one. Mooncake still carries a
one-element broadcast from the output rank (`execution`), whose failure tells rank 0 that the output rank
died.

Wire format: two frames. The header, UTF-8 JSON of at most `HEADER_MAX` bytes: ``{"rank": int, "step":
int, "after": int, "ok": bool, "failed": [int], "rows": int, "hidden": int, "dtype": "float32"|"float64"}``
(``step`` -1 with ``after`` the last step it ran: the sender could not read this step's plan); then the
rows, C order, little-endian, ``rows x hidden`` values of ``dtype``. A malformed message is logged, counted
and dropped; it never stops rank 0's loop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import torch
import zmq

__all__ = [
    "ADDRESS_KEY",
    "HEADER_MAX",
    "Answer",
    "AnswerError",
    "AnswerInbox",
    "AnswerOutbox",
    "decode",
    "encode",
]

log = logging.getLogger(__name__)
ADDRESS_KEY = "eep/answer-address"
"""TCPStore key: ``tcp://host:port`` of rank 0's `AnswerInbox`."""
HEADER_MAX = 4096
"""Bytes a header may take (a world of 64 ranks named failed fits easily)."""
MAX_RANKS = 64
"""Mooncake's limit on one group's ranks: a failed rank outside [0, MAX_RANKS) is not one."""
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class AnswerError(ValueError):
    """A message that is not an answer (`decode`)."""


@dataclasses.dataclass(frozen=True)
class Answer:
    """One step's answer from the output rank."""

    rank: int
    """Global rank that sent it."""
    step: int
    """The step it answers; -1: the sender could not read the plan after step `after`."""
    after: int
    """The last step the sender ran before this one."""
    ok: bool
    """Every collective of the sender's step succeeded and its rows are finite."""
    failed: frozenset[int]
    """Global ranks the sender saw fail in this step."""
    rows: torch.Tensor
    """``[tokens, hidden]`` output rows of the batch (float32 or float64, on the host)."""

    def answers(self, step: int, source: int) -> bool:
        """Whether this is ``source``'s answer to ``step``: its result, or its word that it could not read a
        plan (only ever sent for a plan it could not read, so one makes this step untrusted, never wrong)."""
        return self.rank == source and self.step in (step, -1)


def encode(answer: Answer) -> list[bytes]:
    """The two frames of ``answer`` (module doc). Raises ValueError for rows other than 2-D float32/64."""
    rows = answer.rows
    names = {v: k for k, v in _DTYPES.items()}
    if rows.dim() != 2 or rows.dtype not in names:
        raise ValueError(f"rows must be 2-D float32 or float64, got {tuple(rows.shape)} {rows.dtype}")
    header = {
        "rank": answer.rank,
        "step": answer.step,
        "after": answer.after,
        "ok": answer.ok,
        "failed": sorted(answer.failed),
        "rows": rows.shape[0],
        "hidden": rows.shape[1],
        "dtype": names[rows.dtype],
    }
    return [json.dumps(header).encode(), rows.contiguous().numpy().tobytes()]


def _int(header: dict[str, Any], key: str, low: int) -> int:
    value = header.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise AnswerError(f"{key} must be an integer >= {low}, got {str(value)[:32]!r}")
    return value


def decode(frames: list[bytes], hidden: int) -> Answer:
    """The answer in ``frames``. Raises AnswerError when they are not one (framing, JSON, a field, a size, a
    hidden size other than ``hidden``)."""
    if len(frames) != 2 or len(frames[0]) > HEADER_MAX:
        raise AnswerError(f"expected 2 frames with a header of at most {HEADER_MAX} bytes")
    try:
        header = json.loads(frames[0])
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise AnswerError("header is not JSON") from e
    if not isinstance(header, dict):
        raise AnswerError("header must be a JSON object")
    rank, step, after = _int(header, "rank", 0), _int(header, "step", -1), _int(header, "after", 0)
    rows, width = _int(header, "rows", 0), _int(header, "hidden", 0)
    ok, failed, name = header.get("ok"), header.get("failed"), header.get("dtype")
    if not isinstance(ok, bool):
        raise AnswerError("ok must be a boolean")
    if not isinstance(failed, list) or not all(
        isinstance(r, int) and not isinstance(r, bool) and 0 <= r < MAX_RANKS for r in failed
    ):
        raise AnswerError(f"failed must be a list of ranks in [0, {MAX_RANKS})")
    if width != hidden or name not in _DTYPES:
        raise AnswerError(f"rows must be {hidden} wide, float32 or float64; got {width} {str(name)[:16]!r}")
    dtype = _DTYPES[name]
    expected = rows * width * dtype.itemsize
    if len(frames[1]) != expected:
        raise AnswerError(f"{rows}x{width} {name} rows need {expected} bytes, got {len(frames[1])}")
    data = torch.frombuffer(bytearray(frames[1]), dtype=dtype) if expected else torch.empty(0, dtype=dtype)
    return Answer(rank, step, after, ok, frozenset(failed), data.view(rows, width))


class AnswerInbox:
    """Rank 0's end: a PULL socket bound to a free port of ``host``. `close()` frees the port."""

    QUEUE = 16
    """Messages rank 0 queues before ZMQ holds back the senders (bounds its memory: each is at most
    ``max_rows x hidden x 8`` bytes)."""

    def __init__(self, host: str, *, hidden: int, max_rows: int) -> None:
        self.hidden = hidden
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PULL)
        self._sock.setsockopt(zmq.MAXMSGSIZE, max(HEADER_MAX, max_rows * hidden * 8))
        self._sock.setsockopt(zmq.RCVHWM, self.QUEUE)
        self._sock.setsockopt(zmq.LINGER, 0)
        self.address = f"tcp://{host}:{self._sock.bind_to_random_port(f'tcp://{host}')}"
        """``tcp://host:port`` the output ranks connect to (published as `ADDRESS_KEY`)."""
        self.dropped = 0
        """Answers of another step or from another rank, dropped."""
        self.malformed = 0
        """Messages that were not answers, dropped."""

    def take(self, step: int, source: int, timeout_s: float) -> Answer | None:
        """``source``'s answer to ``step`` (`Answer.answers`), waiting up to ``timeout_s`` seconds; None when
        none came in time. Every other message read meanwhile is dropped and counted."""
        deadline = time.monotonic() + timeout_s
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 and not self._sock.poll(0):
                return None
            if not self._sock.poll(max(left_ms, 0)):
                return None
            frames = self._sock.recv_multipart()
            try:
                answer = decode(frames, self.hidden)
            except AnswerError as e:
                self.malformed += 1
                log.warning("rank 0 step %d: a message that is not an answer, dropped: %s", step, e)
                continue
            if answer.answers(step, source):
                return answer
            self.dropped += 1
            log.warning(
                "rank 0 step %d: an answer of step %d (after %d) from rank %d dropped (awaiting rank %d's)",
                step,
                answer.step,
                answer.after,
                answer.rank,
                source,
            )

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()


class AnswerOutbox:
    """A serving rank's end: a PUSH socket connected to rank 0's inbox. Sends never block: with rank 0 gone
    or unreachable a full queue drops the answer (rank 0 then does not trust the step)."""

    QUEUE = 64
    """Answers queued towards an unreachable rank 0 before new ones are dropped (ZMQ's high-water mark,
    which it applies in batches: a small one drops answers while rank 0 reads them at its pace)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, self.QUEUE)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(address)

    def send(self, answer: Answer) -> bool:
        """Queue ``answer`` for rank 0; False when the queue was full (the answer is dropped)."""
        try:
            self._sock.send_multipart(encode(answer), flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning(
                "rank %d step %d: answer not sent, queue to %s full", answer.rank, answer.step, self.address
            )
            return False
        return True

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()
