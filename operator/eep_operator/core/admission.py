"""Whether member 0 of an SGLang cluster needs prodding so its survivors admit a joining replacement. Pure.

SGLang's survivors look for joiners only at the end of a forward pass (docs/sglang.md, "Admission"): with no
traffic a replacement waits in `join_group` until it gives up, and the operator then sees a join timeout. So
while a member is Joining, small generation requests go to member 0 (`engine.sglang.admissionTrigger`).
`admission_target` decides whether, where and how; `eep_operator.io.admission` sends them. Called by
`eep_operator.reconcile` after every plan, with the status the plan wrote.

Why a standing target rather than a planner action per reconcile: reconciles follow events (many a second
during a recovery, then none until the resync timer) and one generation request may last as long as the
admission it triggers. A background sender per cluster keeps a steady, bounded pace (one request in flight,
one start per interval) without blocking a reconcile thread and without keeping send times in the status;
the reconcile only says, level-triggered, which target should exist now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from eep_contract.v1alpha1 import (
    ElasticEPClusterSpec,
    ElasticEPClusterStatus,
    EngineName,
    MemberState,
    MemberStatus,
    Phase,
)
from eep_operator.core.observe import Observed, PodObs


@dataclass(frozen=True)
class AdmissionTarget:
    """Requests to send while one set of replacements joins. A different value means a different job."""

    url: str
    """`http://<member 0's pod IP>:<engine.port><path>`."""
    body: bytes = b""
    """The JSON body of every request."""
    interval_s: float = 2.0
    """Seconds between the starts of two requests (one is in flight at a time)."""
    timeout_s: float = 30.0
    """Seconds one request may take."""
    max_s: float = 600.0
    """Seconds after which the sender stops by itself (`recovery.rejoinTimeoutSeconds`: by then the planner
    has declared the join timed out): a safety net for an operator that stopped reconciling."""
    joiners: tuple[str, ...] = ()
    """Uids of the joining pods: a new replacement is a new target, whose sender starts afresh."""


def _current_pod(observed: Observed, m: MemberStatus) -> PodObs | None:
    pods = [p for p in observed.pods_of(m.index) if p.incarnation == m.incarnation]
    return pods[-1] if pods else None


def admission_target(
    spec: ElasticEPClusterSpec, status: ElasticEPClusterStatus, observed: Observed
) -> AdmissionTarget | None:
    """The requests that should be going out now; None when none should (not SGLang, trigger disabled, no
    member Joining, or member 0 not Healthy with a running pod that has an IP)."""
    sg = spec.engine.sglang
    if spec.engine.name != EngineName.SGLANG or sg is None or not sg.admission_trigger.enabled:
        return None
    if status.phase == Phase.FAILED:
        return None
    joining = [m for m in status.members if m.state == MemberState.JOINING]
    leader = next((m for m in status.members if m.index == 0), None)
    if not joining or leader is None or leader.state != MemberState.HEALTHY:
        return None
    pod = _current_pod(observed, leader)
    if pod is None or pod.ip is None or pod.deleting or not (pod.running or pod.phase == "Running"):
        return None
    trigger = sg.admission_trigger
    host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
    uids = []
    for m in joining:
        joiner = _current_pod(observed, m)
        uids.append(joiner.uid if joiner is not None else (m.pod_uid or f"member-{m.index}"))
    return AdmissionTarget(
        url=f"http://{host}:{spec.engine.port}{trigger.path}",
        body=json.dumps(trigger.body, separators=(",", ":"), sort_keys=True).encode(),
        interval_s=trigger.interval_seconds,
        timeout_s=trigger.timeout_seconds,
        max_s=spec.recovery.rejoin_timeout_seconds,
        joiners=tuple(sorted(uids)),
    )
