"""The checking client and the request stream against a fake member 0 (tests/fakes/member0.py): every
outcome sorted into an answer, NoAnswer or WrongAnswer; the reference built from the served config."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from fakes.member0 import CONFIG, Member0

from eep_contract.wire import InferRequest
from eep_testkit.client import CheckingClient, NoAnswer, WrongAnswer, post_infer
from eep_testkit.ports import free_port
from eep_testkit.reference import ReferenceChecker, fetch_model_config, model_config_from_wire
from eep_testkit.stream import Stream, tokens_for
from eep_testkit.wait import WaitTimeout, wait_until


@pytest.fixture
def member0() -> Iterator[Member0]:
    fake = Member0()
    yield fake
    fake.close()


def test_model_config_from_wire() -> None:
    got = model_config_from_wire({"num_layers": 2, "dtype": "torch.float64"})
    assert got.num_layers == 2 and got.dtype == torch.float64
    with pytest.raises(ValueError, match="unknown model config fields"):
        model_config_from_wire({"layers": 2})
    with pytest.raises(ValueError, match="unknown dtype"):
        model_config_from_wire({"dtype": "float7"})


def test_the_reference_is_built_from_the_served_config(member0: Member0) -> None:
    assert fetch_model_config(member0.url) == CONFIG
    client = CheckingClient(member0.url)
    assert client.checker.config == CONFIG
    answer = client.infer([1, 2, 3])
    assert answer["request_id"] == "req-1" and answer["active_ranks"] == [0, 1] and answer["latency_s"] > 0
    assert len(answer["output"]) == 3 and client.answers == [answer]


@pytest.mark.parametrize(
    ("mode", "error", "match"),
    [
        ("wrong", WrongAnswer, "max_abs_error"),
        ("garbage", WrongAnswer, "not an InferReply"),
        ("other-id", WrongAnswer, "reply to 'someone-else'"),
        ("400", WrongAnswer, "HTTP 400"),
        ("503", NoAnswer, "HTTP 503"),
        ("drop", NoAnswer, "RemoteDisconnected|ConnectionReset|BadStatusLine"),
    ],
)
def test_every_bad_outcome_is_sorted(member0: Member0, mode: str, error: type[Exception], match: str) -> None:
    client = CheckingClient(member0.url)
    member0.mode = mode
    with pytest.raises(error, match=match):
        client.infer([5, 6])
    assert client.answers == []


def test_nothing_listening_is_no_answer() -> None:
    with pytest.raises(NoAnswer, match="ConnectionRefusedError"):
        post_infer(f"http://127.0.0.1:{free_port()}", InferRequest(request_id="r", tokens=[1]), 2)


def test_check_rows() -> None:
    checker = ReferenceChecker(CONFIG)
    prompts = checker.prompts(3, max_tokens=4)
    assert len(prompts) == 3 and all(1 <= len(p) <= 4 for p in prompts)
    right = checker.expected(prompts[0]).output
    assert checker.check_rows(prompts[0], right.tolist()) == (True, "")
    ok, detail = checker.check_rows(prompts[0], (right + 0.5).tolist())
    assert not ok and detail.startswith("max_abs_error=")
    ok, detail = checker.check_rows([1], "not rows")
    assert not ok and detail.startswith("unusable output")


def test_stream_records_answers_and_errors(member0: Member0) -> None:
    with Stream(CheckingClient(member0.url), pause_s=0.001) as stream:
        t = stream.wait_answer(lambda a: a["active_ranks"] == [0, 1], 10)
        assert stream.first_after(t, [0, 1], 10) >= t
        member0.mode = "wrong"
        wait_until(lambda: stream.errors, 10, "an error")
    assert stream.errors[0].startswith("WrongAnswer: wrong answer for")
    with pytest.raises(WaitTimeout, match="a matching answer"):
        stream.wait_answer(lambda a: False, 0.05)
    assert tokens_for(3) == [111, 122, 133, 144] and tokens_for(5) == [185]
