"""Render a member's Pod and the cluster's headless Service (docs/dev/interfaces.md, "Member pods").

Called by the planner, which puts the rendered manifests into its actions; pure.

Pods use `restartPolicy: Never`: a kubelet restart would rerun the container with its original arguments, i.e.
without the join flag, and a fresh rank would try to initialise a group that is already running. Every restart
therefore goes through the operator, which creates a new pod with the flag.
"""

from __future__ import annotations

from typing import Any

from eep_operator.api.v1alpha1 import (
    API_VERSION,
    KIND,
    MANAGED_BY_VALUE,
    Annotations,
    ElasticEPClusterSpec,
    EngineName,
    Labels,
    SGLangJoinFlag,
)

Manifest = dict[str, Any]
CONTAINER_NAME = "engine"


def pod_name(cluster: str, index: int) -> str:
    """Stable pod name of a member; also its `spec.hostname`."""
    return f"{cluster}-{index}"


def member_dns(cluster: str, namespace: str, index: int) -> str:
    return f"{pod_name(cluster, index)}.{cluster}.{namespace}.svc.cluster.local"


def coordinator_addr(cluster: str, namespace: str, spec: ElasticEPClusterSpec) -> str:
    """`<member-0 DNS name>:<coordinatorPort>`: Mooncake's rendezvous on rank 0."""
    return f"{member_dns(cluster, namespace, 0)}:{spec.elastic_ep.coordinator_port}"


def owner_reference(cluster: str, uid: str) -> Manifest:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": cluster,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def engine_command(
    spec: ElasticEPClusterSpec, cluster: str, namespace: str, index: int, *, join: bool
) -> list[str]:
    """The engine's command line for member `index`; `join` adds the join flag (replacements only)."""
    engine = spec.engine
    if engine.name == EngineName.EEP_WORKER:
        return ["eep-worker", "serve", *(["--rejoin"] if join else []), *engine.args]
    sg = engine.sglang
    if sg is None:  # the CRD's CEL rule rejects this; keep the renderer total anyway
        raise ValueError("engine.sglang is required when engine.name is sglang")
    world = spec.world_size
    cmd = [
        "python3", "-m", "sglang.launch_server",
        "--model-path", sg.model_path,
        "--tp-size", str(sg.tp_size or world),
        "--ep-size", str(sg.ep_size or world),
        "--nnodes", str(spec.nodes),
        "--node-rank", str(index),
        "--dist-init-addr", coordinator_addr(cluster, namespace, spec),
        "--elastic-ep-backend", "mooncake",
    ]  # fmt: skip
    if spec.elastic_ep.ib_devices:
        cmd += ["--mooncake-ib-device", ",".join(spec.elastic_ep.ib_devices)]
    cmd += ["--host", "0.0.0.0", "--port", str(engine.port)]
    if join:
        if sg.join_flag == SGLangJoinFlag.REJOIN:
            cmd.append("--elastic-ep-rejoin")
        else:
            cmd += ["--elastic-ep-join-mode", "recover"]
    return cmd + list(sg.extra_args) + list(engine.args)


def _env(spec: ElasticEPClusterSpec, cluster: str, namespace: str, index: int) -> list[Manifest]:
    rpn = spec.ranks_per_node
    plain = {
        "EEP_CLUSTER_NAMESPACE": namespace,
        "EEP_CLUSTER_NAME": cluster,
        "EEP_MEMBER_INDEX": str(index),
        "EEP_FIRST_RANK": str(index * rpn),
        "EEP_RANK_COUNT": str(rpn),
        "EEP_WORLD_SIZE": str(spec.world_size),
        "EEP_COORDINATOR_ADDR": coordinator_addr(cluster, namespace, spec),
        "EEP_BACKEND": spec.elastic_ep.backend.value,
        "EEP_COLLECTIVE_TIMEOUT_S": str(spec.elastic_ep.collective_timeout_seconds),
        "EEP_RECONCILE_WINDOW_S": str(spec.elastic_ep.reconciliation_window_seconds),
        "EEP_HTTP_PORT": str(spec.engine.port),
    }
    env: list[Manifest] = [{"name": k, "value": v} for k, v in plain.items()]
    if spec.elastic_ep.force_tcp:
        env.append({"name": "MC_FORCE_TCP", "value": "true"})
    env.append({"name": "EEP_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    env.append({"name": "EEP_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    ours = {e["name"] for e in env}
    # The overlay may add variables but not replace the contract's: the worker relies on them.
    env += [e.to_wire() for e in spec.template.env if e.name not in ours]
    return env


def member_labels(cluster: str, spec: ElasticEPClusterSpec, index: int) -> dict[str, str]:
    rpn = spec.ranks_per_node
    return {
        **spec.template.labels,
        Labels.CLUSTER: cluster,
        Labels.MEMBER: str(index),
        Labels.FIRST_RANK: str(index * rpn),
        Labels.RANK_COUNT: str(rpn),
        Labels.MANAGED_BY: MANAGED_BY_VALUE,
    }


def render_pod(
    spec: ElasticEPClusterSpec,
    *,
    cluster: str,
    namespace: str,
    uid: str,
    index: int,
    join: bool,
    epoch: int,
    incarnation: int,
) -> Manifest:
    """The Pod of member `index`. `join` marks a replacement (join flag + `elasticep.io/join` annotation)."""
    tpl = spec.template
    engine = engine_command(spec, cluster, namespace, index, join=join)
    container: Manifest = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "command": list(tpl.command) if tpl.command else engine,
        "env": _env(spec, cluster, namespace, index),
        "ports": [{"name": "http", "containerPort": spec.engine.port, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": spec.engine.readiness_path, "port": spec.engine.port},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if tpl.command:
        container["args"] = engine
    if tpl.resources is not None:
        container["resources"] = tpl.resources
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "hostname": pod_name(cluster, index),
        "subdomain": cluster,
        "containers": [container],
    }
    optional = {
        "nodeSelector": tpl.node_selector or None,
        "tolerations": tpl.tolerations or None,
        "affinity": tpl.affinity,
        "serviceAccountName": tpl.service_account_name,
        "priorityClassName": tpl.priority_class_name,
        "terminationGracePeriodSeconds": tpl.termination_grace_period_seconds,
    }
    pod_spec.update({k: v for k, v in optional.items() if v is not None})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(cluster, index),
            "namespace": namespace,
            "labels": member_labels(cluster, spec, index),
            "annotations": {
                **tpl.annotations,
                Annotations.JOIN: "true" if join else "false",
                Annotations.EPOCH: str(epoch),
                Annotations.INCARNATION: str(incarnation),
            },
            "ownerReferences": [owner_reference(cluster, uid)],
        },
        "spec": pod_spec,
    }


def render_service(spec: ElasticEPClusterSpec, *, cluster: str, namespace: str, uid: str) -> Manifest:
    """The headless Service that gives every member its DNS name (also before it is Ready)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": cluster,
            "namespace": namespace,
            "labels": {Labels.CLUSTER: cluster, Labels.MANAGED_BY: MANAGED_BY_VALUE},
            "ownerReferences": [owner_reference(cluster, uid)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {Labels.CLUSTER: cluster},
            "ports": [
                {"name": "http", "port": spec.engine.port, "targetPort": spec.engine.port},
                {"name": "coordinator", "port": spec.elastic_ep.coordinator_port},
            ],
        },
    }
