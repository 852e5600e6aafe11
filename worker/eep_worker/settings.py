"""Worker settings: one frozen dataclass, parsed once in `__main__` from flags with environment defaults.

The environment names are the contract in docs/dev/interfaces.md ("Member pods"); flags beat env. Library
code receives a `Settings`; it never reads the environment itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping, Sequence

__all__ = ["ClusterSettings", "ModelSettings", "Settings", "TimeoutSettings", "parse"]


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


@dataclasses.dataclass(frozen=True)
class TimeoutSettings:
    collective_timeout_s: float
    """Mooncake collective timeout, seconds."""
    reconcile_window_s: float
    """Mooncake fault-reconciliation window, seconds: how long survivors wait to agree on a failed rank."""
    join_timeout_s: float
    """Survivors: how long to wait for joining ranks to be ready. Joiners: how long a join may take."""


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

    @property
    def fence_window_s(self) -> float:
        """The reconciliation window Mooncake's coordinator gets: the configured one, raised where needed so
        that the leader reaches its step fence before the window closes. After a death each collective that
        still includes the dead rank can take a collective timeout, and the leader sees the failure at the
        end of a step (1 plan broadcast + one combine per layer), then broadcasts the FENCE plan."""
        t = self.timeouts
        return max(t.reconcile_window_s, (self.model.num_layers + 2) * t.collective_timeout_s + 1.0)

    @property
    def fence_settle_s(self) -> float:
        """How long a fence waits for Mooncake's new view before it serves on with the suspects: the window
        plus two collective timeouts (the failure report that opened it) and a margin."""
        return self.fence_window_s + 2 * self.timeouts.collective_timeout_s + 2.0

    @property
    def ranks(self) -> range:
        return range(self.cluster.first_rank, self.cluster.first_rank + self.cluster.rank_count)


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    def e(name: str, default: str) -> str:
        return env.get(name, default)

    p = argparse.ArgumentParser(prog="eep-worker")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run this pod's ranks and its HTTP endpoints")
    s.add_argument(
        "--rejoin", action="store_true", help="start as a replacement that joins running survivors"
    )
    s.add_argument("--namespace", default=e("EEP_CLUSTER_NAMESPACE", "default"))
    s.add_argument("--cluster", default=e("EEP_CLUSTER_NAME", "eep"))
    s.add_argument("--member-index", type=int, default=int(e("EEP_MEMBER_INDEX", "0")))
    s.add_argument("--first-rank", type=int, default=int(e("EEP_FIRST_RANK", "0")))
    s.add_argument("--rank-count", type=int, default=int(e("EEP_RANK_COUNT", "1")))
    s.add_argument("--world-size", type=int, default=int(e("EEP_WORLD_SIZE", "1")))
    s.add_argument("--coordinator", default=e("EEP_COORDINATOR_ADDR", "127.0.0.1:29500"), help="host:port")
    s.add_argument(
        "--rendezvous-port", type=int, default=int(e("EEP_RENDEZVOUS_PORT", "0")), help="0: port+1"
    )
    s.add_argument(
        "--backend", default=e("EEP_BACKEND", "mooncake-cpu"), choices=["mooncake", "mooncake-cpu"]
    )
    s.add_argument("--collective-timeout-s", type=float, default=float(e("EEP_COLLECTIVE_TIMEOUT_S", "10")))
    s.add_argument("--reconcile-window-s", type=float, default=float(e("EEP_RECONCILE_WINDOW_S", "5")))
    s.add_argument("--join-timeout-s", type=float, default=float(e("EEP_JOIN_TIMEOUT_S", "120")))
    s.add_argument("--pod-ip", default=e("EEP_POD_IP", "127.0.0.1"))
    s.add_argument("--http-port", type=int, default=int(e("EEP_HTTP_PORT", "8000")))
    default_source = "kube" if "KUBERNETES_SERVICE_HOST" in env else "file"
    s.add_argument(
        "--membership-source",
        default=e("EEP_MEMBERSHIP_SOURCE", default_source),
        choices=["kube", "file", "zmq"],
    )
    s.add_argument("--membership-file", default=e("EEP_MEMBERSHIP_FILE", ""))
    s.add_argument(
        "--membership-zmq", default=e("EEP_MEMBERSHIP_ZMQ", ""), help="tcp://host:port of a PUB feed"
    )
    s.add_argument("--layers", type=int, default=int(e("EEP_MODEL_LAYERS", "4")))
    s.add_argument("--experts", type=int, default=int(e("EEP_MODEL_EXPERTS", "8")))
    s.add_argument("--top-k", type=int, default=int(e("EEP_MODEL_TOP_K", "2")))
    s.add_argument("--hidden", type=int, default=int(e("EEP_MODEL_HIDDEN", "64")))
    s.add_argument("--seed", type=int, default=int(e("EEP_MODEL_SEED", "0")))
    s.add_argument(
        "--physical-per-rank",
        type=int,
        default=int(e("EEP_PHYSICAL_PER_RANK", "0")),
        help="0: enough for member 0 to hold every expert",
    )
    s.add_argument("--max-batch-tokens", type=int, default=int(e("EEP_MAX_BATCH_TOKENS", "64")))
    s.add_argument("--idle-step-s", type=float, default=float(e("EEP_IDLE_STEP_S", "0.05")))
    s.add_argument(
        "--subgroups",
        default=e("EEP_SUBGROUPS", "auto"),
        choices=["auto", "column", "none"],
        help="column subgroups besides the world; auto: column on GPUs, none on mooncake-cpu",
    )
    s.add_argument(
        "--warmup-delay-s",
        type=float,
        default=float(e("EEP_WARMUP_DELAY_S", "0")),
        help="simulated weight-load time before a rank joins or reports Ready",
    )
    return p


def parse(argv: Sequence[str], env: Mapping[str, str]) -> Settings:
    """Flags beat env. Raises SystemExit (argparse) on bad input."""
    p = _parser(env)
    a = p.parse_args(list(argv))
    host, _, port_s = str(a.coordinator).rpartition(":")
    if not host or not port_s.isdigit():
        p.error(f"--coordinator must be host:port, got {a.coordinator!r}")
    port = int(port_s)
    if a.world_size % a.rank_count or a.first_rank + a.rank_count > a.world_size:
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
        ),
        timeouts=TimeoutSettings(a.collective_timeout_s, a.reconcile_window_s, a.join_timeout_s),
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
        subgroups=a.subgroups == "column" or (a.subgroups == "auto" and a.backend == "mooncake"),
    )
