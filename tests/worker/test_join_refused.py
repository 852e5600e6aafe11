"""A joiner whose registration Mooncake keeps refusing exits with `ExitCode.JOIN_REFUSED` (issue 13, #12).

The rule (`admission.registration_refused`) is a table over the errors a group's creation raises; the wiring
(`rank.RankRuntime.start`) runs in a fresh interpreter with the mooncake-cpu loader environment, its group
creation replaced by one that raises Mooncake's error, and must end the process with code 9 after reporting
`Exiting` (a fresh start keeps the generic path: the error propagates).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from eep_contract.env import MemberEnv
from eep_contract.exitcodes import ExitCode
from eep_testkit.envfile import mooncake_cpu_env
from eep_worker.admission import REGISTRATION_TIMEOUT, registration_refused

MEASURED = "mooncakePgCommCreate failed: operation timed out: timed out waiting for agent registration"
"""The text `dist.init_process_group` raised on mooncake-cpu 0.3.13.post1 after 30 s of refused registrations
(a second joiner of rank 1 while the first one still waited in `join_group`)."""


@pytest.mark.parametrize(
    ("error", "rejoin", "refused"),
    [
        (RuntimeError(MEASURED), True, True),
        (RuntimeError(MEASURED), False, False),  # a fresh start has no earlier incarnation
        (RuntimeError("mooncakePgCommCreate failed: operation timed out: group not ready"), True, False),
        (RuntimeError("Connection refused"), True, False),
        (TimeoutError(REGISTRATION_TIMEOUT), True, False),  # not what Mooncake raises
        (ValueError(MEASURED), True, False),
    ],
)
def test_only_a_joiners_registration_timeout_is_a_refusal(
    error: BaseException, rejoin: bool, refused: bool
) -> None:
    assert registration_refused(error, rejoin=rejoin) is refused


SCRIPT = textwrap.dedent(
    """
    import sys
    from eep_worker import rank as R
    from eep_worker.settings import parse

    class Store:
        def __init__(self, *a, **k): pass

    class Box:
        def put(self, event):
            print("EVENT", type(event).__name__, getattr(event, "code", None), flush=True)

    def refused(*a, **k):
        raise RuntimeError(sys.argv[2])

    R.dist.TCPStore = Store
    R.GroupRegistry.create = refused
    R.Mooncake.configure = lambda self, **k: None
    argv = ["serve", "--rejoin"] if sys.argv[1] == "rejoin" else ["serve"]
    rt = R.RankRuntime(parse(argv, {}), 1, Box(), None, rendezvous=None)
    try:
        rt.start()
    except RuntimeError as e:
        print("RAISED", e, flush=True)
        sys.exit(42)
    """
)


def _start(mode: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **mooncake_cpu_env()}
    env.update(
        MemberEnv(
            namespace="local",
            cluster="unit",
            member_index=1,
            first_rank=1,
            rank_count=1,
            world_size=2,
            coordinator_addr="127.0.0.1:1",
            backend="mooncake-cpu",
            collective_timeout_s=0.5,
            reconcile_window_s=1.0,
            http_port=0,
        ).to_env()
    )
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, MEASURED],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.mark.mooncake
def test_a_refused_joiner_exits_join_refused() -> None:
    done = _start("rejoin")
    assert done.returncode == ExitCode.JOIN_REFUSED, done.stdout + done.stderr
    assert f"EVENT Exiting {int(ExitCode.JOIN_REFUSED)}" in done.stdout, done.stdout + done.stderr


@pytest.mark.mooncake
def test_a_fresh_rank_keeps_the_generic_failure() -> None:
    done = _start("fresh")
    assert done.returncode == 42, done.stdout + done.stderr
    assert "EVENT Exiting" not in done.stdout
