"""`eep-operator status NAME [-n NS] [--watch] [--kubeconfig PATH]`: one ElasticEPCluster's member/rank map.

Called by `eep_operator.__main__` for the `status` subcommand. The rendering is pure
(`eep_operator.cli.render`); this module only parses arguments, reads the CR from the API server (get, or
watch with `--watch`) and prints. It needs read access to elasticepclusters only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from kubernetes.config import ConfigException
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live

from eep_contract.v1alpha1 import GROUP, PLURAL, VERSION, ElasticEPCluster
from eep_operator.cli.render import render_status

# The kubernetes client's functions carry no annotations; one Any-typed handle keeps mypy --strict quiet.
k8s: Any = kubernetes

EXIT_NOT_FOUND = 1
EXIT_ERROR = 3


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="eep-operator status", description="Show the member/rank map of an ElasticEPCluster."
    )
    parser.add_argument("name", help="ElasticEPCluster name")
    parser.add_argument("-n", "--namespace", help="namespace (default: the context's, else 'default')")
    parser.add_argument("-w", "--watch", action="store_true", help="follow changes live until interrupted")
    parser.add_argument("--kubeconfig", help="kubeconfig (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --watch: stop after this many seconds",
    )
    return parser.parse_args(list(argv))


def load_client(kubeconfig: str | None, context: str | None) -> tuple[Any, str]:
    """A CustomObjectsApi and the context's namespace. In-cluster config when no kubeconfig is found."""
    try:
        k8s.config.load_kube_config(config_file=kubeconfig, context=context)
        _, active = k8s.config.list_kube_config_contexts(config_file=kubeconfig)
        namespace = (active or {}).get("context", {}).get("namespace") or "default"
    except ConfigException:
        if kubeconfig is not None:
            raise
        k8s.config.load_incluster_config()
        namespace = "default"
    return k8s.client.CustomObjectsApi(), namespace


def parse_cluster(obj: dict[str, Any]) -> ElasticEPCluster:
    return ElasticEPCluster.model_validate(obj)


def watch_objects(api: Any, namespace: str, name: str, timeout: float | None) -> Iterator[dict[str, Any]]:
    """The CR, then every later version of it (ADDED/MODIFIED events) until `timeout` or interruption."""
    kwargs: dict[str, Any] = {"field_selector": f"metadata.name={name}"}
    if timeout is not None:
        kwargs["timeout_seconds"] = max(1, int(timeout))
    stream = k8s.watch.Watch().stream(
        api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, **kwargs
    )
    for event in stream:
        if event["type"] in {"ADDED", "MODIFIED"}:
            yield event["object"]
        elif event["type"] == "DELETED":
            return


def main(
    argv: Sequence[str] | None = None,
    *,
    console: Console | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = console or Console()
    err = Console(stderr=True)

    try:
        api, context_namespace = load_client(args.kubeconfig, args.context)
    except (ConfigException, OSError) as exc:
        err.print(f"[red]cannot load Kubernetes configuration:[/red] {exc}")
        return EXIT_ERROR
    namespace = args.namespace or context_namespace
    try:
        if not args.watch:
            obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, args.name)
            out.print(render_status(parse_cluster(obj), now()))
            return 0
        found = False
        if out.is_terminal:
            with Live(console=out, auto_refresh=False) as live:
                for obj in watch_objects(api, namespace, args.name, args.timeout):
                    found = True
                    live.update(render_status(parse_cluster(obj), now()), refresh=True)
        else:
            # Piped or logged: one view per change, separated, instead of redrawing in place.
            for obj in watch_objects(api, namespace, args.name, args.timeout):
                found = True
                out.rule(now().strftime("%H:%M:%S"))
                out.print(render_status(parse_cluster(obj), now()))
        if not found:
            err.print(f"ElasticEPCluster {namespace}/{args.name} not found")
            return EXIT_NOT_FOUND
        return 0
    except ApiException as exc:
        if exc.status == 404:
            err.print(f"ElasticEPCluster {namespace}/{args.name} not found")
            return EXIT_NOT_FOUND
        err.print(f"[red]API error {exc.status}:[/red] {exc.reason}")
        return EXIT_ERROR
    except ValidationError as exc:
        err.print(f"[red]ElasticEPCluster {namespace}/{args.name} does not match v1alpha1:[/red] {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
