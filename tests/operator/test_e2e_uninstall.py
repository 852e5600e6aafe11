"""End to end: ElasticEPClusters stay deletable without the operator (issue #13, scenario 9).

kopf puts its finalizer on every CR that a handler needing one serves (a timer, a daemon, a mandatory
`on.delete`); with the operator gone (`helm uninstall`), nobody removes it and `kubectl delete` hangs.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Eep, Operators
from test_e2e_recovery import wait_running

from eep_contract.v1alpha1 import GROUP, PLURAL, VERSION

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

OTHER = "example.com/keep-me"
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"  # what older versions left (test_handlers checks it)


def _finalizers(eep: Eep, name: str) -> list[str]:
    return list(eep.cr(name)["metadata"].get("finalizers") or [])


def _gone(eep: Eep, name: str) -> bool:
    items = eep.custom.list_namespaced_custom_object(GROUP, VERSION, eep.ns, PLURAL)["items"]
    return all(cr["metadata"]["name"] != name for cr in items)


def test_delete_completes_after_the_operator_stopped(
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any
) -> None:
    """Before the fix: "timed out after 10s waiting for <lambda> / finalizers:
    ['kopf.zalando.org/KopfFinalizerMarker']" (the deletion hung on kopf's finalizer)."""
    op = operators.start()
    name = make_cluster(nodes=2)
    wait_running(eep, wait_for, name, operators)
    assert eep.pods(name)
    op.stop()
    assert op.proc.returncode is not None
    eep.custom.delete_namespaced_custom_object(GROUP, VERSION, eep.ns, PLURAL, name)
    wait_for(lambda: _gone(eep, name), 10, lambda: f"finalizers: {_finalizers(eep, name)}")
    # Its pods follow through their owner references (the garbage collector, not the operator).
    wait_for(lambda: not eep.pods(name), 60, lambda: eep.describe(name))


def test_start_removes_the_finalizer_an_older_version_left(
    eep: Eep, operators: Operators, make_cluster: Any, wait_for: Any
) -> None:
    """Before the fix (its own timer needed the finalizer): "timed out after 30s waiting for <lambda> /
    ['example.com/keep-me', 'kopf.zalando.org/KopfFinalizerMarker']"."""
    name = make_cluster(nodes=2)
    # As an older operator (kopf timer) left it, beside someone else's finalizer that must stay.
    eep.custom.patch_namespaced_custom_object(
        GROUP, VERSION, eep.ns, PLURAL, name, {"metadata": {"finalizers": [OTHER, KOPF_FINALIZER]}}
    )
    assert _finalizers(eep, name) == [OTHER, KOPF_FINALIZER]
    operators.start()
    try:
        wait_for(
            lambda: _finalizers(eep, name) == [OTHER],
            30,
            lambda: f"{_finalizers(eep, name)}\n{operators.logs()}",
        )
        wait_running(eep, wait_for, name, operators)
    finally:
        eep.custom.patch_namespaced_custom_object(
            GROUP, VERSION, eep.ns, PLURAL, name, {"metadata": {"finalizers": None}}
        )
