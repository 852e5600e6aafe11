"""Worker settings: one frozen dataclass, parsed once in `__main__` from flags with environment defaults.

The environment names are the contract's (`eep_contract.env`); flags beat env. Library
code receives a `Settings`; it never reads the environment itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from eep_contract.env import (
    NODE_NAME,
    POD_IP,
    Coordinator,
    DataPath,
    EnvError,
    GpuCollectives,
    MemberEnv,
    TuningEnv,
    serving_ranks,
)
from eep_contract.pause import DEFAULT_TAIL_TIMEOUT_S, RecoveryPause, combine_timeout, recovery_pause

__all__ = ["PROBE_COLLECTIVES", "ClusterSettings", "ModelSettings", "Settings", "TimeoutSettings", "parse"]

_MEMBER_DEFAULTS: dict[str, Any] = {
    "namespace": "default",
    "cluster": "eep",
    "member_index": 0,
    "first_rank": 0,
    "rank_count": 1,
    "world_size": 1,
    "coordinator_addr": "127.0.0.1:29500",
    "backend": "mooncake-cpu",
    "collective_timeout_s": 10.0,
    "reconcile_window_s": 5.0,
    "http_port": 8000,
}
"""Outside a member pod (tests, benchmarks, a hand-run worker) every `MemberEnv` value has a default."""
PROBE_COLLECTIVES = 6
"""All-reduces of one data-path probe at most: 3 sizes x 2 repeats (`datapath.probe_sizes`,
`datapath.PROBE_REPEATS`)."""


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    namespace: str
    name: str
    member_index: int
    """This pod's member index; member 0 holds global rank 0 (coordinator, TCPStore, leader)."""
    first_rank: int
    """First global rank of this pod."""
    rank_count: int
    """Ranks (processes) of this pod."""
    world_size: int
    coordinator_host: str
    coordinator_port: int
    """TCPStore port on member 0."""
    rendezvous_port: int
    """Port of the leader's ZMQ rendezvous service (default coordinator_port + 1)."""
    coordinator: Coordinator = Coordinator.MEMBER0
    """Where rank 0 lives: with `Coordinator.DEDICATED` it serves nothing; member 0's pod is rank 0 alone."""

    @property
    def dedicated(self) -> bool:
        """Rank 0 is a coordinator-only process (`Coordinator.DEDICATED`)."""
        return self.coordinator is Coordinator.DEDICATED

    @property
    def serving(self) -> range:
        """The global ranks that serve (`eep_contract.env.serving_ranks`)."""
        return serving_ranks(self.world_size, self.coordinator)

    def serving_index(self, rank: int) -> int:
        """``rank``'s local rank in the serving group (its index in the expert placement); -1 for a dedicated
        coordinator's rank 0, which does not serve."""
        return rank - self.serving.start if rank in self.serving else -1


@dataclasses.dataclass(frozen=True)
class TimeoutSettings:
    collective_timeout_s: float
    """Mooncake collective timeout, seconds."""
    reconcile_window_s: float
    """Mooncake fault-reconciliation window, seconds: how long survivors wait to agree on a failed rank."""
    join_timeout_s: float
    """Survivors: how long to wait for joining ranks to be ready. Joiners: how long a join may take."""
    tail_timeout_s: float = DEFAULT_TAIL_TIMEOUT_S
    """Collective timeout for the rest of a step after this rank saw a collective fail, seconds, until the
    fence has passed (`execution.StepExecutor.enter_tail`; `eep_contract.pause`)."""
    device_timeout_s: float = 0.0
    """GPU device groups only: the collective timeout they are created with, seconds; 0: the collective
    timeout. Mooncake's V2 device collectives fix it at creation and count a timeout as a failure (no
    liveness probe), so a value below the ranks' normal skew fails steps: experimental."""


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    num_layers: int
    num_experts: int
    top_k: int
    hidden_size: int
    seed: int
    physical_per_rank: int
    """Physical expert slots per rank (redundant replicas)."""
    max_batch_tokens: int
    """Tokens per step; the step plan has this many slots."""


@dataclasses.dataclass(frozen=True)
class Settings:
    cluster: ClusterSettings
    timeouts: TimeoutSettings
    model: ModelSettings
    backend: str
    """`mooncake` (GPU) or `mooncake-cpu`."""
    pod_ip: str
    http_port: int
    rejoin: bool
    membership_source: str
    """`kube` (ElasticEPCluster status watch), `file` or `zmq`."""
    membership_file: str
    membership_zmq: str
    idle_step_s: float
    """How long the leader waits for requests before it runs an empty step (which still carries the plan)."""
    subgroups: bool = True
    """Build the column subgroups besides the world (see `groups.py` for why mooncake-cpu defaults to off)."""
    warmup_delay_s: float = 0.0
    """Simulated weight-load time before a rank joins or reports Ready (benchmarks of time to capacity)."""
    data_path: DataPath = DataPath.AUTO
    """How the combines travel: `Auto` probes the device route and falls back to `Staged` (`datapath.py`)."""
    gpu_collectives: GpuCollectives = GpuCollectives.NEW
    """Mooncake's GPU collectives in every rank process (`Mooncake.configure` sets Mooncake's variable)."""
    node_name: str = ""
    """The node this pod runs on (`EEP_NODE_NAME`, downward API); empty when not known."""
    rdma: bool = False
    """RDMA is configured between the members (`EEP_RDMA`): `Auto` may use the device route between hosts."""

    @property
    def combine_timeout_s(self) -> float | None:
        """What a combine costs after a failure where the tail timeout does not reach it, seconds, on GPUs
        with the device data path (`Auto` may choose it): the device groups' creation-time timeout with
        Mooncake's V2 collectives, the collective timeout with its legacy ones; None where the combines run
        on Mooncake's CPU path (mooncake-cpu, or `Staged`). `eep_contract.pause.combine_timeout`."""
        t = self.timeouts
        return combine_timeout(
            backend=self.backend,
            data_path=self.data_path,
            collective_timeout_s=t.collective_timeout_s,
            device_timeout_s=t.device_timeout_s,
            gpu_collectives=self.gpu_collectives.value,
        )

    @property
    def pause(self) -> RecoveryPause:
        """The recovery's bounds for these settings (`eep_contract.pause.recovery_pause`, the formula the
        operator's check shares)."""
        t = self.timeouts
        return recovery_pause(
            layers=self.model.num_layers,
            collective_timeout_s=t.collective_timeout_s,
            reconcile_window_s=t.reconcile_window_s,
            tail_timeout_s=t.tail_timeout_s,
            combine_timeout_s=self.combine_timeout_s,
        )

    @property
    def fence_window_s(self) -> float:
        """The reconciliation window Mooncake's coordinator gets: the configured one, raised where needed so
        that the leader reaches its step fence before the window closes (`pause`)."""
        return self.pause.window_s

    @property
    def fence_settle_s(self) -> float:
        """How long a fence waits for Mooncake's new view before it serves on with the suspects: the window
        plus two collective timeouts (the failure report that opened it) and a margin."""
        return self.fence_window_s + 2 * self.timeouts.collective_timeout_s + 2.0

    @property
    def probe_timeout_s(self) -> float:
        """How long one start-up probe of a data path may take on a rank, seconds (`datapath.probe`): each of
        its collectives (at most `PROBE_COLLECTIVES`) may take a collective timeout before Mooncake fails it,
        plus 10 s for the first connections to the peers. Past it, the route counts as failed."""
        return PROBE_COLLECTIVES * self.timeouts.collective_timeout_s + 10.0

    @property
    def probe_drain_s(self) -> float:
        """After a device probe outlived its bound: how long a rank waits for that collective to return
        before it probes the staged route on the same stream, seconds. Mooncake's transfer engine drops a TCP
        transfer that makes no progress for 30 s (`MC_TCP_PROGRESS_TIMEOUT_SEC`), which releases a failed
        device collective (45 s measured on H200s, docs/known-issues.md): 60 s, or the probe's bound if
        longer."""
        return max(60.0, self.probe_timeout_s)

    def on_gpu(self, rank: int) -> bool:
        """``rank`` runs GPU work: backend `mooncake` and serving (a dedicated coordinator has none)."""
        return self.backend == "mooncake" and self.cluster.serving_index(rank) >= 0

    @property
    def ranks(self) -> range:
        return range(self.cluster.first_rank, self.cluster.first_rank + self.cluster.rank_count)


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """Flags whose defaults come from the contract's environment (`eep_contract.env`); raises EnvError on a
    variable that does not parse."""
    member = MemberEnv.from_env(env, **_MEMBER_DEFAULTS)
    tune = TuningEnv.from_env(env)
    names = {**MemberEnv.names(), **TuningEnv.names()}

    def h(field: str, text: str = "") -> str:
        return f"{text} (env {names[field]})".strip()

    p = argparse.ArgumentParser(prog="eep-worker")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run this pod's ranks and its HTTP endpoints")
    s.add_argument(
        "--rejoin", action="store_true", help="start as a replacement that joins running survivors"
    )
    s.add_argument("--namespace", default=member.namespace, help=h("namespace"))
    s.add_argument("--cluster", default=member.cluster, help=h("cluster"))
    s.add_argument("--member-index", type=int, default=member.member_index, help=h("member_index"))
    s.add_argument("--first-rank", type=int, default=member.first_rank, help=h("first_rank"))
    s.add_argument("--rank-count", type=int, default=member.rank_count, help=h("rank_count"))
    s.add_argument("--world-size", type=int, default=member.world_size, help=h("world_size"))
    s.add_argument("--coordinator", default=member.coordinator_addr, help=h("coordinator_addr", "host:port"))
    s.add_argument(
        "--rendezvous-port", type=int, default=tune.rendezvous_port, help=h("rendezvous_port", "0: port+1")
    )
    s.add_argument(
        "--backend", default=member.backend, choices=["mooncake", "mooncake-cpu"], help=h("backend")
    )
    s.add_argument(
        "--collective-timeout-s",
        type=float,
        default=member.collective_timeout_s,
        help=h("collective_timeout_s"),
    )
    s.add_argument(
        "--reconcile-window-s", type=float, default=member.reconcile_window_s, help=h("reconcile_window_s")
    )
    s.add_argument("--join-timeout-s", type=float, default=tune.join_timeout_s, help=h("join_timeout_s"))
    s.add_argument(
        "--tail-timeout-s",
        type=float,
        default=tune.tail_timeout_s,
        help=h("tail_timeout_s", "collective timeout for the rest of a step after a failure"),
    )
    s.add_argument(
        "--device-timeout-s",
        type=float,
        default=tune.device_timeout_s,
        help=h(
            "device_timeout_s", "GPU device groups' creation-time timeout, experimental; 0: the collective's"
        ),
    )
    s.add_argument("--pod-ip", default=env.get(POD_IP, "127.0.0.1"), help=f"(env {POD_IP})")
    s.add_argument("--node-name", default=env.get(NODE_NAME, ""), help=f"(env {NODE_NAME})")
    s.add_argument(
        "--rdma",
        action=argparse.BooleanOptionalAction,
        default=member.rdma,
        help=h("rdma", "RDMA between the members: Auto may use the device route between hosts"),
    )
    s.add_argument("--http-port", type=int, default=member.http_port, help=h("http_port"))
    default_source = "kube" if "KUBERNETES_SERVICE_HOST" in env else "file"
    s.add_argument(
        "--membership-source",
        default=tune.membership_source or default_source,
        choices=["kube", "file", "zmq"],
        help=h("membership_source"),
    )
    s.add_argument("--membership-file", default=tune.membership_file, help=h("membership_file"))
    s.add_argument(
        "--membership-zmq",
        default=tune.membership_zmq,
        help=h("membership_zmq", "tcp://host:port of a PUB feed"),
    )
    s.add_argument("--layers", type=int, default=tune.layers, help=h("layers"))
    s.add_argument("--experts", type=int, default=tune.experts, help=h("experts"))
    s.add_argument("--top-k", type=int, default=tune.top_k, help=h("top_k"))
    s.add_argument("--hidden", type=int, default=tune.hidden, help=h("hidden"))
    s.add_argument("--seed", type=int, default=tune.seed, help=h("seed"))
    s.add_argument(
        "--physical-per-rank",
        type=int,
        default=tune.physical_per_rank,
        help=h("physical_per_rank", "0: enough for member 0 to hold every expert"),
    )
    s.add_argument("--max-batch-tokens", type=int, default=tune.max_batch_tokens, help=h("max_batch_tokens"))
    s.add_argument("--idle-step-s", type=float, default=tune.idle_step_s, help=h("idle_step_s"))
    s.add_argument(
        "--subgroups",
        default=tune.subgroups,
        choices=["auto", "column", "none"],
        help=h("subgroups", "column subgroups besides the world; auto: column on GPUs, none on mooncake-cpu"),
    )
    s.add_argument(
        "--warmup-delay-s",
        type=float,
        default=tune.warmup_delay_s,
        help=h("warmup_delay_s", "simulated weight-load time before a rank joins or reports Ready"),
    )
    s.add_argument(
        "--coordinator-mode",
        type=Coordinator,
        default=member.coordinator,
        choices=list(Coordinator),
        help=h("coordinator", "where rank 0 lives"),
    )
    s.add_argument(
        "--data-path",
        type=_data_path,
        default=member.data_path,
        metavar="{" + ",".join(m.value for m in DataPath) + "}",
        help=h("data_path", "how the combines travel; Auto: probe the device route, else Staged"),
    )
    return p


def _data_path(text: str) -> DataPath:
    """`--data-path`: a `DataPath` value, any case (`staged` as well as `Staged`)."""
    for mode in DataPath:
        if text.lower() == mode.value.lower():
            return mode
    raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(m.value for m in DataPath)}")


def parse(argv: Sequence[str], env: Mapping[str, str]) -> Settings:
    """Flags beat env. Raises SystemExit (argparse) on bad input, a bad environment variable included."""
    try:
        p = _parser(env)
    except EnvError as e:
        raise SystemExit(f"eep-worker: {e}") from e
    a = p.parse_args(list(argv))
    host, _, port_s = str(a.coordinator).rpartition(":")
    if not host or not port_s.isdigit():
        p.error(f"--coordinator must be host:port, got {a.coordinator!r}")
    port = int(port_s)
    offset = 1 if a.coordinator_mode is Coordinator.DEDICATED else 0
    if a.first_rank < offset:
        if a.rank_count != 1:
            p.error(f"a dedicated coordinator's pod holds rank 0 alone, not {a.rank_count} ranks")
    elif (a.world_size - offset) % a.rank_count or a.first_rank + a.rank_count > a.world_size:
        p.error(f"ranks {a.first_rank}+{a.rank_count} do not fit a world of {a.world_size}")
    ppr = a.physical_per_rank or math.ceil(a.experts / a.rank_count)
    return Settings(
        cluster=ClusterSettings(
            namespace=a.namespace,
            name=a.cluster,
            member_index=a.member_index,
            first_rank=a.first_rank,
            rank_count=a.rank_count,
            world_size=a.world_size,
            coordinator_host=host,
            coordinator_port=port,
            rendezvous_port=a.rendezvous_port or port + 1,
            coordinator=a.coordinator_mode,
        ),
        timeouts=TimeoutSettings(
            a.collective_timeout_s,
            a.reconcile_window_s,
            a.join_timeout_s,
            a.tail_timeout_s,
            a.device_timeout_s,
        ),
        model=ModelSettings(a.layers, a.experts, a.top_k, a.hidden, a.seed, ppr, a.max_batch_tokens),
        backend=a.backend,
        pod_ip=a.pod_ip,
        http_port=a.http_port,
        rejoin=a.rejoin,
        membership_source=a.membership_source,
        membership_file=a.membership_file,
        membership_zmq=a.membership_zmq,
        idle_step_s=a.idle_step_s,
        warmup_delay_s=a.warmup_delay_s,
        data_path=a.data_path,
        gpu_collectives=TuningEnv.from_env(env).gpu_collectives,
        node_name=a.node_name,
        rdma=a.rdma,
        subgroups=a.subgroups == "column" or (a.subgroups == "auto" and a.backend == "mooncake"),
    )
