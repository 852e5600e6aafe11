"""`kubectl eep status|watch|events NAME [-n NS]`: the kubectl plugin (the `kubectl-eep` executable).

kubectl runs any `kubectl-<name>` on PATH as `kubectl <name> ...`; the operator package installs this one as
a console script (deploy/krew/eep.yaml and docs/install.md say how to get it). `status` and `watch` are
`eep-operator status` and `eep-operator status --watch` (`eep_operator.cli.status`, the same renderer);
`events` lists the Events whose involvedObject is the ElasticEPCluster, oldest first, newest last, as
`kubectl events` prints them. kubectl hands the plugin its environment, so `$KUBECONFIG` applies; the
plugin's own `--kubeconfig` and `--context` are passed on. It needs get/watch on elasticepclusters and list on
events, nothing more. The rendering of events is pure (`event_rows`, `render_events`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from kubernetes.config import ConfigException
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from eep_contract.v1alpha1 import GROUP, KIND, PLURAL, VERSION
from eep_operator.cli import status
from eep_operator.cli.render import age

k8s: Any = kubernetes

COMMANDS = ("status", "watch", "events")
_EPOCH = datetime.min.replace(tzinfo=UTC)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kubectl eep",
        description="Look at an ElasticEPCluster: its member/rank map (status, watch) or its Events.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{status,watch,events}")
    helps = {
        "status": "print the member/rank map once",
        "watch": "follow the member/rank map live until interrupted",
        "events": "list the cluster's Events, newest last",
    }
    for command in COMMANDS:
        p = sub.add_parser(command, help=helps[command], description=helps[command])
        p.add_argument("name", help="ElasticEPCluster name")
        p.add_argument("-n", "--namespace", help="namespace (default: the context's, else 'default')")
        p.add_argument("--kubeconfig", help="kubeconfig (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
        p.add_argument("--context", help="kubeconfig context")
        if command == "watch":
            p.add_argument(
                "--timeout", type=float, default=None, metavar="SECONDS", help="stop after this many seconds"
            )
    return parser.parse_args(list(argv))


def status_argv(args: argparse.Namespace) -> list[str]:
    """The `eep-operator status` arguments for `kubectl eep status|watch`. Pure."""
    argv = [args.name]
    for flag, value in (("--namespace", args.namespace), ("--kubeconfig", args.kubeconfig)):
        if value:
            argv += [flag, value]
    if args.context:
        argv += ["--context", args.context]
    if args.command == "watch":
        argv.append("--watch")
        if args.timeout is not None:
            argv += ["--timeout", str(args.timeout)]
    return argv


def _when(event: dict[str, Any]) -> datetime:
    """When an Event last happened: lastTimestamp, else eventTime, firstTimestamp, creation time."""
    meta = event.get("metadata") or {}
    for value in (
        event.get("lastTimestamp"),
        event.get("eventTime"),
        event.get("firstTimestamp"),
        meta.get("creationTimestamp"),
    ):
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, str) and value:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return _EPOCH


def _order(event: dict[str, Any]) -> tuple[datetime, int]:
    """Sort key: the time (whole seconds on core/v1 Events, so several share one), then the resourceVersion,
    which is opaque by contract but etcd's revision in practice, so it breaks ties in creation order."""
    version = str((event.get("metadata") or {}).get("resourceVersion") or "")
    return _when(event), int(version) if version.isdigit() else 0


def event_rows(events: Sequence[dict[str, Any]], now: datetime) -> list[tuple[str, str, str, str, str]]:
    """(last seen, type, reason, count, message) per Event, oldest first. Pure."""
    rows = []
    for event in sorted(events, key=_order):
        when = _when(event)
        rows.append(
            (
                age(when if when != _EPOCH else None, now),
                str(event.get("type") or ""),
                str(event.get("reason") or ""),
                str(event.get("count") or 1),
                " ".join(str(event.get("message") or "").split()),
            )
        )
    return rows


def render_events(
    namespace: str, name: str, events: Sequence[dict[str, Any]], now: datetime
) -> RenderableType:
    """The Events of one ElasticEPCluster as a table, newest last. Pure."""
    if not events:
        return Text(f"no Events for ElasticEPCluster {namespace}/{name}", style="dim")
    table = Table(title=f"events of {namespace}/{name}", title_justify="left", expand=False)
    for column in ("last seen", "type", "reason", "count", "message"):
        table.add_column(
            column, no_wrap=column != "message", justify="right" if column == "count" else "left"
        )
    for seen, kind, reason, count, message in event_rows(events, now):
        # Text, not str: a message like "[member 1] ..." is not rich markup.
        style = "yellow" if kind == "Warning" else ""
        table.add_row(Text(seen), Text(kind, style=style), Text(reason), Text(count), Text(message))
    return table


def list_events(core: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    """The core/v1 Events about the ElasticEPCluster `name` (field selector on involvedObject)."""
    selector = f"involvedObject.kind={KIND},involvedObject.name={name}"
    result = core.list_namespaced_event(namespace, field_selector=selector)
    api = core.api_client
    return [api.sanitize_for_serialization(item) for item in result.items]


def events_main(args: argparse.Namespace, out: Console, err: Console, now: datetime) -> int:
    try:
        custom, context_namespace = status.load_client(args.kubeconfig, args.context)
    except (ConfigException, OSError) as exc:
        err.print(f"[red]cannot load Kubernetes configuration:[/red] {exc}")
        return status.EXIT_ERROR
    namespace = args.namespace or context_namespace
    try:
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, args.name)
        events = list_events(k8s.client.CoreV1Api(custom.api_client), namespace, args.name)
    except ApiException as exc:
        if exc.status == 404:
            err.print(f"ElasticEPCluster {namespace}/{args.name} not found")
            return status.EXIT_NOT_FOUND
        err.print(f"[red]API error {exc.status}:[/red] {exc.reason}")
        return status.EXIT_ERROR
    out.print(render_events(namespace, args.name, events, now))
    return 0


def main(
    argv: Sequence[str] | None = None,
    *,
    console: Console | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = console or Console()
    if args.command in ("status", "watch"):
        return status.main(status_argv(args), console=out, now=now)
    return events_main(args, out, Console(stderr=True), now())


if __name__ == "__main__":
    sys.exit(main())
