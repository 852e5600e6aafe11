"""The recovery-pause formula (`eep_contract.pause`), shared by the worker's window and the operator."""

from __future__ import annotations

import pytest

from eep_contract.pause import (
    DEFAULT_TAIL_TIMEOUT_S,
    PROBE_S,
    WINDOW_MARGIN_S,
    combine_timeout,
    recovery_pause,
)


def test_the_bound_grows_by_the_tail_per_layer_not_by_the_timeout() -> None:
    shallow = recovery_pause(layers=4, collective_timeout_s=10.0, reconcile_window_s=1.0)
    deep = recovery_pause(layers=61, collective_timeout_s=10.0, reconcile_window_s=1.0)
    per_layer = (deep.pause_s - shallow.pause_s) / (61 - 4)
    assert per_layer == pytest.approx(DEFAULT_TAIL_TIMEOUT_S + PROBE_S)
    # The example: DeepSeek-V3, 61 layers, collectiveTimeoutSeconds 10: the window was 631 s.
    assert deep.window_s < 2 * 10.0 + 1.0 + 1.0 < (61 + 2) * 10.0 + 1.0


@pytest.mark.parametrize(
    ("layers", "timeout", "window", "raised"),
    [(4, 0.25, 2.5, False), (61, 0.25, 1.0, True), (16, 0.5, 1.0, True), (0, 0.1, 0.5, True)],
)
def test_window_outlasts_the_way_to_the_fence(
    layers: int, timeout: float, window: float, raised: bool
) -> None:
    p = recovery_pause(layers=layers, collective_timeout_s=timeout, reconcile_window_s=window)
    after = DEFAULT_TAIL_TIMEOUT_S + PROBE_S
    assert p.to_fence_s == pytest.approx(2 * timeout + (layers + 2) * after)
    assert p.window_s >= p.to_fence_s + WINDOW_MARGIN_S
    assert p.window_s >= window
    assert p.raised is raised
    assert p.pause_s == pytest.approx(timeout + p.window_s)
    assert p.detection_s == pytest.approx(timeout + (layers + 1) * after)


def test_device_combines_keep_their_own_timeout() -> None:
    cpu = recovery_pause(layers=30, collective_timeout_s=0.25, reconcile_window_s=1.0)
    gpu = recovery_pause(layers=30, collective_timeout_s=0.25, reconcile_window_s=1.0, combine_timeout_s=0.25)
    assert gpu.to_fence_s - cpu.to_fence_s == pytest.approx(30 * (0.25 - DEFAULT_TAIL_TIMEOUT_S))


@pytest.mark.parametrize(
    ("backend", "path", "device", "collectives", "expected"),
    [
        ("mooncake-cpu", "Auto", 0.0, "new", None),
        ("mooncake", "Staged", 0.0, "new", None),
        ("mooncake", "Auto", 0.0, "new", 0.5),
        ("mooncake", "Device", 0.05, "new", 0.05),
        # Mooncake's legacy GPU collectives: the live timeout (device combines are not checked, so no tail);
        # the device groups' creation-time timeout does not apply to them.
        ("mooncake", "Device", 0.05, "legacy", 0.5),
        ("mooncake", "Staged", 0.05, "legacy", None),
    ],
)
def test_which_combines_the_tail_reaches(
    backend: str, path: str, device: float, collectives: str, expected: float | None
) -> None:
    got = combine_timeout(
        backend=backend,
        data_path=path,
        collective_timeout_s=0.5,
        device_timeout_s=device,
        gpu_collectives=collectives,
    )
    assert got == expected


@pytest.mark.parametrize("bad", [{"layers": -1}, {"collective_timeout_s": 0.0}, {"tail_timeout_s": 0.0}])
def test_bad_input_is_refused(bad: dict[str, float]) -> None:
    args = {"layers": 4, "collective_timeout_s": 1.0, "reconcile_window_s": 1.0, **bad}
    with pytest.raises(ValueError):
        recovery_pause(**args)  # type: ignore[arg-type]
