"""The worker's window sizing and tail settings (`Settings.pause`): the contract's formula, as run."""

from __future__ import annotations

import pytest

from eep_contract.env import GPU_COLLECTIVES_ENV, DataPath, GpuCollectives, TuningEnv
from eep_contract.pause import recovery_pause
from eep_worker.settings import parse


def test_tail_and_device_timeouts_come_from_the_environment_and_flags() -> None:
    env = TuningEnv(layers=30, tail_timeout_s=0.005, device_timeout_s=0.05).to_env()
    s = parse(["serve", "--collective-timeout-s", "0.25", "--reconcile-window-s", "1"], env)
    assert (s.timeouts.tail_timeout_s, s.timeouts.device_timeout_s) == (0.005, 0.05)
    assert parse(["serve", "--tail-timeout-s", "0.001"], env).timeouts.tail_timeout_s == 0.001


@pytest.mark.parametrize(
    ("backend", "path", "device", "combine"),
    [
        ("mooncake-cpu", "Auto", "0", None),
        ("mooncake", "Staged", "0", None),
        ("mooncake", "Auto", "0", 0.25),
        ("mooncake", "Device", "0.05", 0.05),
    ],
)
def test_the_window_is_the_contract_formula(
    backend: str, path: str, device: str, combine: float | None
) -> None:
    s = parse(
        ["serve", "--backend", backend, "--data-path", path, "--collective-timeout-s", "0.25",
         "--reconcile-window-s", "1", "--layers", "61", "--device-timeout-s", device],
        {},
    )  # fmt: skip
    assert s.data_path is DataPath(path)
    assert s.combine_timeout_s == combine
    want = recovery_pause(
        layers=61, collective_timeout_s=0.25, reconcile_window_s=1.0, combine_timeout_s=combine
    )
    assert s.pause == want
    assert s.fence_window_s == want.window_s
    # The old sizing, (layers + 2) x collective timeout + 1 s, was 16.75 s here.
    if combine is None:
        assert s.fence_window_s < 2.0


def test_the_worker_chooses_mooncakes_v2_gpu_collectives_unless_told_otherwise() -> None:
    """Mooncake's own default, when its variable is unset, is its legacy GPU collectives, which stalled on
    the first served steps on 2 H200s without RDMA (docs/known-issues.md); a member pod rendered
    by the operator does not set the variable, so the worker's default decides."""
    gpu = ["serve", "--backend", "mooncake", "--data-path", "Device", "--collective-timeout-s", "0.25"]
    s = parse(gpu, {})
    assert s.gpu_collectives is GpuCollectives.NEW
    assert s.combine_timeout_s == 0.25
    legacy = parse(gpu, {GPU_COLLECTIVES_ENV: "legacy"})
    assert legacy.gpu_collectives is GpuCollectives.LEGACY
    assert (
        parse([*gpu, "--device-timeout-s", "0.01"], {GPU_COLLECTIVES_ENV: "legacy"}).combine_timeout_s == 0.25
    )
    with pytest.raises(SystemExit, match="MOONCAKE_PG_PREFERRED_GPU_COLLECTIVE_BACKEND='v3' is not a valid"):
        parse(gpu, {GPU_COLLECTIVES_ENV: "v3"})
