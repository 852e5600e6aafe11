"""A dedicated coordinator on the local control plane (issue #19): the chart's operator, the CPU example with
`elasticEP.coordinator: Dedicated` and the real worker on mooncake-cpu. Member 0's pod is rank 0 alone (the
coordinator, the store, the planner: it serves nothing); members 1 and 2 serve. Each serving member is
SIGKILLed under load in turn (member 1 holds rank 1, whose output answers every step): the others keep
answering, the operator recreates only the lost member's pod with the join flag, it rejoins, and not one
answer is wrong or lost; member 0 never restarts.

Before: the CR was refused (`elasticEP.coordinator` unknown), and losing member 0, the only member that
holds the coordinator, is a whole-group restart in today's layout.
"""

from __future__ import annotations

from typing import Any

import pytest

from eep_demo import scenario
from eep_demo.client import ClientSettings
from eep_demo.scenario import DemoContext
from eep_testkit import crs

pytestmark = [pytest.mark.cluster, pytest.mark.mooncake, pytest.mark.timeout(900)]

NAME = "dedicated"


def dedicated_cluster() -> dict[str, Any]:
    cr = crs.from_example(NAME, nodes=2)
    cr["spec"]["elasticEP"]["coordinator"] = "Dedicated"
    cr["spec"]["elasticEP"]["coordinatorRequests"] = {"cpu": "100m", "memory": "256Mi"}
    return cr


@pytest.mark.mooncake_faults
def test_every_serving_member_is_recovered_in_place(ctx: DemoContext) -> None:
    scenario.install_operator(ctx, ctx.namespace)
    scenario.apply_cluster(ctx, dedicated_cluster())
    scenario.wait_ready(ctx, NAME, 240)
    cr = ctx.kube.get_cr(ctx.namespace, NAME)
    assert cr is not None
    status = cr["status"]
    assert status["worldSize"] == 3 and len(status["members"]) == 3, status
    assert [(m["firstRank"], m["rankCount"]) for m in status["members"]] == [(0, 1), (1, 1), (2, 1)]
    pod0 = ctx.kube.core.read_namespaced_pod(f"{NAME}-0", ctx.namespace)
    engine = next(c for c in pod0.spec.containers if c.name == "engine")
    assert engine.resources.requests == {"cpu": "100m", "memory": "256Mi"}, engine.resources
    for member in (1, 2):
        result = scenario.run_failure(
            ctx,
            NAME,
            member=member,
            warmup_s=3,
            recovery_timeout_s=180,
            settle_s=2,
            drain_s=30,
            client_settings=ClientSettings(concurrency=2, pace_s=0.05),
        )
        m = result.metrics
        print(member, m.as_dict())
        assert result.killed_pids, "no process was killed"
        assert m.requests.wrong == 0, result.wrong_details
        assert m.requests.failed == 0
        assert m.requests.ok > 0 and not result.epoch_regressions
        assert not any(s.phase == "Restarting" for s in result.samples), "a whole-group restart happened"
        uids = {mi.pod_uid for s in result.samples if (mi := s.member(member)) is not None}
        assert len(uids) >= 2, f"member {member} was not replaced"
        restarts = {mi.restarts for s in result.samples if (mi := s.member(0)) is not None}
        assert restarts == {0}, f"the coordinator restarted: {restarts}"
