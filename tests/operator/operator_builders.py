"""Small builders for specs, pods and observations in the operator's unit tests."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from operator_sim import NAME, NS, T0, UID

from eep_contract.v1alpha1 import ElasticEPClusterSpec
from eep_operator.core.observe import NodeObs, Observed, PodObs, Termination


def make_spec(nodes: int = 4, rpn: int = 2, **recovery: Any) -> ElasticEPClusterSpec:
    rec = {
        "backoffInitialSeconds": 1.0,
        "backoffMaxSeconds": 8.0,
        "maxRestartsPerMember": 3,
        "restartWindowSeconds": 600.0,
        "rejoinTimeoutSeconds": 60.0,
        "maxUnavailableMembers": 1,
        "terminatingTimeoutSeconds": 10.0,
    }
    rec.update(recovery)
    return ElasticEPClusterSpec.model_validate(
        {"image": "img", "nodes": nodes, "ranksPerNode": rpn, "recovery": rec}
    )


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def pod(
    member: int,
    incarnation: int = 1,
    *,
    join: bool = False,
    ready: bool = True,
    running: bool = True,
    phase: str = "Running",
    uid: str | None = None,
    node: str | None = "n0",
    created: datetime | None = None,
    **kw: Any,
) -> PodObs:
    return PodObs(
        name=f"{NAME}-{member}",
        uid=uid or f"uid-{member}-{incarnation}",
        member=member,
        incarnation=incarnation,
        join=join,
        phase=phase,
        ready=ready,
        running=running,
        node=node,
        created=created or T0,
        **kw,
    )


def exited(p: PodObs, code: int = 137, reason: str = "Error", message: str = "boom") -> PodObs:
    return replace(
        p, phase="Failed", running=False, ready=False, terminated=Termination(code, reason, message)
    )


def observed(
    *pods: PodObs, nodes: dict[str, bool] | None = None, service: bool = True, gen: int = 1
) -> Observed:
    nodes = nodes if nodes is not None else {"n0": True, "n1": True}
    return Observed(
        name=NAME,
        namespace=NS,
        uid=UID,
        generation=gen,
        pods=tuple(pods),
        nodes={n: NodeObs(n, r) for n, r in nodes.items()},
        service_exists=service,
    )
