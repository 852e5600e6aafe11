"""CR builders: what they build is a valid spec (the contract's models parse it) with what was asked."""

from __future__ import annotations

import subprocess

from eep_contract.v1alpha1 import ElasticEPClusterSpec
from eep_testkit.crs import cluster, from_example, pod_template


def test_from_example_is_a_valid_spec_with_the_requested_mode() -> None:
    cr = from_example("x", mode="GroupRestart", nodes=3)
    spec = ElasticEPClusterSpec.model_validate(cr["spec"])
    assert cr["metadata"] == {"name": "x"}
    assert spec.recovery.mode.value == "GroupRestart" and spec.nodes == 3
    assert spec.template.spec["serviceAccountName"] == "elastic-ep-worker"
    assert "command" not in spec.template.engine_container()


def test_load_delay_wraps_the_engine_command_in_a_sleeping_shell() -> None:
    cr = from_example("x", load_delay_s=0.2)
    command = ElasticEPClusterSpec.model_validate(cr["spec"]).template.engine_container().get("command")
    assert command is not None
    # The operator passes the engine's command line (join flag included) as the container's args.
    args = ["echo", "eep-worker", "serve", "--rejoin"]
    out = subprocess.run([*command, *args], capture_output=True, text=True, timeout=10, check=True)
    assert out.stdout.strip() == "eep-worker serve --rejoin"


def test_a_bare_cluster() -> None:
    recovery = {"maxUnavailableMembers": 2}
    engine = {"port": 18080}
    cr = cluster("c", namespace="ns", image="f", nodes=3, ranks_per_node=2, recovery=recovery, engine=engine)
    assert cr["metadata"] == {"name": "c", "namespace": "ns"} and cr["kind"] == "ElasticEPCluster"
    spec = ElasticEPClusterSpec.model_validate(cr["spec"])
    assert (spec.nodes, spec.ranks_per_node, spec.engine.port) == (3, 2, 18080)
    assert spec.recovery.max_unavailable_members == 2


def test_pod_template_puts_command_and_env_on_the_engine_container() -> None:
    tpl = pod_template(command=["sh"], env={"A": "1"}, labels={"team": "x"}, terminationGracePeriodSeconds=1)
    spec = ElasticEPClusterSpec.model_validate({"image": "i", "nodes": 2, "template": tpl}).template
    assert spec.engine_container()["command"] == ["sh"] and spec.engine_env() == [{"name": "A", "value": "1"}]
    assert spec.spec["terminationGracePeriodSeconds"] == 1 and spec.metadata.labels == {"team": "x"}
