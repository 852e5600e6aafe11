"""ElasticEPCluster objects (raw JSON, as `kubectl apply` and the custom-objects API take them), built small.

- `cluster(...)`: a bare one: image, size, recovery settings, pod template; for pods that are stand-ins or
  fakes, not the real worker.
- `from_example(...)`: the CPU example (`examples/cpu-demo.yaml`, the real worker on mooncake-cpu) renamed
  and resized, with the recovery mode and an optional simulated weight-load time.
- `pod_template(...)`, `engine_container(cr)`: a `spec.template` in a few keywords; the engine container of
  a CR.

Pure (`from_example` reads the example file). Who uses it: tests/operator/conftest.py (stand-in pods),
bench/operator_scale.py (fake kubelets), the demo and bench/mttr.py, bench/soak.py (the example),
tests/chart, tests/alerts, tests/cli (the example).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from eep_contract.v1alpha1 import API_VERSION, ENGINE_CONTAINER, KIND

__all__ = ["EXAMPLE", "WORKER_SA", "cluster", "engine_container", "from_example", "pod_template"]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cpu-demo.yaml"
WORKER_SA = "elastic-ep-worker"
"""The ServiceAccount the chart creates for workers (they read their CR's status)."""


def cluster(
    name: str,
    *,
    nodes: int,
    ranks_per_node: int,
    image: str,
    namespace: str | None = None,
    recovery: Mapping[str, Any] | None = None,
    template: Mapping[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A CR with `spec.image/nodes/ranksPerNode`, `recovery` and `template` when given, and any other spec
    fields in wire form (`engine={"port": 18080}`)."""
    metadata = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
    body: dict[str, Any] = {"image": image, "nodes": nodes, "ranksPerNode": ranks_per_node, **spec}
    if recovery is not None:
        body["recovery"] = dict(recovery)
    if template is not None:
        body["template"] = dict(template)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": body}


def from_example(
    name: str,
    *,
    mode: str = "PerMember",
    load_delay_s: float = 0.0,
    nodes: int | None = None,
    recovery: Mapping[str, Any] | None = None,
    example: Path = EXAMPLE,
) -> dict[str, Any]:
    """The CPU example, renamed, with the workers' ServiceAccount, the recovery mode, and an optional
    simulated weight-load time: the container's entrypoint becomes a shell that sleeps `load_delay_s` and
    then execs the engine's command line (the operator passes it, join flag included, as the container's
    args), so every start of a member, first or replacement, pays that time."""
    cr: dict[str, Any] = copy.deepcopy(yaml.safe_load(example.read_text()))
    cr["metadata"] = {"name": name}
    spec = cr["spec"]
    if nodes is not None:
        spec["nodes"] = nodes
    spec.setdefault("recovery", {})["mode"] = mode
    spec["recovery"].update(recovery or {})
    pod = spec.setdefault("template", {}).setdefault("spec", {})
    pod["serviceAccountName"] = WORKER_SA
    if load_delay_s > 0:
        engine_container(cr)["command"] = ["/bin/sh", "-c", 'sleep "$0" && exec "$@"', f"{load_delay_s:g}"]
    return cr


def pod_template(
    *,
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    **pod_spec: Any,
) -> dict[str, Any]:
    """A `spec.template` (PodTemplateSpec, wire form): the engine container's `command` and literal `env` when
    given, pod labels, and any PodSpec fields (`terminationGracePeriodSeconds=1`, `nodeSelector={...}`)."""
    engine: dict[str, Any] = {"name": ENGINE_CONTAINER}
    if command is not None:
        engine["command"] = list(command)
    if env:
        engine["env"] = [{"name": k, "value": v} for k, v in env.items()]
    template: dict[str, Any] = {"spec": {"containers": [engine], **pod_spec}}
    if labels:
        template["metadata"] = {"labels": dict(labels)}
    return template


def engine_container(cr: dict[str, Any]) -> dict[str, Any]:
    """The engine container of `cr`'s template (wire form), added when absent; edit it in place."""
    pod = cr["spec"].setdefault("template", {}).setdefault("spec", {})
    containers: list[dict[str, Any]] = pod.setdefault("containers", [])
    for c in containers:
        if c.get("name") == ENGINE_CONTAINER:
            return c
    containers.insert(0, {"name": ENGINE_CONTAINER})
    return containers[0]
