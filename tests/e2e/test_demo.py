"""`make demo`'s scenario in `make test`: chart-installed operator, the CPU example with the real worker on
mooncake-cpu, a client checking every answer, SIGKILL of a non-zero member, recovery to full capacity, and the
rank-failure alert firing and resolving in a real Prometheus. Shorter timings than the demo.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from eep_demo import scenario
from eep_demo.client import ClientSettings
from eep_demo.scenario import DemoContext
from eep_testkit import crs

pytestmark = [pytest.mark.cluster, pytest.mark.mooncake, pytest.mark.timeout(900)]

NAME = "demo"


def test_chart_operator_brings_real_workers_to_serving(ctx: DemoContext) -> None:
    """The product without a fault: the chart's operator creates the CPU example's pods, the real workers
    (mooncake-cpu) form the group and report Ready, the CR reaches Running with every rank active, and a
    client's answers all match the float64 reference."""
    scenario.install_operator(ctx, ctx.namespace)
    scenario.apply_cluster(ctx, crs.from_example(NAME))
    scenario.wait_ready(ctx, NAME, 240)
    cr = ctx.kube.get_cr(ctx.namespace, NAME)
    assert cr is not None
    status = cr["status"]
    assert status["phase"] == "Running", status
    assert status["membership"]["activeRanks"] == list(range(status["worldSize"])), status
    client, sampler = scenario.start_load(ctx, NAME, ClientSettings(), 0.5)
    try:
        deadline = time.monotonic() + 60
        while client.snapshot()["ok"] < 20 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        client.stop(drain_s=30)
        sampler.stop()
    counts = client.snapshot()
    assert counts["ok"] >= 20, (counts, client.last_error())
    assert counts["wrong"] == 0, client.last_error()


# Also in `make test-recovery` (the rank-kill tests alone).
@pytest.mark.mooncake_faults
def test_member_killed_under_load_recovers_with_no_lost_or_wrong_answer(
    ctx: DemoContext, tmp_path: Path
) -> None:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus missing: run `make tools`")
    release = ctx.namespace
    scenario.install_operator(ctx, release)
    prom = scenario.start_prometheus(ctx, release, tmp_path / "prometheus", "20s")
    try:
        scenario.apply_cluster(ctx, crs.from_example(NAME))
        scenario.wait_ready(ctx, NAME, 240)
        watchers: list[scenario.AlertWatcher] = []

        def watch_alert(kill_t: float) -> None:
            watchers.append(scenario.AlertWatcher(prom, ctx.namespace, NAME, kill_t))
            watchers[0].start()

        result = scenario.run_failure(
            ctx,
            NAME,
            member=2,
            warmup_s=3,
            recovery_timeout_s=180,
            settle_s=2,
            drain_s=30,
            client_settings=ClientSettings(concurrency=2, pace_s=0.05),
            on_kill=watch_alert,
        )
        m = result.metrics
        print(m.as_dict())
        assert result.killed_pids, "no process was killed"
        assert m.requests.wrong == 0, result.wrong_details
        assert m.requests.failed == 0
        assert m.requests.ok > 0 and not result.epoch_regressions
        assert m.detect_s is not None and m.full_s is not None and m.resume_s is not None
        assert 0 < m.detect_s <= m.full_s
        # Per-member recovery: the killed member's ranks are what is missing, never the whole world.
        group_restart = any(s.phase == "Restarting" for s in result.samples)
        assert not group_restart, "a whole-group restart happened: the per-member recovery did not complete"
        assert m.capacity_lost_rank_s is not None and m.capacity_lost_rank_s <= m.full_s + 1
        uids = {m2.pod_uid for s in result.samples if (m2 := s.member(2)) is not None}
        assert len(uids) >= 2, "member 2 was not replaced"
        for i in (0, 1, 3):
            restarts = {mi.restarts for s in result.samples if (mi := s.member(i)) is not None}
            assert restarts == {0}, f"member {i} restarted: {restarts}"

        alert = scenario.alert_cycle(ctx, watchers[0], NAME, timeout_s=150)
        assert alert.ok(), alert
        assert alert.failures_counter >= 1
    finally:
        prom.stop()
