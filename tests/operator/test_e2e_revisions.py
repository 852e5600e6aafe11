"""End to end: a spec edited during a recovery (issue #13, scenario 6).

Patching a field the running group was started with (here the template's pod annotations and
`elasticEP.coordinatorPort`) while a member waits in backoff used to give a replacement rendered from the new
spec, which cannot join the group that runs the old one; the Service kept its first ports forever. Before the
fix (base 0076d16): `AssertionError: the replacement runs the edited spec: ['X']` for the first test.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Eep, Operators
from test_e2e_recovery import wait_running

from eep_contract.v1alpha1 import GROUP, PLURAL, VERSION

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def _env_names(pod: dict[str, Any]) -> list[str]:
    """["X"] when the pod carries the edited template's annotation (an edit of `spec.template`)."""
    return ["X"] if (pod["metadata"].get("annotations") or {}).get("example.com/x") == "1" else []


def _service_ports(eep: Eep, name: str) -> set[int]:
    svc = eep.core.read_namespaced_service(name, eep.ns)
    return {p.port for p in svc.spec.ports}


def _patch(eep: Eep, name: str, spec: dict[str, Any]) -> None:
    eep.custom.patch_namespaced_custom_object(GROUP, VERSION, eep.ns, PLURAL, name, {"spec": spec})


def test_a_replacement_keeps_the_groups_revision_until_a_group_restart(
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any
) -> None:
    operators.start()
    name = make_cluster(backoffInitialSeconds=6, backoffMaxSeconds=8)
    wait_running(eep, wait_for, name, operators)
    port = eep.cr(name)["spec"]["elasticEP"]["coordinatorPort"]
    assert port in _service_ports(eep, name)
    old = eep.exit_member(name, 1)
    wait_for(lambda: eep.member(name, 1).get("state") == "Failed", 20, lambda: eep.describe(name))
    _patch(
        eep,
        name,
        {
            "template": {"metadata": {"annotations": {"example.com/x": "1"}}},
            "elasticEP": {"coordinatorPort": port + 1},
        },
    )
    wait_for(
        lambda: eep.running(name) and eep.member(name, 1).get("podUid") not in (None, old),
        60,
        lambda: eep.describe(name) + operators.logs(),
    )
    replacement = eep.pod(name, 1)
    assert replacement is not None
    assert not _env_names(replacement), f"the replacement runs the edited spec: {_env_names(replacement)}"
    st = eep.status(name)
    pending = next(c for c in st["conditions"] if c["type"] == "UpdatePending")
    assert pending["status"] == "True" and "coordinatorPort" in pending["message"], pending
    assert st["members"][1]["revision"] == st["groupRevision"] != st["updateRevision"]
    assert "SpecChangePending" in eep.reasons(name)
    assert port in _service_ports(eep, name)  # the group still listens there
    # The user applies the update: one group restart, no budget spent.
    _patch(eep, name, {"restartGeneration": 1})
    wait_for(
        lambda: eep.running(name) and eep.status(name)["groupRevision"] == eep.status(name)["updateRevision"],
        90,
        lambda: eep.describe(name) + operators.logs(),
    )
    assert all(_env_names(p) == ["X"] for p in eep.pods(name))
    st = eep.status(name)
    assert (
        st["groupRestarts"] == 1 and st["groupRestartTimes"] in ([], None)
    ) or "groupRestartTimes" not in st
    assert next(c for c in st["conditions"] if c["type"] == "UpdatePending")["status"] == "False"
    wait_for(lambda: port + 1 in _service_ports(eep, name), 40, lambda: eep.describe(name))
