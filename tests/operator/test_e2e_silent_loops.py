"""End to end: a pod create the API server refuses for good is reported, not retried in silence.

Issue #13, scenario 13 ("silent loops"): every ElasticEPCluster the API server accepts either runs or says
why, on its status and in an Event, within seconds, and retries at a growing interval. Two refusals that
hardened clusters produce every day, through the admission plugins of the local API server
(`eep_localcluster.controlplane.ADMISSION_PLUGINS`):

- a namespace ResourceQuota `pods: "1"`: the 2nd member pod is refused, 403 "exceeded quota";
- a namespace enforcing Pod Security `restricted`: every member pod is refused, 403 "violates PodSecurity".

Each test then removes the cause and expects the cluster to reach Running and `Stalled` to go False.

Create attempts are counted where they land: the API server's own count of requests its admission plugin
refused (`apiserver_admission_controller_admission_duration_seconds_count{name=<plugin>,rejected="true"}`,
sampled every 0.25 s), so neither the operator's log format nor its log level decides the count.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import Eep, Operators
from kubernetes import client

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

FIRST_CREATE_WITHIN_S = 60.0
"""The operator (a fresh subprocess on a busy machine) tries its first create within this after the CR."""
REPORT_WITHIN_S = 10.0
"""The Event and the Stalled condition are there this long after the first refused create."""
OBSERVE_S = 20.0
"""How long the create attempts are counted, from the first refused create."""
MAX_ATTEMPTS = 8
"""Attempts allowed in `OBSERVE_S`: 0.5 s doubling to 4 s makes 8; before the fix there were 12 to 16 in the
first 10 s (every reconcile retried at once: the 1 s error requeue, the resync timer, pod events)."""
RECOVER_WITHIN_S = 90.0
"""After the cause is gone: the next retry (at most the retry interval's cap away) plus the start."""

WaitFor = Callable[..., Any]

STALLED = "Stalled"
"""`eep_contract.v1alpha1.ConditionType.STALLED`, spelled out: the test runs on older contracts too."""


def refused_creates(api: Any, plugin: str) -> float:
    """How many requests `plugin` refused since the API server started (all namespaces; only this test's
    operator creates pods while it runs)."""
    response = api.call_api("GET", api.configuration.host + "/metrics")
    response.read()
    text = response.data.decode()
    pattern = (
        r'^apiserver_admission_controller_admission_duration_seconds_count\{name="'
        + re.escape(plugin)
        + r'",operation="CREATE",rejected="true",type="validate"\} (\S+)$'
    )
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.MULTILINE))


@dataclass
class Attempts:
    """Times (seconds since the first refused create) at which the refused-create count went up, one entry
    per refusal."""

    times: list[float]

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]


def stalled(status: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c.get("type") == STALLED), None)


def watch_refusals(
    eep: Eep,
    kube: Any,
    ops: Operators,
    name: str,
    *,
    plugin: str,
    pod: str,
    api_reason: str,
) -> Attempts:
    """From the first refused create for `OBSERVE_S`: sample the refused creates; by `REPORT_WITHIN_S` require
    a Warning Event and a `Stalled=True` condition that both name `pod` and quote `api_reason`. Counting
    starts at the first refusal, not at the CR, so that a slow operator start-up does not count."""
    base = refused_creates(kube, plugin)
    deadline = time.monotonic() + FIRST_CREATE_WITHIN_S
    while (seen := refused_creates(kube, plugin)) == base:
        if time.monotonic() > deadline:
            pytest.fail(f"no pod create refused {FIRST_CREATE_WITHIN_S:g}s after the CR\n{ops.logs()}")
        time.sleep(0.1)
    t0 = time.monotonic()
    times = [0.0] * int(seen - base)
    reported = False
    while (now := time.monotonic() - t0) < OBSERVE_S:
        count = refused_creates(kube, plugin)
        times += [now] * int(count - seen)
        seen = count
        if not reported:
            warned = [
                e
                for e in eep.events(name)
                if e.get("type") == "Warning" and pod in e.get("message", "") and api_reason in e["message"]
            ]
            cond = stalled(eep.status(name))
            reported = bool(
                warned
                and cond is not None
                and cond.get("status") == "True"
                and pod in cond.get("message", "")
                and api_reason in cond["message"]
            )
            if not reported and now > REPORT_WITHIN_S:
                phase = eep.status(name).get("phase")
                events = [(e.get("type"), e.get("reason"), e.get("message")) for e in eep.events(name)]
                pytest.fail(
                    f"no report {REPORT_WITHIN_S:g}s after the first refusal: phase {phase}, Warning Events "
                    f"naming {pod} with {api_reason!r}: {len(warned)}, Stalled: {cond}; "
                    f"{len(times)} refused creates; events: {events}\n{eep.describe(name)}\n{ops.logs()}"
                )
        time.sleep(0.25)
    return Attempts(times)


def check_backoff(attempts: Attempts, ops: Operators) -> None:
    """Few attempts, and the interval between them grows."""
    detail = f"attempts at {[round(t, 1) for t in attempts.times]} s\n{ops.logs()}"
    assert 2 <= len(attempts.times) <= MAX_ATTEMPTS, detail
    gaps = attempts.gaps
    assert gaps[-1] >= 2.0 and gaps[-1] >= 2 * gaps[0], detail


def wait_recovered(eep: Eep, wait_for: WaitFor, ops: Operators, name: str) -> None:
    def recovered() -> bool:
        cond = stalled(eep.status(name))
        return eep.running(name) and cond is not None and cond.get("status") == "False"

    wait_for(recovered, RECOVER_WITHIN_S, lambda: eep.describe(name) + "\n" + ops.logs())


def test_a_pod_refused_by_a_resource_quota_is_reported_and_retried_less_often(
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: WaitFor, kube: Any
) -> None:
    """Before the fix: "Failed: no report 10s after the first refusal: phase Restarting, Warning Events naming
    eep-1 with 'exceeded quota': 0, Stalled: None; 12 refused creates"; the operator logged "reconcile failed:
    403 Forbidden: ... exceeded quota" on every reconcile, took the refused pod for a lost one
    ("MemberPodDeleted: ... pod eep-1 is gone before it was seen") and restarted the whole group."""
    core: Any = client.CoreV1Api(kube)
    namespace = eep.ns
    core.create_namespaced_resource_quota(
        namespace, {"metadata": {"name": "one-pod"}, "spec": {"hard": {"pods": "1"}}}
    )
    # Until the quota controller has counted, the quota refuses every pod ("status unknown for quota").
    wait_for(lambda: core.read_namespaced_resource_quota("one-pod", namespace).status.hard["pods"] == "1", 30)
    operators.start()
    name = make_cluster(nodes=2)
    attempts = watch_refusals(
        eep, kube, operators, name, plugin="ResourceQuota", pod=f"{name}-1", api_reason="exceeded quota"
    )
    check_backoff(attempts, operators)

    core.delete_namespaced_resource_quota("one-pod", namespace)
    wait_recovered(eep, wait_for, operators, name)


def test_pods_refused_by_pod_security_are_reported_and_retried_less_often(
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: WaitFor, kube: Any
) -> None:
    """Before the fix: "Failed: no report 10s after the first refusal: phase Pending, Warning Events naming
    eep-0 with 'violates PodSecurity': 0, Stalled: None; 16 refused creates; events: [('Normal',
    'GroupCreating', 'creating 2 member pods (world size 4)')]": the refusals only in the operator's log."""
    core: Any = client.CoreV1Api(kube)
    namespace = eep.ns
    enforce = "pod-security.kubernetes.io/enforce"
    core.patch_namespace(namespace, {"metadata": {"labels": {enforce: "restricted"}}})
    operators.start()
    name = make_cluster(nodes=2)
    attempts = watch_refusals(
        eep, kube, operators, name, plugin="PodSecurity", pod=f"{name}-0", api_reason="violates PodSecurity"
    )
    check_backoff(attempts, operators)

    # The stand-in's pods ask for nothing `privileged` would refuse; GPU members need it (IPC_LOCK).
    core.patch_namespace(namespace, {"metadata": {"labels": {enforce: "privileged"}}})
    wait_recovered(eep, wait_for, operators, name)
