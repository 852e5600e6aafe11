"""Which of Mooncake's GPU collectives a rank process uses (`eep_contract.env.GpuCollectives`).

Mooncake reads its variable when each GPU group is created and, unset, picks its legacy collectives, which
stalled on the first collective after start-up on 2 H200s without RDMA (docs/known-issues.md). A member pod
rendered by the operator does not set it, so the worker sets it in every rank process (`Mooncake.configure`),
to its own default unless the template's env asks for another. Runs in a fresh interpreter with the
mooncake-cpu loader environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from eep_contract.env import GPU_COLLECTIVES_ENV
from eep_testkit.envfile import mooncake_cpu_env

CONFIGURE = textwrap.dedent(
    """
    import os, sys
    from eep_contract.env import GPU_COLLECTIVES_ENV, GpuCollectives
    from eep_worker.mooncake import Mooncake

    kwargs = {"gpu_collectives": GpuCollectives(sys.argv[1])} if sys.argv[1] else {}
    Mooncake().configure(host_ip="127.0.0.1", collective_timeout_s=0.5, reconcile_window_s=1.0, **kwargs)
    print("CHOSEN", os.environ.get(GPU_COLLECTIVES_ENV), flush=True)
    """
)


@pytest.mark.parametrize(("asked", "chosen"), [("", "new"), ("legacy", "legacy")])
def test_a_rank_process_tells_mooncake_which_gpu_collectives(asked: str, chosen: str) -> None:
    """Before: `configure` left it unset (printed `CHOSEN None`), so pods without it in their template ran the
    legacy collectives."""
    env = {k: v for k, v in {**os.environ, **mooncake_cpu_env()}.items() if k != GPU_COLLECTIVES_ENV}
    done = subprocess.run(
        [sys.executable, "-c", CONFIGURE, asked],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"CHOSEN {chosen}" in done.stdout


START = textwrap.dedent(
    """
    import os
    from eep_worker import rank as R
    from eep_worker.settings import parse

    class Box:
        def put(self, event):
            pass

    def configure(self, **kwargs):
        print("CONFIGURED", kwargs["gpu_collectives"].value, flush=True)
        raise SystemExit(0)

    R.Mooncake.configure = configure
    R.RankRuntime(parse(["serve"], os.environ), 0, Box(), None, rendezvous=None).start()
    """
)


@pytest.mark.parametrize(("asked", "chosen"), [(None, "new"), ("legacy", "legacy")])
def test_a_rank_configures_mooncake_with_the_settings_choice(asked: str | None, chosen: str) -> None:
    """The settings' choice reaches `configure` in `RankRuntime.start`, the rank's first Mooncake call."""
    env = {k: v for k, v in {**os.environ, **mooncake_cpu_env()}.items() if k != GPU_COLLECTIVES_ENV}
    if asked is not None:
        env[GPU_COLLECTIVES_ENV] = asked
    done = subprocess.run(
        [sys.executable, "-c", START], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"CONFIGURED {chosen}" in done.stdout
