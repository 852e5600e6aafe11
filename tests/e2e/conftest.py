"""The end-to-end tests' demo context: the demo's own steps (`eep_demo.scenario`) on the session's local
control plane, in the test's namespace."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from eep_demo import scenario
from eep_demo.cluster import Kube
from eep_demo.live import LogView
from eep_demo.scenario import DemoContext


@pytest.fixture
def ctx(local_cluster: Any, namespace: str, request: pytest.FixtureRequest) -> Iterator[DemoContext]:
    """A `DemoContext`; afterwards the test module's cluster (its `NAME`) is deleted and the operator the test
    installed (release = the namespace) uninstalled."""
    kube = Kube(local_cluster.kubeconfig)
    context = DemoContext(kube, local_cluster.tools, namespace, LogView(print), local_cluster.state)
    try:
        yield context
    finally:
        with contextlib.suppress(Exception):
            scenario.delete_cluster(context, request.module.NAME, timeout_s=60)
        scenario.uninstall_operator(context, namespace)
        kube.close()
