"""`eep-operator`: `run` starts the operator (kopf, liveness, /metrics); `status` belongs to the CLI.

Flags: docs/dev/interfaces.md, "Operator process". This is the only place that reads the environment
(`HOSTNAME`, `POD_NAMESPACE`) and builds the Prometheus registry.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Sequence

import kopf
from kubernetes import client, config
from prometheus_client import CollectorRegistry, start_http_server

from eep_operator.handlers import Runtime, register
from eep_operator.io.admission import AdmissionTrigger
from eep_operator.io.events import KubeEventSink
from eep_operator.io.kube import ApiKubeClient
from eep_operator.io.lease import ApiLeaseClient, LeaderElector
from eep_operator.metrics import OperatorMetrics
from eep_operator.reconcile import Reconciler
from eep_operator.settings import LeaseSettings, ServerSettings, Settings, WatchSettings


def _run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run the operator")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", default=[], help="namespace to serve (repeatable)"
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="serve every namespace (default)")
    run.add_argument("--metrics-port", type=int, default=9090)
    run.add_argument("--health-port", type=int, default=8081)
    run.add_argument("--peering", default="elastic-ep-operator", help="name of the leader-election Lease")
    run.add_argument(
        "--lease-namespace",
        default=None,
        help="namespace of the Lease (default: first --namespace, else $POD_NAMESPACE, else default)",
    )
    run.add_argument("--lease-duration", type=float, default=15.0, help="seconds (stand-by takes over after)")
    run.add_argument("--lease-renew", type=float, default=5.0, help="seconds between renewals")
    run.add_argument(
        "--no-leader-election", action="store_true", help="act without a Lease (one replica only)"
    )
    run.add_argument("--resync-seconds", type=float, default=10.0)
    run.add_argument("--kubeconfig", default=None)
    run.add_argument("--log-level", default="INFO")


def settings_from_args(args: argparse.Namespace) -> Settings:
    namespaces = tuple(args.namespace)
    lease_ns = args.lease_namespace or (
        namespaces[0] if namespaces else os.environ.get("POD_NAMESPACE", "default")
    )
    return Settings(
        watch=WatchSettings(namespaces=namespaces, resync_seconds=args.resync_seconds),
        lease=LeaseSettings(
            enabled=not args.no_leader_election,
            name=args.peering,
            namespace=lease_ns,
            identity=f"{socket.gethostname()}-{os.getpid()}",
            duration_seconds=args.lease_duration,
            renew_seconds=args.lease_renew,
        ),
        server=ServerSettings(metrics_port=args.metrics_port, health_port=args.health_port),
        kubeconfig=args.kubeconfig,
    )


def make_api_client(settings: Settings) -> client.ApiClient:
    """The official client for the reconciles, the executor and the Lease."""
    cfg = client.Configuration()
    if settings.kubeconfig:
        config.load_kube_config(config_file=settings.kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    # The default pool (5 x CPUs) is smaller than the reconcile threads on a small node: a thread that
    # finds it full opens a fresh TLS connection and throws it away afterwards.
    cfg.connection_pool_maxsize = settings.reconcile_threads + 4  # + the Lease and kopf's startup calls
    return client.ApiClient(cfg)


def run_operator(settings: Settings) -> None:
    """Build everything and run kopf until stopped (SIGTERM/SIGINT)."""
    api_client = make_api_client(settings)
    # kopf has its own client; give it the same credentials (its login handler reads $KUBECONFIG).
    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = settings.kubeconfig
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    if settings.server.metrics_port:
        start_http_server(settings.server.metrics_port, addr=settings.server.host, registry=registry)
    kube = ApiKubeClient(api_client, request_timeout=settings.request_timeout_seconds)
    elector = None
    if settings.lease.enabled:
        elector = LeaderElector(
            ApiLeaseClient(api_client),
            namespace=settings.lease.namespace,
            name=settings.lease.name,
            identity=settings.lease.identity or f"{socket.gethostname()}-{os.getpid()}",
            duration_seconds=settings.lease.duration_seconds,
        )
    runtime = Runtime(
        Reconciler(
            kube=kube, events=KubeEventSink(kube), metrics=metrics, admission=AdmissionTrigger(metrics)
        ),
        kube,
        settings,
        elector,
    )
    kregistry = kopf.OperatorRegistry()
    register(kregistry, runtime)
    liveness = (
        f"http://{settings.server.host}:{settings.server.health_port}/healthz"
        if settings.server.health_port
        else None
    )
    asyncio.run(
        kopf.operator(
            registry=kregistry,
            standalone=True,
            clusterwide=not settings.watch.namespaces,
            namespaces=settings.watch.namespaces,
            liveness_endpoint=liveness,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eep-operator")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    sub.add_parser("status", help="show an ElasticEPCluster's members and membership", add_help=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["status"]:
        # Owned by the CLI (eep_operator.cli.status), imported lazily so `run` never needs rich.
        from eep_operator.cli import status as status_cli  # noqa: PLC0415

        return int(status_cli.main(argv[1:]))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    run_operator(settings_from_args(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
