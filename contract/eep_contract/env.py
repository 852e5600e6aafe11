"""The worker's environment: every variable of the pod contract (the `EEP_*` ones and Mooncake's
`GPU_COLLECTIVES_ENV`), defined once.

Who uses it: the operator renders `MemberEnv` into each member pod (`eep_operator.core.podspec`); the worker
parses `MemberEnv` and `TuningEnv` back (`eep_worker.settings`), and flags beat the environment there. A test
round-trips both (`tests/contract/test_env.py`), so the two halves cannot drift.

- `MemberEnv`: what the operator knows about a member and must tell it (identity, world, coordinator, backend,
  timeouts, port, data path). Rendered as plain values.
- `DataPath`: the values of `MemberEnv.data_path` and of the CR's `spec.elasticEP.dataPath` (one enum for
  both; defined here, without pydantic, so the worker's settings and the GPU benchmark can import it).
- `GpuCollectives`: which of Mooncake's GPU collectives a rank process uses (Mooncake's own variable,
  `GPU_COLLECTIVES_ENV`, a tuning knob; the worker's default is not Mooncake's).
- `POD_IP` / `POD_NAME`: filled by the kubelet from the downward API (`FIELD_REFS`).
- `TuningEnv`: knobs of the reference worker that the operator never sets (a user may, through the template's
  env); each has the worker's default.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from enum import Enum, EnumMeta, StrEnum
from typing import Any, ClassVar, Self, TypeVar, Union, get_args, get_origin, get_type_hints

from eep_contract.pause import DEFAULT_TAIL_TIMEOUT_S

__all__ = [
    "FIELD_REFS",
    "GPU_COLLECTIVES_ENV",
    "NODE_NAME",
    "POD_IP",
    "POD_NAME",
    "Coordinator",
    "DataPath",
    "EnvError",
    "GpuCollectives",
    "MemberEnv",
    "TuningEnv",
    "contract_names",
    "serving_ranks",
]

POD_IP = "EEP_POD_IP"
"""The pod's IP (downward API `status.podIP`): where the worker listens."""
POD_NAME = "EEP_POD_NAME"
"""The pod's name (downward API `metadata.name`)."""
NODE_NAME = "EEP_NODE_NAME"
"""The node the pod runs on (downward API `spec.nodeName`): whether the members share a host decides which
data path `Auto` may use (`DataPath.AUTO`)."""
FIELD_REFS: Mapping[str, str] = {
    POD_IP: "status.podIP",
    POD_NAME: "metadata.name",
    NODE_NAME: "spec.nodeName",
}
"""Downward-API variables: name -> `fieldRef.fieldPath`."""


class DataPath(StrEnum):
    """How a member's ranks carry the model's combine all-reduces (`spec.elasticEP.dataPath`,
    `EEP_DATA_PATH`).

    Each rank probes the route at start-up (known values, checked exactly, every rank agreeing) before it
    serves; the worker exits with `ExitCode.NO_DATA_PATH` when no allowed route passes (docs/known-issues.md,
    "Members on different hosts")."""

    AUTO = "Auto"
    """Where the device route is known to hold (every member on one host: the peer-to-peer route; or RDMA
    configured: `rdma`), probe it and, if it fails on any rank (an error, a wrong sum, or past its bound),
    probe and use the staged route. Members on different hosts without RDMA would get the host-proxy device
    route, which passes a probe and then stalls under load (docs/known-issues.md): they probe and use the
    staged route only. When a rank does not know its node (no `EEP_NODE_NAME`), as with RDMA. Every rank
    uses the same route. The default."""
    DEVICE = "Device"
    """Only Mooncake's device collectives on the device group (its peer-to-peer, RDMA or host-proxy route); a
    failed probe ends the pod. No host sync per combine."""
    STAGED = "Staged"
    """Each combine through pinned host memory on the CPU world group: device to host copy, one host sync, the
    all-reduce on Mooncake's CPU backend, host to device copy. Works where the device route does not (hosts
    without RDMA or peer-to-peer); costs a host sync per combine."""


GPU_COLLECTIVES_ENV = "MOONCAKE_PG_PREFERRED_GPU_COLLECTIVE_BACKEND"
"""Mooncake's own variable, read whenever a GPU process group is created (`mooncake_backend.cpp`)."""


class GpuCollectives(StrEnum):
    """Mooncake's GPU collectives (`GPU_COLLECTIVES_ENV`); `TuningEnv.gpu_collectives`, default `NEW`."""

    NEW = "new"
    """Mooncake's V2 device kernels. Their timeout is fixed when the group is created and a timeout counts as
    a failure, so after a death each device combine costs that timeout (`eep_contract.pause`). Measured to
    keep serving on one host without RDMA (the peer-to-peer route; between hosts without RDMA the worker's
    `DataPath.AUTO` takes the staged route instead, docs/known-issues.md): the worker's default."""
    LEGACY = "legacy"
    """Mooncake's default when the variable is unset: a kernel hands each collective to the host worker
    thread, which moves the data through the transfer engine. Without RDMA (TCP) the start-up probe passed and
    the first served steps stalled for 30 s on 2 H200s, mooncake-transfer-engine-cuda13 0.3.14
    (docs/known-issues.md)."""


class Coordinator(StrEnum):
    """Where global rank 0 (Mooncake's coordinator, the TCPStore, the planner) lives (`MemberEnv`)."""

    MEMBER0 = "Member0"
    """In member 0, which also serves: losing member 0 is a whole-group restart. The default."""
    DEDICATED = "Dedicated"
    """In a process of its own that serves nothing (rank 0 in a pod of one rank); every serving member holds
    ranks 1..N and is recoverable in place (docs/architecture.md, "a coordinator-only rank 0")."""


def serving_ranks(world_size: int, coordinator: Coordinator) -> range:
    """The global ranks that serve (hold experts, run the combines): all of them, or all but rank 0 when the
    coordinator is `Coordinator.DEDICATED`. Pure."""
    return range(1 if coordinator is Coordinator.DEDICATED else 0, world_size)


class EnvError(ValueError):
    """A variable of the contract holds a value of the wrong type (the message names it)."""


def _var(name: str, default: Any = dataclasses.MISSING) -> Any:
    return dataclasses.field(default=default, metadata={"env": name})


T = TypeVar("T", bound="_Env")


class _Env:
    """Shared rendering and parsing of a frozen dataclass whose fields carry `metadata["env"]`."""

    _TRUE: ClassVar[frozenset[str]] = frozenset({"1", "true", "yes", "on"})
    _FALSE: ClassVar[frozenset[str]] = frozenset({"0", "false", "no", "off", ""})

    @classmethod
    def names(cls) -> dict[str, str]:
        """Field name -> environment variable name."""
        return {f.name: f.metadata["env"] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """`{EEP_NAME: value}` for every field that is set (None fields are left out)."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.metadata["env"]] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str], **defaults: Any) -> Self:
        """Parse the fields present in `env`; absent ones take `defaults`, then the field's own default.

        Raises EnvError on a value that does not parse, or when a required variable is missing."""
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            name = f.metadata["env"]
            if name in env:
                values[f.name] = cls._parse(name, env[name], hints[f.name])
            elif f.name in defaults:
                values[f.name] = defaults[f.name]
            elif f.default is dataclasses.MISSING:
                raise EnvError(f"{name} is required")
        return cls(**values)

    @classmethod
    def _parse(cls, name: str, raw: str, hint: Any) -> Any:
        if get_origin(hint) in (Union, types.UnionType):
            (hint,) = (a for a in get_args(hint) if a is not type(None))
        try:
            if hint is bool:
                low = raw.strip().lower()
                if low not in cls._TRUE | cls._FALSE:
                    raise ValueError(raw)
                return low in cls._TRUE
            return hint(raw)
        except ValueError as e:
            members: list[Enum] = list(hint) if isinstance(hint, EnumMeta) else []
            choices = f" (one of {', '.join(str(m.value) for m in members)})" if members else ""
            raise EnvError(f"{name}={raw!r} is not a valid {hint.__name__}{choices}") from e


@dataclasses.dataclass(frozen=True)
class MemberEnv(_Env):
    """What the operator tells a member pod; every field is rendered."""

    namespace: str = _var("EEP_CLUSTER_NAMESPACE")
    """Namespace of the ElasticEPCluster."""
    cluster: str = _var("EEP_CLUSTER_NAME")
    """Name of the ElasticEPCluster (the worker watches its `status.membership`)."""
    member_index: int = _var("EEP_MEMBER_INDEX")
    """This pod's member index; member 0 holds global rank 0."""
    first_rank: int = _var("EEP_FIRST_RANK")
    """First global rank of this pod (`member_index x rank_count`)."""
    rank_count: int = _var("EEP_RANK_COUNT")
    """Ranks (processes) of this pod."""
    world_size: int = _var("EEP_WORLD_SIZE")
    """Global ranks of the group (`nodes x ranksPerNode`)."""
    coordinator_addr: str = _var("EEP_COORDINATOR_ADDR")
    """`host:port` of Mooncake's coordinator and the TCPStore on member 0."""
    backend: str = _var("EEP_BACKEND")
    """`mooncake` (GPU) or `mooncake-cpu`."""
    collective_timeout_s: float = _var("EEP_COLLECTIVE_TIMEOUT_S")
    """Mooncake collective timeout, seconds."""
    reconcile_window_s: float = _var("EEP_RECONCILE_WINDOW_S")
    """Mooncake fault-reconciliation window, seconds."""
    http_port: int = _var("EEP_HTTP_PORT")
    """Port of the engine's HTTP endpoints (readiness, inference)."""
    coordinator: Coordinator = _var("EEP_COORDINATOR", Coordinator.MEMBER0)  # noqa: RUF009
    """Where rank 0 lives (`Coordinator`); with `Coordinator.DEDICATED` the world has one rank more than the
    serving members hold, and member 0's pod is rank 0 alone."""
    data_path: DataPath = _var("EEP_DATA_PATH", DataPath.AUTO)  # noqa: RUF009 - a dataclasses.field
    """`spec.elasticEP.dataPath`."""
    rdma: bool = _var("EEP_RDMA", False)
    """RDMA is configured between the members (`spec.elasticEP.ibDevices` set and `forceTCP` off): the device
    route between hosts is then RDMA's, which `Auto` may probe."""
    """How the combines travel (`DataPath`: `Auto`, `Device` or `Staged`); the CR's `elasticEP.dataPath`."""


@dataclasses.dataclass(frozen=True)
class TuningEnv(_Env):
    """Knobs of the reference worker (`eep-worker serve`) that the operator does not render; the defaults are
    the worker's. A user sets them through `spec.template` env; benchmarks and tests set them directly."""

    rendezvous_port: int = _var("EEP_RENDEZVOUS_PORT", 0)
    """Port of the leader's ZMQ rendezvous service; 0: the coordinator port + 1."""
    join_timeout_s: float = _var("EEP_JOIN_TIMEOUT_S", 120.0)
    """Survivors: wait for joining ranks; joiners: how long a join may take. Seconds."""
    membership_source: str | None = _var("EEP_MEMBERSHIP_SOURCE", None)
    """`kube`, `file` or `zmq`; unset: `kube` inside a cluster, else `file`."""
    membership_file: str = _var("EEP_MEMBERSHIP_FILE", "")
    """Path of a JSON membership snapshot (source `file`)."""
    membership_zmq: str = _var("EEP_MEMBERSHIP_ZMQ", "")
    """`tcp://host:port` of a PUB feed of membership snapshots (source `zmq`)."""
    layers: int = _var("EEP_MODEL_LAYERS", 4)
    """Reference model: MoE layers."""
    experts: int = _var("EEP_MODEL_EXPERTS", 8)
    """Reference model: logical experts per layer."""
    top_k: int = _var("EEP_MODEL_TOP_K", 2)
    """Reference model: experts per token."""
    hidden: int = _var("EEP_MODEL_HIDDEN", 64)
    """Reference model: hidden size."""
    seed: int = _var("EEP_MODEL_SEED", 0)
    """Reference model: weight seed (every rank builds the same weights)."""
    physical_per_rank: int = _var("EEP_PHYSICAL_PER_RANK", 0)
    """Physical expert slots per rank; 0: enough for member 0 to hold every expert."""
    max_batch_tokens: int = _var("EEP_MAX_BATCH_TOKENS", 64)
    """Tokens per step (the step plan's slots)."""
    idle_step_s: float = _var("EEP_IDLE_STEP_S", 0.05)
    """Seconds the leader waits for requests before it runs an empty step."""
    subgroups: str = _var("EEP_SUBGROUPS", "auto")
    """`auto`, `column` or `none`: column subgroups besides the world."""
    warmup_delay_s: float = _var("EEP_WARMUP_DELAY_S", 0.0)
    """Simulated weight-load seconds before a rank joins or reports Ready (benchmarks)."""
    tail_timeout_s: float = _var("EEP_TAIL_TIMEOUT_S", DEFAULT_TAIL_TIMEOUT_S)
    """Collective timeout for the rest of a step after a rank saw a collective fail, seconds
    (`eep_contract.pause`)."""
    device_timeout_s: float = _var("EEP_DEVICE_COLLECTIVE_TIMEOUT_S", 0.0)
    """GPU device groups' creation-time collective timeout, seconds; 0: the collective timeout. Experimental:
    Mooncake's device collectives count a timeout as a failure."""
    gpu_collectives: GpuCollectives = _var(GPU_COLLECTIVES_ENV, GpuCollectives.NEW)  # noqa: RUF009
    """Mooncake's GPU collectives; the worker sets Mooncake's variable to this in every rank process, so
    Mooncake's own default (`GpuCollectives.LEGACY`) applies only where a user asks for it."""


def contract_names() -> frozenset[str]:
    """Every variable name of the pod contract: rendered, downward-API and tuning (all `EEP_*` but
    Mooncake's `GPU_COLLECTIVES_ENV`)."""
    return frozenset([*MemberEnv.names().values(), *FIELD_REFS, *TuningEnv.names().values()])
