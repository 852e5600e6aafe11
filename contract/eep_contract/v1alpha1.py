"""The ElasticEPCluster contract, v1alpha1: spec, status, enums, label and annotation keys.

This module is the single definition of the custom resource. The CRD's OpenAPI schema
(`crds/elasticep.io_elasticepclusters.yaml`) and the configuration reference (`docs/reference.md`)
are generated from these models by `eep_contract.crd`; tests fail when the committed files differ.

Who reads it: the operator (writes status), the worker runtime (reads `status.membership`),
the status CLI, the chart tests. It imports nothing from the rest of the project but the contract's
`env` (`DataPath`, defined there without pydantic for the worker's settings, and the names of the member
contract's variables).

Field names are camelCase on the wire (Kubernetes convention) and snake_case in Python.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from eep_contract.env import FIELD_REFS, Coordinator, DataPath, MemberEnv
from eep_contract.k8s_schema import QUANTITY_PATTERN

GROUP = "elasticep.io"
VERSION = "v1alpha1"
KIND = "ElasticEPCluster"
PLURAL = "elasticepclusters"
SINGULAR = "elasticepcluster"
SHORT_NAMES = ("eep",)
API_VERSION = f"{GROUP}/{VERSION}"

MAX_MEMBERS = 64
MAX_RANKS_PER_MEMBER = 16
MAX_WORLD_SIZE = 64
"""Mooncake's limit on global ranks in one group (both backends are Mooncake's)."""
COORDINATOR_RESOURCES = ("cpu", "memory", "ephemeral-storage")
"""What a dedicated coordinator may request: it runs no GPU work."""
COORDINATOR_RESOURCES_MESSAGE = (
    "elasticEP.coordinatorRequests may name only cpu, memory and ephemeral-storage"
)
COORDINATOR_NEEDS_CPU_MEMORY = (
    "elasticEP.coordinatorRequests must name cpu and memory: the coordinator pod is Guaranteed, its loss "
    "restarts the group"
)
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""A Kubernetes object name (RFC 1123 subdomain), e.g. a PriorityClass's."""
WORLD_TOO_LARGE_MESSAGE = (
    "world size (nodes x ranksPerNode, plus 1 for a dedicated coordinator) must be at most "
    f"{MAX_WORLD_SIZE}: Mooncake's limit on the global ranks of one group"
)
MAX_UNAVAILABLE_MESSAGE = (
    "recovery.maxUnavailableMembers must be smaller than nodes: at least one member has to keep serving"
)
DEDICATED_NEEDS_TWO_NODES = (
    "elasticEP.coordinator: Dedicated needs nodes >= 2: a serving member is recovered from the others"
)
DEDICATED_NEEDS_EEP_WORKER = (
    "elasticEP.coordinator: Dedicated needs engine eep-worker: SGLang runs its coordinator, HTTP server and "
    "tokenizer in node rank 0, which also serves"
)


class Labels:
    """Label keys the operator puts on every object it owns."""

    CLUSTER = "elasticep.io/cluster"
    """Name of the owning ElasticEPCluster."""
    MEMBER = "elasticep.io/member"
    """Member index (0-based); member 0 holds global rank 0, Mooncake's coordinator."""
    FIRST_RANK = "elasticep.io/first-rank"
    """First global rank served by the member's pod."""
    RANK_COUNT = "elasticep.io/rank-count"
    """Number of global ranks served by the member's pod."""
    MANAGED_BY = "app.kubernetes.io/managed-by"
    """Always `elastic-ep-operator`."""


class Annotations:
    """Annotation keys on member pods (and, for the `*_FLOOR` and `GROUP_SPEC` records, on the
    ElasticEPCluster itself)."""

    JOIN = "elasticep.io/join"
    """`"true"` on a replacement pod started in join (recover) mode."""
    EPOCH = "elasticep.io/epoch"
    """Membership epoch at which the pod was created."""
    INCARNATION = "elasticep.io/incarnation"
    """How many times this member's pod has been created (1 for the first pod)."""
    REVISION = "elasticep.io/revision"
    """The spec revision the pod was rendered from (`status.groupRevision` when it was created)."""
    GROUP_SPEC = "elasticep.io/group-spec"
    """On the ElasticEPCluster: the pod-shaping spec the running group was started with (`status.groupSpec`,
    as JSON) and the `restartGeneration` acted on. Written before the status that changes them, so a lost
    status neither applies a pending spec edit nor takes a raised `restartGeneration` for a new request."""
    EPOCH_FLOOR = "elasticep.io/epoch-floor"
    """On the ElasticEPCluster: the highest membership epoch the operator has published. Written before the
    status that raises the epoch, so a lost status (a `status: null` patch, a backup restored without its
    status) never makes the epoch go back."""
    INCARNATION_FLOOR = "elasticep.io/incarnation-floor"
    """On the ElasticEPCluster: the highest incarnation any member's status has named. Written before the
    status that raises it (which is written before the pod), so after a lost status no member's pod is
    created with an incarnation it had before: a pod of an old incarnation could be taken for the retry of
    that incarnation's write-ahead intent."""


MANAGED_BY_VALUE = "elastic-ep-operator"


class Kueue:
    """Kueue's keys (v0.17.0, plain-pod groups) the operator reads or sets on member pods for gang admission
    (the operator's `core/gang.py`)."""

    QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
    """Names a LocalQueue: in `spec.template.metadata.labels`, the cluster's choice of gang admission."""
    POD_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
    """Groups plain pods into one Workload (its name); set by the operator."""
    POD_GROUP_TOTAL_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
    """How many pods the group has (`nodes`, plus a dedicated coordinator's); set by the operator."""
    FINALIZER = "kueue.x-k8s.io/managed"
    """Kueue's finalizer on every pod it manages."""


class _Model(BaseModel):
    """Base for every contract model: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as Kubernetes stores it: camelCase keys, no unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# --------------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------------


class EngineName(StrEnum):
    """Which serving engine runs in each member pod."""

    EEP_WORKER = "eep-worker"
    """The project's reference worker runtime (`eep-worker`): a small EP MoE server with Mooncake recovery."""
    SGLANG = "sglang"
    """SGLang's `launch_server` with Elastic EP on the Mooncake backend."""


class SGLangReleases:
    """SGLang's Elastic EP flags by release (docs/sglang.md, "Compatibility"); all in the 0.5 series.

    The operator renders only the flags that the release stated in `engine.sglang.version` accepts. The
    CRD's CEL rules and the models' own checks (`SGLangOptions`, `ElasticEPClusterSpec`) reject the
    combinations that cannot work, with the messages below. `make test` parses the rendered command lines
    with the parsers of the releases in `TESTED` (tests/operator/test_sglang_parser.py).
    """

    FIRST = 10
    """0.5.10: the first release with `--elastic-ep-backend mooncake`; it has no join flag."""
    REJOIN_FIRST = 11
    """0.5.11: `--elastic-ep-rejoin` appears."""
    JOIN_MODE_FIRST = 16
    """0.5.16: `--elastic-ep-join-mode {scale,recover}` appears; `--elastic-ep-rejoin` becomes its deprecated
    alias."""
    REJOIN_LAST = 20
    """0.5.20: the last release that accepts `--elastic-ep-rejoin` (0.5.21's parser rejects it)."""
    TESTED = ("0.5.20", "0.5.23")
    """Releases whose own argument parser reads the rendered command lines in `make test`."""

    VERSION_MESSAGE = (
        "SGLang's Elastic EP on Mooncake starts at 0.5.10 and the operator knows the flags of the 0.5 series "
        "only: state a release 0.5.10 or later 0.5.x, such as 0.5.23"
    )
    REJOIN_MESSAGE = (
        "joinFlag Rejoin (--elastic-ep-rejoin) is accepted by SGLang 0.5.11 to 0.5.20 only (0.5.21 and later "
        "reject it): use Auto or JoinModeRecover"
    )
    JOIN_MODE_MESSAGE = (
        "joinFlag JoinModeRecover (--elastic-ep-join-mode recover) needs SGLang 0.5.16 or later "
        "(0.5.11 to 0.5.15: use Auto or Rejoin)"
    )
    NO_JOIN_FLAG_MESSAGE = (
        "SGLang 0.5.10 has no join flag (--elastic-ep-rejoin arrives in 0.5.11), so a failed member cannot "
        "rejoin: set recovery.mode GroupRestart, or run 0.5.11 or later"
    )


def sglang_patch(version: str) -> int | None:
    """N of an SGLang release `0.5.N` (or `0.5.N.postM`); None for a release outside the 0.5 series."""
    parts = version.split(".")
    if len(parts) < 3 or parts[:2] != ["0", "5"] or not parts[2].isdigit():
        return None
    return int(parts[2])


_CEL_PATCH = "int(self.version.split('.')[2])"
"""CEL for `sglang_patch(self.version)` inside `engine.sglang` (the version rule vouches for the series)."""


class SGLangJoinFlag(StrEnum):
    """How a replacement SGLang member is told to join a running group (`SGLangReleases` has the table)."""

    AUTO = "Auto"
    """The flag the stated `version` accepts: `--elastic-ep-join-mode recover` from 0.5.16,
    `--elastic-ep-rejoin` in 0.5.11 to 0.5.15 (the default)."""
    JOIN_MODE_RECOVER = "JoinModeRecover"
    """`--elastic-ep-join-mode recover`: SGLang 0.5.16 and later."""
    REJOIN = "Rejoin"
    """`--elastic-ep-rejoin`: SGLang 0.5.11 to 0.5.20 (from 0.5.16 a deprecated alias; 0.5.21's parser rejects
    it)."""


def sglang_join_flag(version: str, flag: SGLangJoinFlag) -> SGLangJoinFlag | None:
    """The flag a replacement of an SGLang `version` member gets: `flag`, or for `Auto` the one the release
    accepts; None for 0.5.10, which has none. Raises ValueError (with the schema's message) for a release
    outside the known range or a flag the release rejects."""
    patch = sglang_patch(version)
    if patch is None or patch < SGLangReleases.FIRST:
        raise ValueError(SGLangReleases.VERSION_MESSAGE)
    if flag == SGLangJoinFlag.REJOIN and not (
        SGLangReleases.REJOIN_FIRST <= patch <= SGLangReleases.REJOIN_LAST
    ):
        raise ValueError(SGLangReleases.REJOIN_MESSAGE)
    if flag == SGLangJoinFlag.JOIN_MODE_RECOVER and patch < SGLangReleases.JOIN_MODE_FIRST:
        raise ValueError(SGLangReleases.JOIN_MODE_MESSAGE)
    if flag != SGLangJoinFlag.AUTO:
        return flag
    if patch >= SGLangReleases.JOIN_MODE_FIRST:
        return SGLangJoinFlag.JOIN_MODE_RECOVER
    return SGLangJoinFlag.REJOIN if patch >= SGLangReleases.REJOIN_FIRST else None


DEFAULT_ADMISSION_BODY: dict[str, Any] = {
    "input_ids": [0],
    "sampling_params": {"max_new_tokens": 1, "temperature": 0},
}
"""One token from token id 0, like SGLang's own `/health` generation: needs no tokenizer, fits any model."""


class SGLangAdmissionTrigger(_Model):
    """Small generation requests to member 0 while a replacement joins.

    SGLang's survivors look for joiners only at the end of a forward pass: a group with no traffic never
    admits a replacement, which then waits in `join_group` until it gives up. While a member is Joining, the
    operator POSTs `body` to `path` on member 0's engine port, one request at a time, one start per
    `intervalSeconds` at most, until the member is Ready or the rejoin times out
    (`elasticep_admission_trigger_requests_total`).
    """

    enabled: bool = Field(default=True, description="Send the requests while a member is Joining.")
    interval_seconds: float = Field(
        default=2.0,
        ge=0.1,
        le=300,
        description="Seconds between the starts of two requests (one is in flight at a time).",
    )
    timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="Seconds one request may take; the survivors answer only after they admitted the joiner.",
    )
    path: str = Field(
        default="/generate",
        pattern=r"^/.*",
        max_length=256,
        description="HTTP path on member 0's `engine.port` (SGLang's native generate endpoint).",
    )
    body: dict[str, Any] = Field(
        default=DEFAULT_ADMISSION_BODY,
        description="JSON body of each request; the default asks for one token from token id 0.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class SGLangOptions(_Model):
    """Options rendered into SGLang's `python -m sglang.launch_server` command line."""

    model_path: str = Field(
        min_length=1, description="Model to serve (`--model-path`): a local path or hub id."
    )
    version: str = Field(
        pattern=r"^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(\.post[0-9]{1,3})?$",
        max_length=24,
        description="SGLang release the image runs, such as `0.5.23`: the operator renders only the flags "
        "this release accepts (0.5.10 and later 0.5.x; `make test` parses the command lines with the "
        "parsers of 0.5.20 and 0.5.23).",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.split('.')[0] == '0' && self.split('.')[1] == '5' && "
                    f"int(self.split('.')[2]) >= {SGLangReleases.FIRST}",
                    "message": SGLangReleases.VERSION_MESSAGE,
                }
            ]
        },
    )
    tp_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_WORLD_SIZE,
        description="Tensor-parallel size (`--tp-size`). Defaults to the world size (nodes x ranksPerNode).",
    )
    ep_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_WORLD_SIZE,
        description="Expert-parallel size (`--ep-size`). Defaults to the world size.",
    )
    join_flag: SGLangJoinFlag = Field(
        default=SGLangJoinFlag.AUTO,
        description="Flag that starts a replacement member in join mode; one the `version` accepts.",
    )
    admission_trigger: SGLangAdmissionTrigger = Field(
        default_factory=SGLangAdmissionTrigger,
        description="Generation requests to member 0 that let the survivors admit a joining replacement.",
    )
    extra_args: list[str] = Field(
        default_factory=list,
        max_length=128,
        description="Further `launch_server` arguments, appended verbatim.",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.joinFlag) || self.joinFlag != 'Rejoin' || "
                    f"({_CEL_PATCH} >= {SGLangReleases.REJOIN_FIRST} && "
                    f"{_CEL_PATCH} <= {SGLangReleases.REJOIN_LAST})",
                    "message": SGLangReleases.REJOIN_MESSAGE,
                },
                {
                    "rule": "!has(self.joinFlag) || self.joinFlag != 'JoinModeRecover' || "
                    f"{_CEL_PATCH} >= {SGLangReleases.JOIN_MODE_FIRST}",
                    "message": SGLangReleases.JOIN_MODE_MESSAGE,
                },
            ]
        }
    )

    @model_validator(mode="after")
    def _release_accepts_the_flag(self) -> SGLangOptions:
        """The CEL rules above, for whoever builds the model without the API server (the operator's reads)."""
        sglang_join_flag(self.version, self.join_flag)
        return self

    def replacement_join_flag(self) -> SGLangJoinFlag | None:
        """The join flag a replacement gets (`sglang_join_flag`); None for 0.5.10."""
        return sglang_join_flag(self.version, self.join_flag)


class EngineSpec(_Model):
    """The serving engine and its arguments."""

    name: EngineName = Field(
        default=EngineName.EEP_WORKER, description="Engine that runs in each member pod."
    )
    port: int = Field(default=30000, ge=1024, le=65535, description="HTTP port of the serving endpoint.")
    args: list[str] = Field(
        default_factory=list,
        max_length=128,
        description="Extra arguments appended to the engine's command line.",
    )
    readiness_path: str = Field(
        default="/ready",
        pattern=r"^/.*",
        description="HTTP path the pod's readiness probe calls. A member is Ready only after its ranks "
        "have joined the group, so readiness is how the operator learns a join completed. With engine "
        "`sglang` the default `/ready`, which SGLang does not serve, becomes SGLang's `/health`.",
    )
    sglang: SGLangOptions | None = Field(
        default=None, description="SGLang options; required when `name` is `sglang`."
    )
    model_layers: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Layers of the served model that each end in a combine collective (MoE layers). The "
        "operator computes from it the recovery pause the settings imply (condition RecoveryPauseBounded, "
        "`recovery.maxRecoveryPauseSeconds`); the reference worker is also started with it (`--layers`). "
        "Unset: the pause cannot be bounded.",
    )


class Backend(StrEnum):
    """torch.distributed backend used by the Elastic EP process groups."""

    MOONCAKE = "mooncake"
    """Mooncake's GPU backend (RDMA, or TCP with `forceTCP`)."""
    MOONCAKE_CPU = "mooncake-cpu"
    """Mooncake's CPU backend: same recovery protocol on CPU tensors (tests, demos)."""


class ElasticEPSpec(_Model):
    """Elastic expert parallelism: the Mooncake process-group settings."""

    backend: Backend = Field(default=Backend.MOONCAKE, description="Process-group backend.")
    ib_devices: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="InfiniBand devices Mooncake may use (`--mooncake-ib-device`). "
        "Empty: let Mooncake choose. Reaches engine `sglang` only; the reference worker ignores it.",
    )
    force_tcp: bool = Field(
        default=False,
        alias="forceTCP",
        description="Use TCP instead of RDMA (`MC_FORCE_TCP=true`); for hosts without InfiniBand.",
    )
    collective_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds a collective waits for a peer before Mooncake suspects it (detection, part 1). "
        "Reaches engine `eep-worker` only (`EEP_COLLECTIVE_TIMEOUT_S`); SGLang does not read it.",
    )
    reconciliation_window_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds Mooncake waits for ranks to agree on a failure before deactivating the "
        "suspected rank (detection, part 2). Reaches engine `eep-worker` only (`EEP_RECONCILE_WINDOW_S`); "
        "SGLang does not read it.",
    )
    coordinator_port: int = Field(
        default=29500,
        ge=1024,
        le=65535,
        description="TCP port of the rendezvous store on member 0 (`--dist-init-addr` host:port).",
    )
    data_path: DataPath = Field(
        default=DataPath.AUTO,
        description="How the ranks carry the model's combine all-reduces, chosen once at the group's start "
        "by a probe that checks the sums on every rank (`EEP_DATA_PATH`). Reaches engine `eep-worker` only.",
    )
    coordinator: Coordinator = Field(
        default=Coordinator.MEMBER0,
        description="Where global rank 0 (Mooncake's coordinator, the rendezvous store, the planner) lives. "
        "`Member0`: in member 0, which also serves; its loss restarts the whole group. `Dedicated`: in a "
        "pod of its own (member 0, rank 0 alone, no GPU, `coordinatorRequests`) that holds no expert and "
        "runs no GPU work, but still takes the clients' requests and plans every step; every serving member "
        "(members 1..nodes) then recovers in place, and the coordinator's loss restarts the group (as does "
        "any loss beyond `recovery.maxUnavailableMembers`). Engine `eep-worker` only. Fixed after creation.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": "coordinator is immutable: create a new cluster"}
            ]
        },
    )
    coordinator_requests: dict[str, int | str] = Field(
        default_factory=lambda: dict[str, int | str]({"cpu": "1", "memory": "2Gi"}),
        max_length=8,
        description="With `coordinator: Dedicated`: the coordinator pod's engine container requests, and "
        "limits alike (Guaranteed QoS); cpu and memory are required. Its only resources: the template's are "
        "replaced, and the other containers lose their GPUs, RDMA devices and resource claims. Size cpu for "
        "the planner and the clients' requests, which all reach this pod.",
        json_schema_extra={
            "additionalProperties": {
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "x-kubernetes-int-or-string": True,
                "pattern": QUANTITY_PATTERN,
            },
            "x-kubernetes-validations": [
                {
                    "rule": "self.all(k, k in " + str(list(COORDINATOR_RESOURCES)) + ")",
                    "message": COORDINATOR_RESOURCES_MESSAGE,
                },
                {"rule": "'cpu' in self && 'memory' in self", "message": COORDINATOR_NEEDS_CPU_MEMORY},
            ],
        },
    )
    coordinator_priority_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="With `coordinator: Dedicated`: the coordinator pod's priorityClassName (default: the "
        "template's). Give it one above the serving members': its preemption restarts the whole group.",
    )
    coordinator_node_selector: dict[str, str] | None = Field(
        default=None,
        max_length=32,
        description="With `coordinator: Dedicated`: the coordinator pod's nodeSelector, in place of the "
        "template's; its node affinity from the template is dropped too (both usually pick GPU nodes). Put "
        "the coordinator on CPU nodes you seldom drain. Unset: the template's node selector and affinity.",
    )


class RecoveryMode(StrEnum):
    """What the operator does when a member fails."""

    PER_MEMBER = "PerMember"
    """Recreate only the failed member's pod, in join mode; the rest keep serving (the default)."""
    GROUP_RESTART = "GroupRestart"
    """Recreate every pod, fresh, on any failure (what LeaderWorkerSet's RecreateGroupOnPodRestart does)."""


class RecoverySpec(_Model):
    """Backoff, budgets and fallbacks of the recovery loop."""

    mode: RecoveryMode = Field(default=RecoveryMode.PER_MEMBER, description="Recovery strategy.")
    backoff_initial_seconds: float = Field(
        default=2.0,
        ge=0,
        le=3600,
        description="Delay before the first replacement of a failed member. "
        "Doubles per restart within the window.",
    )
    backoff_max_seconds: float = Field(
        default=300.0, ge=0, le=86400, description="Upper bound of the per-member backoff."
    )
    max_restarts_per_member: int = Field(
        default=5,
        ge=0,
        le=1000,
        description="Restarts one member may use within `restartWindowSeconds`; one more failure marks the "
        "cluster Failed (no silent endless loop).",
    )
    restart_window_seconds: float = Field(
        default=3600.0, gt=0, le=7 * 86400, description="Sliding window for `maxRestartsPerMember`."
    )
    rejoin_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        le=86400,
        description="Seconds a replacement may take from creation to Ready (joined) "
        "before it counts as failed.",
    )
    max_unavailable_members: int = Field(
        default=1,
        ge=0,
        le=MAX_MEMBERS,
        description="Members that may be down at once while the rest serve; more than this triggers a "
        "whole-group restart. Must be smaller than `nodes`.",
    )
    terminating_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds a pod may stay Terminating before the operator acts: on a node that is gone "
        "or out of service it is force-deleted; anywhere else (a finalizer, a hung runtime) a Warning Event "
        "`PodStuckTerminating` and the `Stalled` condition name the pod and what holds it.",
    )
    node_lost_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        le=86400,
        description="Seconds a member's node may be NotReady or Unknown before the member is reported "
        "Unreachable (a Warning Event and the `MembersUnreachable` condition). Unreachable is not failed: "
        "the operator replaces the member only with evidence that its ranks are gone (the node deleted, "
        "the node tainted `node.kubernetes.io/out-of-service`, or member 0 reporting those ranks not "
        "live), so a node blip or a control-plane partition never restarts anything.",
    )
    max_evictions_per_member: int = Field(
        default=10,
        ge=0,
        le=1000,
        description="Evictions (a drain, a preemption) one member may take within `restartWindowSeconds` "
        "without spending its crash budget (`maxRestartsPerMember`); further evictions count as crashes.",
    )
    max_recovery_pause_seconds: float = Field(
        default=10.0,
        gt=0,
        le=86400,
        description="Longest recovery pause (a member lost mid-step -> the survivors serve again) the "
        "settings may imply; above it the RecoveryPauseBounded condition is False and a Warning Event says "
        "what the settings imply. Computed from `engine.modelLayers`, `elasticEP.collectiveTimeoutSeconds` "
        "and `elasticEP.reconciliationWindowSeconds` (docs/runbook.md).",
    )


ENGINE_CONTAINER = "engine"
"""Name of the engine container in `spec.template.spec.containers`; the operator adds it when absent."""

OWNED_LABEL_PREFIX = "elasticep.io/"
"""Label and annotation keys under this prefix are the operator's (`Labels`, `Annotations`)."""

POD_SPEC_SCHEMA_MARK = "x-eep-core-v1-pod-spec"
"""JSON-schema mark on `PodTemplate.spec`: the CRD generator puts Kubernetes' own PodSpec schema there
(`eep_contract.k8s_schema`)."""


OWNED_ENV = tuple(sorted([*MemberEnv.names().values(), *FIELD_REFS]))
"""Environment variables of the engine container that the operator renders (`eep_contract.env.MemberEnv` and
the downward-API ones); a template may not set them. Tuning variables (`TuningEnv`) stay the user's."""

TEMPLATE_SPEC_RULES: tuple[tuple[str, str], ...] = (
    (
        "!has(self.restartPolicy) || self.restartPolicy == 'Never'",
        "template.spec.restartPolicy must be Never or unset: a member is restarted by the operator, in a new "
        "pod with the join flag, never by the kubelet with its original arguments",
    ),
    (
        "!has(self.hostname) && !has(self.subdomain)",
        "template.spec.hostname and template.spec.subdomain are set by the operator: they give each member "
        "its stable DNS name under the cluster's headless Service",
    ),
    (
        "!has(self.activeDeadlineSeconds)",
        "template.spec.activeDeadlineSeconds would have the kubelet end every member after that time: a "
        "serving member has no deadline",
    ),
    (
        "!has(self.nodeName)",
        "template.spec.nodeName would put every member on that one node, past the scheduler (and a gang's "
        "admission): choose nodes with nodeSelector, affinity or tolerations",
    ),
    (
        f"!has(self.initContainers) || self.initContainers.all(c, c.name != '{ENGINE_CONTAINER}')",
        f"the name '{ENGINE_CONTAINER}' is the engine container's: an init container may not take it",
    ),
)
"""CEL rules on `spec.template.spec` (rule, message): what the operator owns in a member pod."""

ENGINE_CONTAINER_RULES: tuple[tuple[str, str], ...] = (
    (
        f"self.name != '{ENGINE_CONTAINER}' || (!has(self.image) && !has(self.args))",
        f"the '{ENGINE_CONTAINER}' container takes its image from spec.image and its arguments from the "
        "operator (the join flag among them): leave out image and args there; add engine arguments with "
        "engine.args",
    ),
    (
        f"self.name != '{ENGINE_CONTAINER}' || !has(self.env) || "
        f"self.env.all(e, !(e.name in {list(OWNED_ENV)!r}))",
        f"the '{ENGINE_CONTAINER}' container's {', '.join(OWNED_ENV)} are the operator's (each member's "
        "identity and the group's settings); set them through the spec's fields",
    ),
    (
        f"self.name != '{ENGINE_CONTAINER}' || (!has(self.restartPolicy) && !has(self.restartPolicyRules))",
        f"the '{ENGINE_CONTAINER}' container may not restart in place (restartPolicy, restartPolicyRules): "
        "the kubelet would start it again without the join flag; the operator replaces a failed member",
    ),
)
"""CEL rules on each item of `spec.template.spec.containers`: what the operator owns in the engine
container."""

TEMPLATE_METADATA_RULES: tuple[tuple[str, str], ...] = (
    (
        f"!has(self.labels) || self.labels.all(k, !k.startsWith('{OWNED_LABEL_PREFIX}'))",
        f"template.metadata.labels under {OWNED_LABEL_PREFIX} are the operator's",
    ),
    (
        f"!has(self.annotations) || self.annotations.all(k, !k.startsWith('{OWNED_LABEL_PREFIX}'))",
        f"template.metadata.annotations under {OWNED_LABEL_PREFIX} are the operator's",
    ),
    (
        f"(!has(self.labels) || !('{Kueue.POD_GROUP_LABEL}' in self.labels)) && "
        f"(!has(self.annotations) || !('{Kueue.POD_GROUP_TOTAL_ANNOTATION}' in self.annotations))",
        f"{Kueue.POD_GROUP_LABEL} and {Kueue.POD_GROUP_TOTAL_ANNOTATION} are set by the operator (one Kueue "
        f"pod group per group start): name a LocalQueue with {Kueue.QUEUE_LABEL} only",
    ),
)
"""CEL rules on `spec.template.metadata`."""


def _cel(rules: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


class PodTemplateMetadata(_Model):
    """Labels and annotations of every member pod."""

    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Pod labels (e.g. `kueue.x-k8s.io/queue-name`); the operator's own (`elasticep.io/*`, "
        "`app.kubernetes.io/managed-by`) win.",
    )
    annotations: dict[str, str] = Field(default_factory=dict, description="Pod annotations.")

    model_config = ConfigDict(json_schema_extra=_cel(TEMPLATE_METADATA_RULES))


class PodTemplate(_Model):
    """A Kubernetes PodTemplateSpec for every member pod, as LeaderWorkerSet's `workerTemplate`."""

    metadata: PodTemplateMetadata = Field(
        default_factory=PodTemplateMetadata, description="Labels and annotations of every member pod."
    )
    spec: dict[str, Any] = Field(
        default_factory=dict,
        description="core/v1 PodSpec of every member pod, validated against Kubernetes' own schema. The "
        f"container named `{ENGINE_CONTAINER}` runs the engine (added when absent). The operator sets: its "
        "`image` (from `spec.image`), its command line (as `args` when the container sets `command`, e.g. "
        "a wrapper), the `EEP_*` environment of the member contract, the `http` port, the pod's `hostname`, "
        "`subdomain` and `restartPolicy: Never`. It merges: the container's other env (after the "
        "contract's), "
        "its other ports, the pod labels and annotations (the operator's keys win). It adds, only when the "
        "engine container has none: the readiness probe (how the operator learns a replacement joined: it "
        "must turn Ready only once the member serves) and, for SGLang, the liveness probe. Everything else "
        "(volumes, init containers, sidecars, securityContext, resources, hostNetwork, resourceClaims, "
        'schedulerName, ...) is the template\'s, unchanged. docs/reference.md, "The pod template".',
        json_schema_extra={POD_SPEC_SCHEMA_MARK: True, **_cel(TEMPLATE_SPEC_RULES)},
        # The engine container's rules go on `containers`' items (`ENGINE_CONTAINER_RULES`, eep_contract.crd).
    )

    @model_validator(mode="after")
    def _operator_fields_left_alone(self) -> PodTemplate:
        """The CEL rules above, for whoever builds the model without the API server."""
        problems = template_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def engine_container(self) -> dict[str, Any]:
        """The template's engine container as written (camelCase keys), or `{}` when it has none."""
        for c in self.spec.get("containers") or []:
            if isinstance(c, dict) and c.get("name") == ENGINE_CONTAINER:
                return c
        return {}

    def engine_env(self) -> list[dict[str, Any]]:
        """The engine container's env entries as written (`[{name, value | valueFrom}]`)."""
        return list(self.engine_container().get("env") or [])


def template_problems(template: PodTemplate) -> list[str]:
    """The messages of the template's CEL rules (`TEMPLATE_SPEC_RULES`, `ENGINE_CONTAINER_RULES`,
    `TEMPLATE_METADATA_RULES`) that `template` breaks, in order."""
    spec = template.spec
    out = []
    if spec.get("restartPolicy", "Never") != "Never":
        out.append(TEMPLATE_SPEC_RULES[0][1])
    if "hostname" in spec or "subdomain" in spec:
        out.append(TEMPLATE_SPEC_RULES[1][1])
    if "activeDeadlineSeconds" in spec:
        out.append(TEMPLATE_SPEC_RULES[2][1])
    if "nodeName" in spec:
        out.append(TEMPLATE_SPEC_RULES[3][1])
    if any(c.get("name") == ENGINE_CONTAINER for c in spec.get("initContainers") or []):
        out.append(TEMPLATE_SPEC_RULES[4][1])
    engine = template.engine_container()
    if "image" in engine or "args" in engine:
        out.append(ENGINE_CONTAINER_RULES[0][1])
    if any(e.get("name") in OWNED_ENV for e in engine.get("env") or []):
        out.append(ENGINE_CONTAINER_RULES[1][1])
    if "restartPolicy" in engine or "restartPolicyRules" in engine:
        out.append(ENGINE_CONTAINER_RULES[2][1])
    if any(k.startswith(OWNED_LABEL_PREFIX) for k in template.metadata.labels):
        out.append(TEMPLATE_METADATA_RULES[0][1])
    if any(k.startswith(OWNED_LABEL_PREFIX) for k in template.metadata.annotations):
        out.append(TEMPLATE_METADATA_RULES[1][1])
    if (
        Kueue.POD_GROUP_LABEL in template.metadata.labels
        or Kueue.POD_GROUP_TOTAL_ANNOTATION in template.metadata.annotations
    ):
        out.append(TEMPLATE_METADATA_RULES[2][1])
    return out


class UpdateStrategyType(StrEnum):
    """How a changed spec reaches a running group."""

    MANUAL = "Manual"
    """The running group keeps the revision it was started with (every replacement too: a replacement of
    another revision could not join). The change waits, reported by the `UpdatePending` condition, until the
    next whole-group restart: one the user asks for (`restartGeneration`) or one a failure needs."""
    GROUP_RESTART = "GroupRestart"
    """A changed spec restarts the whole group at once (an outage of the restart's length)."""


class UpdateStrategy(_Model):
    """How spec changes are rolled out to a running group."""

    type: UpdateStrategyType = Field(default=UpdateStrategyType.MANUAL, description="The strategy.")


class ElasticEPClusterSpec(_Model):
    """Desired state of an elastic expert-parallel deployment."""

    image: str = Field(min_length=1, description="Container image of the serving engine.")
    nodes: int = Field(
        ge=1,
        le=MAX_MEMBERS,
        description="Number of serving members (one pod each, usually one per GPU node; a dedicated "
        "coordinator adds a pod of its own). Fixed after creation: a Mooncake group's world size does not "
        "change in place.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self == oldSelf",
                    "message": "nodes is immutable: create a new cluster to resize the group",
                }
            ]
        },
    )
    ranks_per_node: int = Field(
        default=8,
        ge=1,
        le=MAX_RANKS_PER_MEMBER,
        description="Global ranks (GPUs) per member pod. Fixed after creation.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": "ranksPerNode is immutable: create a new cluster"}
            ]
        },
    )
    engine: EngineSpec = Field(default_factory=EngineSpec, description="Serving engine.")
    elastic_ep: ElasticEPSpec = Field(
        default_factory=ElasticEPSpec, alias="elasticEP", description="Elastic EP / Mooncake settings."
    )
    recovery: RecoverySpec = Field(default_factory=RecoverySpec, description="Recovery policy.")
    update_strategy: UpdateStrategy = Field(
        default_factory=UpdateStrategy,
        description="How a change of the pod-shaping fields (everything but `recovery`, `updateStrategy`, "
        "`restartGeneration` and `engine.sglang.admissionTrigger`, which take effect at once) reaches the "
        "running group.",
    )
    restart_generation: int = Field(
        default=0,
        ge=0,
        description="Raise it to restart the whole group once, with the current spec (the way to apply a "
        "pending update under `updateStrategy: Manual`). Not counted against the restart budget.",
    )
    template: PodTemplate = Field(
        default_factory=PodTemplate,
        description="Pod template of every member (a core/v1 PodTemplateSpec); what the operator sets in it "
        "and what it merges: `template.spec`.",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"self.nodes * self.ranksPerNode + (has(self.elasticEP) && "
                    f"has(self.elasticEP.coordinator) && self.elasticEP.coordinator == 'Dedicated' ? 1 : 0) "
                    f"<= {MAX_WORLD_SIZE}",
                    "message": WORLD_TOO_LARGE_MESSAGE,
                },
                {
                    "rule": "!has(self.elasticEP) || !has(self.elasticEP.coordinator) || "
                    "self.elasticEP.coordinator != 'Dedicated' || "
                    "(has(self.engine) && has(self.engine.name) && self.engine.name == 'eep-worker') || "
                    "!has(self.engine) || !has(self.engine.name)",
                    "message": DEDICATED_NEEDS_EEP_WORKER,
                },
                {
                    "rule": "!has(self.elasticEP) || !has(self.elasticEP.coordinator) || "
                    "self.elasticEP.coordinator != 'Dedicated' || self.nodes >= 2",
                    "message": DEDICATED_NEEDS_TWO_NODES,
                },
                {
                    "rule": "!has(self.recovery) || !has(self.recovery.maxUnavailableMembers) || "
                    "self.recovery.maxUnavailableMembers < self.nodes",
                    "message": MAX_UNAVAILABLE_MESSAGE,
                },
                {
                    "rule": "!has(self.recovery) || !has(self.recovery.backoffInitialSeconds) || "
                    "!has(self.recovery.backoffMaxSeconds) || "
                    "self.recovery.backoffMaxSeconds >= self.recovery.backoffInitialSeconds",
                    "message": "recovery.backoffMaxSeconds must be at least recovery.backoffInitialSeconds",
                },
                {
                    "rule": "!has(self.engine) || !has(self.engine.name) || self.engine.name != 'sglang' || "
                    "has(self.engine.sglang)",
                    "message": "engine.sglang (with modelPath) is required when engine.name is sglang",
                },
                {
                    "rule": "!has(self.engine) || !has(self.engine.name) || self.engine.name != 'sglang' || "
                    "!has(self.engine.sglang) || "
                    f"int(self.engine.sglang.version.split('.')[2]) < {SGLangReleases.FIRST} || "
                    f"int(self.engine.sglang.version.split('.')[2]) >= {SGLangReleases.REJOIN_FIRST} || "
                    "(has(self.recovery) && has(self.recovery.mode) && self.recovery.mode == 'GroupRestart')",
                    "message": SGLangReleases.NO_JOIN_FLAG_MESSAGE,
                },
            ]
        }
    )

    @model_validator(mode="after")
    def _sglang_release_can_rejoin(self) -> ElasticEPClusterSpec:
        """The CEL rule on SGLang 0.5.10 above, for whoever builds the model without the API server."""
        sg = self.engine.sglang
        if (
            self.engine.name == EngineName.SGLANG
            and sg is not None
            and sg.replacement_join_flag() is None
            and self.recovery.mode != RecoveryMode.GROUP_RESTART
        ):
            raise ValueError(SGLangReleases.NO_JOIN_FLAG_MESSAGE)
        return self

    @model_validator(mode="after")
    def _world_and_budget_fit(self) -> ElasticEPClusterSpec:
        """The CEL rules on the world size and `maxUnavailableMembers` above, for whoever builds the model
        without the API server (the operator's `render`, a CI check of manifests)."""
        if self.world_size > MAX_WORLD_SIZE:
            raise ValueError(WORLD_TOO_LARGE_MESSAGE)
        if self.recovery.max_unavailable_members >= self.nodes:
            raise ValueError(MAX_UNAVAILABLE_MESSAGE)
        return self

    @model_validator(mode="after")
    def _dedicated_needs_the_reference_worker(self) -> ElasticEPClusterSpec:
        """The CEL rules on `elasticEP.coordinator: Dedicated` above (engine, nodes), for whoever builds the
        model without the API server."""
        if self.dedicated and self.engine.name != EngineName.EEP_WORKER:
            raise ValueError(DEDICATED_NEEDS_EEP_WORKER)
        if self.dedicated and self.nodes < 2:
            raise ValueError(DEDICATED_NEEDS_TWO_NODES)
        requests = self.elastic_ep.coordinator_requests
        if any(k not in COORDINATOR_RESOURCES for k in requests):
            raise ValueError(COORDINATOR_RESOURCES_MESSAGE)
        if "cpu" not in requests or "memory" not in requests:
            raise ValueError(COORDINATOR_NEEDS_CPU_MEMORY)
        bad = [f"{k}: {v}" for k, v in requests.items() if not re.fullmatch(QUANTITY_PATTERN, str(v))]
        if bad:
            raise ValueError(f"elasticEP.coordinatorRequests: not a quantity: {', '.join(bad)}")
        return self

    @property
    def dedicated(self) -> bool:
        """Rank 0 is a dedicated coordinator (`elasticEP.coordinator: Dedicated`)."""
        return self.elastic_ep.coordinator is Coordinator.DEDICATED

    @property
    def world_size(self) -> int:
        """Global ranks: nodes x ranksPerNode, plus rank 0 alone with a dedicated coordinator."""
        return self.nodes * self.ranks_per_node + int(self.dedicated)

    @property
    def member_count(self) -> int:
        """Member pods: `nodes`, plus the coordinator's (member 0) with a dedicated coordinator."""
        return self.nodes + int(self.dedicated)

    def member_ranks(self, index: int) -> range:
        """The global ranks member ``index`` holds: ``index x ranksPerNode`` on; with a dedicated coordinator
        member 0 holds rank 0 alone and member i >= 1 ranks ``1 + (i - 1) x ranksPerNode`` on. Raises
        IndexError for an index outside `member_count`."""
        if not 0 <= index < self.member_count:
            raise IndexError(f"member {index} of {self.member_count}")
        rpn = self.ranks_per_node
        if not self.dedicated:
            return range(index * rpn, (index + 1) * rpn)
        if index == 0:
            return range(0, 1)
        return range(1 + (index - 1) * rpn, 1 + index * rpn)


# --------------------------------------------------------------------------------------------------
# Status
# --------------------------------------------------------------------------------------------------


class _StatusModel(_Model):
    """Status models ignore unknown fields, so a worker keeps reading the status of a newer operator."""

    model_config = ConfigDict(extra="ignore")


class Phase(StrEnum):
    """Overall state of the cluster, as `kubectl get eep` shows it."""

    PENDING = "Pending"
    """Pods are being created or have not all joined the first time."""
    RUNNING = "Running"
    """Every member is Healthy: full capacity."""
    DEGRADED = "Degraded"
    """At least one member is down and waiting for its replacement; the rest serve."""
    RECOVERING = "Recovering"
    """A replacement is joining; the rest serve."""
    RESTARTING = "Restarting"
    """A whole-group restart is under way: no serving until every member is back."""
    FAILED = "Failed"
    """A restart budget is exhausted; the operator stopped acting. See the Ready condition's message."""


class MemberState(StrEnum):
    """Lifecycle of one member (pod). The transition table lives in `eep_operator.core.members`.

    Pending -> Healthy -> Failed -> Restarting -> Joining -> Healthy
    """

    PENDING = "Pending"
    """Pod created as part of a fresh (group) start; not Ready yet."""
    HEALTHY = "Healthy"
    """Pod Ready; its ranks are in `membership.activeRanks`."""
    FAILED = "Failed"
    """Pod lost (exit, eviction, deletion, node loss); its ranks left `activeRanks`; waiting for backoff."""
    RESTARTING = "Restarting"
    """Replacement pod created with the join flag; not yet running."""
    JOINING = "Joining"
    """Replacement running; its ranks are in `membership.joiningRanks`; the survivors admit it."""


class ConditionType(StrEnum):
    """Condition types the operator maintains."""

    READY = "Ready"
    """True when every member is Healthy."""
    DEGRADED = "Degraded"
    """True while fewer ranks than the world size are active."""
    RECOVERING = "Recovering"
    """True while a member or group restart is in progress."""
    RECOVERY_PAUSE_BOUNDED = "RecoveryPauseBounded"
    """True when the recovery pause the spec implies (a member lost mid-step -> the survivors serve again,
    `eep_contract.pause`) is at most `recovery.maxRecoveryPauseSeconds`; False above it (with a Warning Event
    `RecoveryPauseAboveBound`); Unknown when it cannot be computed (`engine.modelLayers` unset, engine
    `sglang`, or an unreadable tuning variable in the engine container's env). It describes the settings,
    not a measurement."""
    MEMBERS_UNREACHABLE = "MembersUnreachable"
    """True while a member's node has been NotReady/Unknown for `recovery.nodeLostGraceSeconds` and the
    operator has no evidence that its ranks are gone; the message names the members, nodes and what evidence
    would let the operator act."""
    UPDATE_PENDING = "UpdatePending"
    """True while the spec's pod-shaping fields differ from the revision the group runs (`updateStrategy:
    Manual`); the message names the changed fields and how to apply them (`restartGeneration`)."""
    STALLED = "Stalled"
    """True while the operator cannot make progress without help (kstatus' meaning): a pod stuck
    Terminating past `recovery.terminatingTimeoutSeconds` (PodStuckTerminating), an API request refused for
    good, 403 or 422 (APIRequestRefused), pods of a previous cluster of the same name still present
    (PreviousClusterPods), a `status.groupSpec` that is not a valid spec (GroupSpecUnreadable). The reason and
    message say which."""


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(_StatusModel):
    """A Kubernetes-style condition. `lastTransitionTime` changes only when `status` flips."""

    type: ConditionType = Field(description="Condition type.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", max_length=1024, description="CamelCase reason, searchable.")
    message: str = Field(default="", max_length=32768, description="Human-readable detail.")
    last_transition_time: datetime | None = Field(default=None, description="When `status` last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="Spec generation it was computed for."
    )


class Membership(_StatusModel):
    """The signal the workers read: which ranks serve and which are joining, fenced by an epoch."""

    epoch: int = Field(
        default=0, ge=0, description="Grows by one on every membership change; never decreases."
    )
    active_ranks: list[int] = Field(
        default_factory=list,
        max_length=MAX_WORLD_SIZE,
        description="Global ranks that serve (sorted).",
    )
    joining_ranks: list[int] = Field(
        default_factory=list,
        max_length=MAX_WORLD_SIZE,
        description="Global ranks of replacements that are running and must be admitted "
        "by the survivors (sorted).",
    )


class ExitRecord(_StatusModel):
    """Evidence of how a member's pod ended, kept after the pod is gone."""

    exit_code: int | None = Field(default=None, description="Container exit code (137 = SIGKILL).")
    reason: str = Field(
        default="", max_length=1024, description="Failure reason (e.g. Error, OOMKilled, NodeLost)."
    )
    message: str = Field(
        default="", max_length=4096, description="Termination message or operator's explanation."
    )
    time: datetime | None = Field(default=None, description="When the failure was observed.")
    pod_uid: str | None = Field(default=None, description="UID of the pod that ended.")


class MemberStatus(_StatusModel):
    """Observed and remembered state of one member. Enough to resume a recovery after an operator restart."""

    index: int = Field(ge=0, lt=MAX_MEMBERS, description="Member index; member 0 holds global rank 0.")
    pod_name: str = Field(default="", description="Name of the member's current pod.")
    pod_uid: str | None = Field(default=None, description="UID of the member's current pod, if created.")
    node: str | None = Field(default=None, description="Kubernetes node the pod is bound to.")
    first_rank: int = Field(ge=0, description="First global rank of the member.")
    rank_count: int = Field(ge=1, description="Number of global ranks of the member.")
    state: MemberState = Field(default=MemberState.PENDING, description="Member state.")
    state_since: datetime | None = Field(default=None, description="When the member entered `state`.")
    incarnation: int = Field(
        default=0,
        ge=0,
        description="Incarnation of the member's current pod (its `elasticep.io/incarnation` annotation): "
        "grows by one whenever the operator decides to create a pod for this member.",
    )
    restarts: int = Field(default=0, ge=0, description="Replacements created for this member so far.")
    restart_times: list[datetime] = Field(
        default_factory=list,
        max_length=1000,
        description="When each recent replacement was created (for the restart budget window).",
    )
    next_restart_time: datetime | None = Field(
        default=None, description="Earliest time the next replacement may be created (backoff)."
    )
    failed_time: datetime | None = Field(
        default=None, description="When the current failure was observed (start of the recovery clock)."
    )
    last_exit: ExitRecord | None = Field(default=None, description="How the last pod of this member ended.")
    last_recovery_seconds: float | None = Field(
        default=None, ge=0, description="Seconds from the last failure to this member Healthy again."
    )
    unreachable_since: datetime | None = Field(
        default=None,
        description="When the member's node was first seen NotReady/Unknown while its pod still exists; "
        "cleared once the node is Ready again or the member failed.",
    )
    waiting_reason: str | None = Field(
        default=None,
        max_length=1024,
        description="Why the member's current pod does not run yet: a container's waiting reason "
        "(ErrImagePull, ImagePullBackOff, CreateContainerConfigError...) or Unschedulable.",
    )
    waiting_message: str = Field(
        default="", max_length=4096, description="The message that goes with `waitingReason`."
    )
    failure_exempt: bool = Field(
        default=False,
        description="The current failure does not spend the restart budget: an eviction within "
        "`maxEvictionsPerMember`, or a join Mooncake refused while an earlier incarnation was still "
        "registered.",
    )
    revision: str | None = Field(
        default=None,
        max_length=64,
        description="Revision of the spec the member's current pod was rendered from.",
    )
    eviction_times: list[datetime] = Field(
        default_factory=list,
        max_length=1000,
        description="When each recent eviction of this member was observed (`maxEvictionsPerMember`).",
    )


class ElasticEPClusterStatus(_StatusModel):
    """Observed state. The workers' membership signal and the operator's memory."""

    phase: Phase = Field(default=Phase.PENDING, description="Overall phase.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Degraded, Recovering, RecoveryPauseBounded, MembersUnreachable, UpdatePending, "
        "Stalled (docs/runbook.md has a section for each).",
    )
    observed_generation: int | None = Field(default=None, ge=0, description="Spec generation last acted on.")
    world_size: int = Field(
        default=0, ge=0, description="nodes x ranksPerNode, plus 1 with a dedicated coordinator."
    )
    active_rank_count: int = Field(default=0, ge=0, description="len(membership.activeRanks), for printing.")
    joining_rank_count: int = Field(
        default=0, ge=0, description="len(membership.joiningRanks), for printing (`kubectl get eep -o wide`)."
    )
    failed_member_count: int = Field(
        default=0,
        ge=0,
        description="Members that are down with no replacement running yet (state Failed or Restarting), "
        "for printing (`kubectl get eep -o wide`).",
    )
    membership: Membership = Field(
        default_factory=Membership, description="Which ranks serve and which join."
    )
    members: list[MemberStatus] = Field(default_factory=list, description="One entry per member, by index.")
    total_restarts: int = Field(default=0, ge=0, description="Member replacements plus group restarts, ever.")
    group_restarts: int = Field(default=0, ge=0, description="Whole-group restarts so far.")
    group_restart_times: list[datetime] = Field(
        default_factory=list,
        max_length=1000,
        description="When recent group restarts happened (budget window).",
    )
    recovery_start_time: datetime | None = Field(
        default=None, description="When the unfinished recovery (member or group) began; unset when none."
    )
    last_recovery_seconds: float | None = Field(
        default=None, ge=0, description="Seconds from the last failure until every rank was active again."
    )
    group_revision: str | None = Field(
        default=None,
        max_length=64,
        description="Revision (a hash of the pod-shaping spec fields) the running group was started with; "
        "every replacement is rendered from it.",
    )
    update_revision: str | None = Field(
        default=None,
        max_length=64,
        description="Revision of the current spec; differs while an update waits.",
    )
    group_spec: dict[str, Any] | None = Field(
        default=None,
        description="The spec the running group was started with (what replacements are rendered from).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    restart_generation: int = Field(
        default=0, ge=0, description="The `spec.restartGeneration` last acted on."
    )


class ElasticEPCluster(_Model):
    """A whole custom resource object, as read from the API server."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = Field(default=API_VERSION)
    kind: str = Field(default=KIND)
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ElasticEPClusterSpec
    status: ElasticEPClusterStatus = Field(default_factory=ElasticEPClusterStatus)
