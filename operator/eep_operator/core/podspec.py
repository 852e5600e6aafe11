"""Render a member's Pod, the cluster's headless Service and its PodDisruptionBudget (docs/dev/interfaces.md,
"Member pods").

Called by the planner, which puts the rendered manifests into its actions; pure.

Pods use `restartPolicy: Never`: a kubelet restart would rerun the container with its original arguments, i.e.
without the join flag, and a fresh rank would try to initialise a group that is already running. Every restart
therefore goes through the operator, which creates a new pod with the flag.

The template: a member pod is `spec.template` (a PodTemplateSpec) with what the operator owns set: the engine
container's image, command line and contract environment, its `http` port, the pod's name, labels,
annotations, owner, hostname, subdomain and restart policy. The schema rejects a template that sets those
(`v1alpha1.TEMPLATE_SPEC_RULES`, `ENGINE_CONTAINER_RULES`); the renderer still overwrites them, so a CR stored
before a rule existed renders the same pod. Probes are defaults: a template's own probe replaces the
operator's.
"""

from __future__ import annotations

import copy
from typing import Any

from eep_contract.env import FIELD_REFS, MemberEnv
from eep_contract.v1alpha1 import (
    API_VERSION,
    COORDINATOR_RESOURCES,
    ENGINE_CONTAINER,
    KIND,
    MANAGED_BY_VALUE,
    Annotations,
    ElasticEPClusterSpec,
    EngineName,
    EngineSpec,
    Kueue,
    Labels,
    SGLangJoinFlag,
    SGLangOptions,
    SGLangReleases,
)

Manifest = dict[str, Any]


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
        depth = ["--layers", str(engine.model_layers)] if engine.model_layers else []
        return ["eep-worker", "serve", *(["--rejoin"] if join else []), *depth, *engine.args]
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
        cmd += sglang_join_args(sg)
    return cmd + list(sg.extra_args) + list(engine.args)


def sglang_join_args(sg: SGLangOptions) -> list[str]:
    """The join flag of a replacement, as the stated release spells it (`v1alpha1.SGLangReleases`).

    Raises ValueError for 0.5.10, which has none: the CRD admits that release only with recovery mode
    GroupRestart, which never creates a replacement."""
    flag = sg.replacement_join_flag()
    if flag == SGLangJoinFlag.JOIN_MODE_RECOVER:
        return ["--elastic-ep-join-mode", "recover"]
    if flag == SGLangJoinFlag.REJOIN:
        return ["--elastic-ep-rejoin"]
    raise ValueError(SGLangReleases.NO_JOIN_FLAG_MESSAGE)


SGLANG_HEALTH_PATH = "/health"
"""SGLang's health endpoint; the readiness path of SGLang members while `engine.readinessPath` keeps the
eep-worker default `/ready`, which SGLang does not serve."""

SGLANG_SCHEDULER_TITLE = "sglang::scheduler"
"""Process-title prefix of SGLang's schedulers, one per GPU rank (`setproctitle`, 0.5.10 to 0.5.23)."""


def sglang_scheduler_check(ranks: int) -> list[str]:
    """An exec probe command that fails when fewer than `ranks` SGLang scheduler processes live in the
    container (counted in the probe's own mount namespace, so pods that share a host's process table, like
    the local process node's, or a pod's process namespace, do not count each other's). It passes while no
    scheduler has its title yet, or while a multiprocessing child has not yet taken its title (startup); a
    member whose schedulers all died exits on its own (SGLang joins them and returns)."""
    # The probe skips itself, and spells the patterns in two halves: its own command line holds this text.
    title = SGLANG_SCHEDULER_TITLE.split("::")
    script = (
        "import os,sys\n"
        "me=os.readlink('/proc/self/ns/mnt');up=st=0\n"
        f"t=b'{title[0]}::'+b'{title[1]}';f=b'--multiprocessing'+b'-fork'\n"
        "for p in os.listdir('/proc'):\n"
        " if not p.isdigit() or int(p)==os.getpid():continue\n"
        " try:\n"
        "  if os.readlink(f'/proc/{p}/ns/mnt')!=me:continue\n"
        "  c=open(f'/proc/{p}/cmdline','rb').read()\n"
        " except OSError:continue\n"
        " if c.startswith(t):up+=1\n"
        " elif f in c:st+=1\n"
        f"sys.exit(0 if up==0 or up>={ranks} or st else 1)"
    )
    return ["python3", "-c", script]


def _probes(spec: ElasticEPClusterSpec, index: int) -> Manifest:
    """The container's probes. eep-worker: readiness on `engine.readinessPath`, polled every second (how the
    operator learns a join completed).

    SGLang (docs/sglang.md, "Health"): member 0's `/health` runs a one-token generation and answers 503 when
    nothing comes back within about 20 s, which happens while the survivors admit a joiner; its readiness
    waits 25 s per probe and turns false only after 6 failures in a row, so an admission does not take the
    only frontend out of its Service (for Healthy members readiness is never a failure signal anyway).
    Members >= 1 answer only once they joined, from a stand-in server that says 200 whatever happens to the
    ranks behind it: their readiness stays fast, and every member gets a liveness probe that counts its
    scheduler processes, so a scheduler that died without taking the pod along ends the container (exit 137,
    a ContainerExit failure the operator recovers from)."""
    engine = spec.engine
    if engine.name != EngineName.SGLANG:
        return {
            "readinessProbe": {
                "httpGet": {"path": engine.readiness_path, "port": engine.port},
                "periodSeconds": 1,
                "failureThreshold": 1,
            }
        }
    default_path = EngineSpec.model_fields["readiness_path"].default
    path = SGLANG_HEALTH_PATH if engine.readiness_path == default_path else engine.readiness_path
    readiness: Manifest = {"httpGet": {"path": path, "port": engine.port}}
    if index == 0:
        readiness |= {"periodSeconds": 5, "timeoutSeconds": 25, "failureThreshold": 6}
    else:
        readiness |= {"periodSeconds": 1, "failureThreshold": 1}
    liveness: Manifest = {
        "exec": {"command": sglang_scheduler_check(spec.ranks_per_node)},
        "periodSeconds": 10,
        "timeoutSeconds": 10,
        "failureThreshold": 3,
    }
    return {"readinessProbe": readiness, "livenessProbe": liveness}


def member_env(spec: ElasticEPClusterSpec, cluster: str, namespace: str, index: int) -> MemberEnv:
    """What member `index` is told through its environment (the contract's `MemberEnv`)."""
    ranks = spec.member_ranks(index)
    return MemberEnv(
        namespace=namespace,
        cluster=cluster,
        member_index=index,
        first_rank=ranks.start,
        rank_count=len(ranks),
        world_size=spec.world_size,
        coordinator_addr=coordinator_addr(cluster, namespace, spec),
        backend=spec.elastic_ep.backend.value,
        collective_timeout_s=spec.elastic_ep.collective_timeout_seconds,
        reconcile_window_s=spec.elastic_ep.reconciliation_window_seconds,
        http_port=spec.engine.port,
        data_path=spec.elastic_ep.data_path,
        rdma=bool(spec.elastic_ep.ib_devices) and not spec.elastic_ep.force_tcp,
        coordinator=spec.elastic_ep.coordinator,
    )


def _env(
    spec: ElasticEPClusterSpec, cluster: str, namespace: str, index: int, theirs: list[Manifest]
) -> list[Manifest]:
    """The contract's variables first, then `theirs` (the engine container's own, from the rendered pod's
    copy of the template): a variable may refer to the contract's as `$(EEP_...)`, which Kubernetes expands
    only for variables defined before it."""
    plain = member_env(spec, cluster, namespace, index).to_env()
    env: list[Manifest] = [{"name": k, "value": v} for k, v in plain.items()]
    if spec.elastic_ep.force_tcp:
        env.append({"name": "MC_FORCE_TCP", "value": "true"})
    env += [{"name": k, "valueFrom": {"fieldRef": {"fieldPath": path}}} for k, path in FIELD_REFS.items()]
    ours = {e["name"] for e in env}
    # The schema rejects the contract's names in the template; MC_FORCE_TCP follows `elasticEP.forceTCP`.
    env += [e for e in theirs if e.get("name") not in ours]
    return env


def member_labels(cluster: str, spec: ElasticEPClusterSpec, index: int) -> dict[str, str]:
    ranks = spec.member_ranks(index)
    return {
        **spec.template.metadata.labels,
        Labels.CLUSTER: cluster,
        Labels.MEMBER: str(index),
        Labels.FIRST_RANK: str(ranks.start),
        Labels.RANK_COUNT: str(len(ranks)),
        Labels.MANAGED_BY: MANAGED_BY_VALUE,
    }


def _set_engine(
    container: Manifest, spec: ElasticEPClusterSpec, cluster: str, namespace: str, index: int, *, join: bool
) -> None:
    """Set what the operator owns on the engine container (the rendered pod's copy of the template's), in
    place (module docstring, "The template")."""
    engine = engine_command(spec, cluster, namespace, index, join=join)
    container["image"] = spec.image
    container["args" if container.get("command") else "command"] = engine
    container["env"] = _env(spec, cluster, namespace, index, container.get("env") or [])
    http: Manifest = {"name": "http", "containerPort": spec.engine.port, "protocol": "TCP"}
    theirs = [
        p
        for p in container.get("ports") or []
        if p.get("name") != "http" and p.get("containerPort") != spec.engine.port
    ]
    container["ports"] = [http, *theirs]
    for probe, default in _probes(spec, index).items():
        container.setdefault(probe, default)
    container.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")


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
    pod_group: str | None = None,
    revision: str | None = None,
) -> Manifest:
    """The Pod of member `index`: `spec.template` with the operator's fields set. `join` marks a replacement
    (join flag + `elasticep.io/join` annotation); `pod_group` names the Kueue pod group of a queued cluster
    (`core/gang.py`), with `member_count` (`nodes`, plus a dedicated coordinator) as its size; `revision` is
    the spec revision it is rendered from (an annotation: a lost status is rebuilt knowing which revision the
    running pods are of)."""
    tpl = spec.template
    pod_spec: Manifest = copy.deepcopy(tpl.spec)
    containers: list[Manifest] = list(pod_spec.get("containers") or [])
    engine = next((c for c in containers if c.get("name") == ENGINE_CONTAINER), None)
    if engine is None:
        engine = {"name": ENGINE_CONTAINER}
        containers.insert(0, engine)
    _set_engine(engine, spec, cluster, namespace, index, join=join)
    if spec.dedicated and index == 0:
        _as_coordinator(engine, pod_spec, spec)
    pod_spec |= {
        "containers": containers,
        "restartPolicy": "Never",
        "hostname": pod_name(cluster, index),
        "subdomain": cluster,
    }
    labels = member_labels(cluster, spec, index)
    annotations = {
        **tpl.metadata.annotations,
        Annotations.JOIN: "true" if join else "false",
        Annotations.EPOCH: str(epoch),
        Annotations.INCARNATION: str(incarnation),
    }
    if revision is not None:
        annotations[Annotations.REVISION] = revision
    if pod_group is not None:
        labels[Kueue.POD_GROUP_LABEL] = pod_group
        annotations[Kueue.POD_GROUP_TOTAL_ANNOTATION] = str(spec.member_count)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(cluster, index),
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(cluster, uid)],
        },
        "spec": pod_spec,
    }


def _as_coordinator(engine: Manifest, pod_spec: Manifest, spec: ElasticEPClusterSpec) -> None:
    """A dedicated coordinator's pod (member 0, rank 0 alone), in place. It runs no GPU work:
    - the engine container's resources are `elasticEP.coordinatorRequests` alone, as requests and limits
      (Guaranteed QoS: its loss restarts the group);
    - every other container (init containers too) keeps its cpu, memory, ephemeral-storage and hugepages but
      loses its extended resources (GPUs, RDMA devices) and its resource claims, and the pod's dynamic
      resource claims go (a container's claim must name one of the pod's);
    - the template's pod anti-affinity goes (it spreads the serving members, one per GPU node);
    - `elasticEP.coordinatorNodeSelector`, when set, replaces the template's node selector and drops its node
      affinity (both usually pick GPU nodes); `coordinatorPriorityClassName`, when set, replaces the
      template's priority class. Tolerations stay (they allow nodes, they pick none)."""
    ep = spec.elastic_ep
    wanted = dict(ep.coordinator_requests)
    engine["resources"] = {"requests": wanted, "limits": dict(wanted)}
    pod_spec.pop("resourceClaims", None)
    for c in [*pod_spec.get("containers", []), *pod_spec.get("initContainers", [])]:
        if c is not engine and isinstance(c.get("resources"), dict):
            c["resources"] = _without_devices(c["resources"])
    affinity = pod_spec.get("affinity")
    if isinstance(affinity, dict):
        affinity.pop("podAntiAffinity", None)
        if ep.coordinator_node_selector is not None:
            affinity.pop("nodeAffinity", None)
        if not affinity:
            pod_spec.pop("affinity")
    if ep.coordinator_node_selector is not None:
        pod_spec["nodeSelector"] = dict(ep.coordinator_node_selector)
    if ep.coordinator_priority_class_name:
        pod_spec["priorityClassName"] = ep.coordinator_priority_class_name
        pod_spec.pop("priority", None)


def _without_devices(resources: Manifest) -> Manifest:
    """A container's `resources` with only what a coordinator may request (`COORDINATOR_RESOURCES`: what
    every node has) and hugepages left, and no claims: no extended resource (`nvidia.com/gpu`, `rdma/...`)."""
    out: Manifest = {}
    for kind in ("requests", "limits"):
        kept = {
            k: v
            for k, v in (resources.get(kind) or {}).items()
            if k in COORDINATOR_RESOURCES or k.startswith("hugepages-")
        }
        if kept:
            out[kind] = kept
    return out


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


def pdb_name(cluster: str) -> str:
    """Name of the members' PodDisruptionBudget: the cluster's own name, like its Service (another kind)."""
    return cluster


def coordinator_pdb_name(cluster: str) -> str:
    """Name of a dedicated coordinator's PodDisruptionBudget: `<cluster>.coordinator`. A dot, so that it can
    never be another cluster's budget: a cluster's name is its Service's, a DNS label without dots."""
    return f"{cluster}.coordinator"


def pdb_names(spec: ElasticEPClusterSpec, cluster: str) -> tuple[str, ...]:
    """The names of the budgets `render_pdbs` renders, in its order."""
    return (pdb_name(cluster), coordinator_pdb_name(cluster)) if spec.dedicated else (pdb_name(cluster),)


def render_pdbs(spec: ElasticEPClusterSpec, *, cluster: str, namespace: str, uid: str) -> list[Manifest]:
    """The policy/v1 PodDisruptionBudgets of the cluster: the members' (`render_pdb`), and with a dedicated
    coordinator the coordinator's (`render_coordinator_pdb`). Their selectors never share a pod: the Eviction
    API refuses to evict a pod that two budgets select."""
    pdbs = [render_pdb(spec, cluster=cluster, namespace=namespace, uid=uid)]
    if spec.dedicated:
        pdbs.append(render_coordinator_pdb(cluster=cluster, namespace=namespace, uid=uid))
    return pdbs


def render_pdb(spec: ElasticEPClusterSpec, *, cluster: str, namespace: str, uid: str) -> Manifest:
    """The policy/v1 PodDisruptionBudget over the serving member pods: one voluntary disruption (a drain's
    eviction, a preemption through the Eviction API) at a time, and the next only once every serving member is
    Ready again, i.e. the previous member's replacement has joined.

    `minAvailable: nodes - 1`, an integer, and not `maxUnavailable`:
    - The disruption controller resolves `maxUnavailable` (and percentages) through the pods' controller's
      `scale` subresource; the ElasticEPCluster has none, so such a budget never syncs and allows no eviction
      at all. An integer `minAvailable` is counted on the matching pods alone.
    - One at a time whatever `recovery.maxUnavailableMembers` says: a drain then never uses up the
      tolerance the group keeps for crashes (a member crashing while another is drained still fits in a
      budget of 2 or more), and with `maxUnavailableMembers: 0` a budget of no disruptions would make the
      members' nodes undrainable (a drain would wait forever); there a drain costs a group restart, as any
      loss does. The budget depends only on `nodes` and `elasticEP.coordinator`, which are immutable, so the
      manifest never changes over the cluster's life and creating it once is enough.

    `unhealthyPodEvictionPolicy: AlwaysAllow`: a member that is not Ready (a replacement still joining, one
    that never gets Ready) serves nothing the budget protects, so its node can always be drained; with
    IfHealthyBudget a never-Ready replacement would block that drain for as long as another member is down.
    The next eviction of a Ready member is still held: the not-Ready pod is not counted healthy, so the
    budget allows no disruption until it is Ready.

    Selects the member pods by the cluster label, a dedicated coordinator's (member 0) left to its own budget;
    owned by the CR (garbage-collected with it)."""
    selector: Manifest = {"matchLabels": {Labels.CLUSTER: cluster}}
    if spec.dedicated:
        selector["matchExpressions"] = [{"key": Labels.MEMBER, "operator": "NotIn", "values": ["0"]}]
    return _pdb(
        pdb_name(cluster),
        namespace=namespace,
        cluster=cluster,
        uid=uid,
        min_available=spec.nodes - 1,
        selector=selector,
    )


def render_coordinator_pdb(*, cluster: str, namespace: str, uid: str) -> Manifest:
    """A dedicated coordinator's PodDisruptionBudget: `minAvailable: 1` over member 0's pod, so a drain never
    evicts a Ready coordinator (its loss is a group restart: every serving member reloads; the drain waits
    until a person moves it, `docs/runbook.md`). `unhealthyPodEvictionPolicy: AlwaysAllow`: a coordinator
    that is not Ready serves no group, and its node stays drainable."""
    selector = {"matchLabels": {Labels.CLUSTER: cluster, Labels.MEMBER: "0"}}
    return _pdb(
        coordinator_pdb_name(cluster),
        namespace=namespace,
        cluster=cluster,
        uid=uid,
        min_available=1,
        selector=selector,
    )


def _pdb(
    name: str, *, namespace: str, cluster: str, uid: str, min_available: int, selector: Manifest
) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {Labels.CLUSTER: cluster, Labels.MANAGED_BY: MANAGED_BY_VALUE},
            "ownerReferences": [owner_reference(cluster, uid)],
        },
        "spec": {
            "minAvailable": min_available,
            "selector": selector,
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
