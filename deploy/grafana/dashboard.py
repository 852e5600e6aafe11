"""Generate the Grafana dashboard of elastic-ep-operator from Python.

`python deploy/grafana/dashboard.py` writes `deploy/grafana/elastic-ep.json` and the chart's copy
`charts/elastic-ep-operator/files/elastic-ep.json` (the chart puts it in a ConfigMap for Grafana's dashboard
sidecar); `--check` compares instead and exits 1 on a difference, like `python -m eep_contract.crd`.
Who calls it: a person after changing a panel, and tests/dashboard/ (`--check`, the schema, the queries).

Built with Grafana's own `grafana-foundation-sdk` (pinned `1769699379!11.6.0`: types and builders generated
from Grafana 11.6's schemas; the JSON is the classic dashboard model, which Grafana 11, 12 and 13 load) rather
than `grafanalib`: grafanalib's last release, 0.7.1, is of 2024-01-12, it ships no type information (no
`py.typed`, so `mypy --strict` sees `Any`) and it is written by hand after Grafana's JSON, which it trails;
the foundation SDK is generated from the same schemas Grafana validates against, typed, and released with
Grafana (its last build is of 2026-01-29). Its package versions carry an epoch per Grafana version (a plain
`pip install` picks the build for Grafana 10.1), so the pin names the epoch too.

Metric names and labels: docs/dev/interfaces.md. The label values that the panels spell (phases, member
states, failure reasons, recovery phases) come from `eep_contract`, so a renamed value changes the dashboard
too. Operator series carry `namespace` and `cluster`; worker series carry `rank` plus the scrape's `namespace`
and `pod` target labels (docs/install.md, "Dashboard"): a member pod is `<cluster>-<index>`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus as gp
from grafana_foundation_sdk.builders import stat as gs
from grafana_foundation_sdk.builders import statetimeline as gst
from grafana_foundation_sdk.builders import timeseries as gts
from grafana_foundation_sdk.builders.common import StackingConfig, VizLegendOptions, VizTooltipOptions
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as mc
from grafana_foundation_sdk.models import dashboard as md

from eep_contract.crd import write_or_check
from eep_contract.reasons import RecoveryPhase
from eep_contract.v1alpha1 import Phase

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_FILE = Path("deploy") / "grafana" / "elastic-ep.json"
CHART_FILE = Path("charts") / "elastic-ep-operator" / "files" / "elastic-ep.json"
UID = "elastic-ep"
TITLE = "Elastic EP"

DATASOURCE = md.DataSourceRef(type_val="prometheus", uid="${datasource}")
# Operator series: labels namespace and cluster. Worker series: the scrape's namespace and pod labels.
OP = 'namespace=~"$namespace", cluster=~"$cluster"'
WORKER = 'namespace=~"$namespace", pod=~"$cluster-[0-9]+"'
KEYS = "namespace, cluster"
# A panel of any kind, or a row.
Item = cogbuilder.Builder[md.Panel] | gd.Row

# Phase -> (number plotted, colour). The numbers exist only so a state timeline can colour a phase.
PHASE_CODES: dict[Phase, tuple[int, str]] = {
    Phase.PENDING: (1, "yellow"),
    Phase.RUNNING: (2, "green"),
    Phase.DEGRADED: (3, "orange"),
    Phase.RECOVERING: (4, "blue"),
    Phase.RESTARTING: (5, "purple"),
    Phase.FAILED: (6, "red"),
}
# The worker's recovery phases in the order a recovery goes through them.
RECOVERY_PHASES = (
    RecoveryPhase.FENCE,
    RecoveryPhase.WAIT_PEER,
    RecoveryPhase.RECOVER_RANKS,
    RecoveryPhase.BROADCAST,
    RecoveryPhase.JOIN,
    RecoveryPhase.TOTAL,
)


# ---- PromQL ------------------------------------------------------------------------------------------


def m(metric: str, selector: str = OP) -> str:
    return f"{metric}{{{selector}}}"


def zero_per_cluster() -> str:
    """0 for every cluster the operator reports, so a counter that never moved reads 0, not "No data"."""
    return f"0 * sum by ({KEYS}) ({m('elasticep_world_size')})"


def events(metric: str, by: tuple[str, ...], window: str) -> str:
    """How many times `metric` (an operator counter) grew within `window`, by namespace, cluster and `by`.

    A labelled counter's series is born at its first event, and increase() cannot see the step from
    "absent" to 1. So, per series: its increase where that is positive, else its whole value if it did not
    exist `window` ago (born within the window; the alert rules do the same), else its increase (0); and 0
    for a cluster none of whose series exist yet.
    """
    keys = ", ".join((KEYS, *by))
    series = m(metric)
    grew = f"sum by ({keys}) (increase({series}[{window}]))"
    born = f"sum by ({keys}) ({series} unless {series} offset {window})"
    return f"({grew} > 0)\nor {born}\nor {grew}\nor on ({KEYS}) {zero_per_cluster()}"


def phase_code() -> str:
    """The current phase of each cluster as its number in PHASE_CODES (the phase gauge is 1 for it)."""
    arms = " or ".join(
        f"{code} * " + m("elasticep_cluster_phase", OP + f', phase="{phase.value}"')
        for phase, (code, _) in PHASE_CODES.items()
    )
    return f"sum by ({KEYS}) ({arms})"


def time_in_phase(phase: Phase) -> str:
    """Seconds of the dashboard's range spent in `phase`."""
    gauge = m("elasticep_cluster_phase", OP + f', phase="{phase.value}"')
    return f"sum by ({KEYS}) (avg_over_time({gauge}[$__range])) * $__range_s"


def quantile(q: float, bucket: str, by: str) -> str:
    """A quantile of every observation since the process started (cumulative buckets, no rate()): a
    recovery is rare, and a rate over a short window would show it only for that window, or not at all
    for the first one (the series is born with it)."""
    return f"histogram_quantile({q}, sum by ({by}, le) ({bucket}))"


# ---- panels ------------------------------------------------------------------------------------------


def target(expr: str, legend: str, ref: str = "A") -> gp.Dataquery:
    return gp.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE).range()


def legend() -> VizLegendOptions:
    return (
        VizLegendOptions()
        .show_legend(True)
        .display_mode(mc.LegendDisplayMode.LIST)
        .placement(mc.LegendPlacement.BOTTOM)
        .calcs([])
    )


def tooltip() -> VizTooltipOptions:
    return VizTooltipOptions().mode(mc.TooltipDisplayMode.MULTI).sort(mc.SortOrder.DESCENDING)


def timeseries(title: str, description: str, unit: str, *targets: gp.Dataquery) -> gts.Panel:
    panel = (
        gts.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .legend(legend())
        .tooltip(tooltip())
        .line_width(1)
        .fill_opacity(10)
        .span(12)
        .height(8)
    )
    for t in targets:
        panel.with_target(t)
    return panel


def bars(title: str, description: str, *targets: gp.Dataquery) -> gts.Panel:
    """Counts per interval, stacked."""
    return (
        timeseries(title, description, "short", *targets)
        .draw_style(mc.GraphDrawStyle.BARS)
        .fill_opacity(80)
        .stacking(StackingConfig().mode(mc.StackingMode.NORMAL))
        .decimals(0)
        .min(0)
        .span(6)
    )


def stat(title: str, description: str, unit: str, *targets: gp.Dataquery) -> gs.Panel:
    panel = (
        gs.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .graph_mode(mc.BigValueGraphMode.NONE)
        .color_mode(mc.BigValueColorMode.VALUE)
        .text_mode(mc.BigValueTextMode.VALUE_AND_NAME)
        .span(4)
        .height(4)
    )
    for t in targets:
        panel.with_target(t)
    return panel


def phase_mappings() -> list[md.ValueMapping]:
    options = {
        str(code): md.ValueMappingResult(text=phase.value, color=color, index=i)
        for i, (phase, (code, color)) in enumerate(PHASE_CODES.items())
    }
    return [md.ValueMap(options=options)]


def cluster_rows() -> list[Item]:
    ranks = m("elasticep_world_size") + " - " + m("elasticep_active_ranks")
    return [
        gd.Row("Cluster"),
        gst.Panel()
        .title("Phase")
        .description(
            "The phase of each ElasticEPCluster (status.phase): Running, Degraded (a member failed, the "
            "others serve), Recovering (a replacement is joining), Restarting (whole group), Failed (restart "
            "budget exhausted), Pending."
        )
        .datasource(DATASOURCE)
        .with_target(target(phase_code(), "{{namespace}}/{{cluster}}"))
        .mappings(phase_mappings())
        .show_value(mc.VisibilityMode.NEVER)
        .merge_values(True)
        .legend(legend().show_legend(False))
        .span(16)
        .height(5),
        stat(
            "Time not Running (range)",
            "Seconds of the dashboard's time range each cluster spent Degraded, and in any phase other "
            "than Running (Degraded, Recovering, Restarting, Pending, Failed).",
            "s",
            target(time_in_phase(Phase.DEGRADED), "{{cluster}} Degraded", "A"),
            target(
                f"$__range_s - {time_in_phase(Phase.RUNNING)}",
                "{{cluster}} not Running",
                "B",
            ),
        )
        .span(8)
        .height(5),
        timeseries(
            "Active and world ranks",
            "Ranks in status.membership.activeRanks against the world size (nodes x ranksPerNode), and "
            "how many are missing.",
            "short",
            target(m("elasticep_active_ranks"), "{{cluster}} active", "A"),
            target(m("elasticep_world_size"), "{{cluster}} world", "B"),
            target(ranks, "{{cluster}} missing", "C"),
        )
        .decimals(0)
        .min(0),
        timeseries(
            "Members by state",
            "Members per state (Pending, Healthy, Failed, Restarting, Joining), stacked.",
            "short",
            target(f"sum by ({KEYS}, state) ({m('elasticep_members')})", "{{cluster}} {{state}}"),
        )
        .stacking(StackingConfig().mode(mc.StackingMode.NORMAL))
        .decimals(0)
        .min(0),
        timeseries(
            "Membership epoch",
            "status.membership.epoch: grows by one on every membership change (failure, join, admission).",
            "none",
            target(m("elasticep_membership_epoch"), "{{cluster}}"),
        )
        .line_interpolation(mc.LineInterpolation.STEP_AFTER)
        .decimals(0),
        timeseries(
            "Recovery in progress vs budget",
            "Age of the oldest unfinished recovery (0 when none) against its budget "
            "(recovery.rejoinTimeoutSeconds + recovery.backoffMaxSeconds); ElasticEPRecoveryOverBudget fires "
            "above it.",
            "s",
            target(m("elasticep_recovery_in_progress_seconds"), "{{cluster}} in progress", "A"),
            target(m("elasticep_recovery_budget_seconds"), "{{cluster}} budget", "B"),
        ),
    ]


def failure_rows() -> list[Item]:
    w = "$__rate_interval"
    return [
        gd.Row("Failures and restarts"),
        bars(
            "Rank failures by reason",
            "Member failures the operator saw, by signal (ContainerExit, PodFailed, PodDeleted, Evicted, "
            "NodeLost, JoinTimeout).",
            target(events("elasticep_rank_failures_total", ("reason",), w), "{{cluster}} {{reason}}"),
        ),
        bars(
            "Member restarts",
            "Replacement pods created in join mode, by member index.",
            target(
                events("elasticep_member_restarts_total", ("member",), w), "{{cluster}} member {{member}}"
            ),
        ),
        bars(
            "Group restarts",
            "Whole-group restarts, by cause (MemberZeroLost, TooManyUnavailable, GroupRestartMode): "
            "serving stopped until every member rejoined.",
            target(events("elasticep_group_restarts_total", ("reason",), w), "{{cluster}} {{reason}}"),
        ),
        bars(
            "Recoveries by result",
            "Finished recoveries (member or group), Succeeded or Failed.",
            target(events("elasticep_recoveries_total", ("result",), w), "{{cluster}} {{result}}"),
        ),
    ]


def recovery_rows() -> list[Item]:
    op_bucket = m("elasticep_recovery_duration_seconds_bucket")
    worker_bucket = m("elasticep_worker_recovery_phase_seconds_bucket", WORKER)
    order = ", ".join(p.value for p in RECOVERY_PHASES)
    return [
        gd.Row("Recovery"),
        timeseries(
            "Recovery duration (operator)",
            "From the failure observed until every rank was active again "
            "(elasticep_recovery_duration_seconds), p50 and p99 over every recovery since the operator "
            "started.",
            "s",
            target(quantile(0.5, op_bucket, KEYS), "{{cluster}} p50", "A"),
            target(quantile(0.99, op_bucket, KEYS), "{{cluster}} p99", "B"),
        ).span(8),
        timeseries(
            "Worker recovery phases p50",
            f"Median duration of each phase of the workers' recovery ({order}) over every recovery since the "
            "worker started, across the selected clusters' ranks.",
            "s",
            target(quantile(0.5, worker_bucket, "phase"), "{{phase}}"),
        ).span(8),
        timeseries(
            "Worker recovery phases p99",
            f"99th percentile of each recovery phase ({order}), as on the left.",
            "s",
            target(quantile(0.99, worker_bucket, "phase"), "{{phase}}"),
        ).span(8),
    ]


def serving_rows() -> list[Item]:
    w = "$__rate_interval"

    def per_second(metric: str) -> str:
        return f"sum by (namespace) (rate({m(metric, WORKER)}[{w}]))"

    return [
        gd.Row("Serving (workers)"),
        timeseries(
            "Degraded and re-run steps",
            "Steps per second summed over ranks: all steps, steps served with ranks missing (degraded, still "
            "correct answers on the live expert replicas), and steps re-run after an untrusted result.",
            "ops",
            target(per_second("elasticep_worker_steps_total"), "{{namespace}} steps", "A"),
            target(per_second("elasticep_worker_degraded_steps_total"), "{{namespace}} degraded", "B"),
            target(per_second("elasticep_worker_rerun_steps_total"), "{{namespace}} re-run", "C"),
        ),
        timeseries(
            "Ranks as each worker sees them",
            "Active ranks in each rank's own view, and the epoch it acts on: a rank that lags the others "
            "has not applied the latest membership.",
            "short",
            target(m("elasticep_worker_active_ranks", WORKER), "{{pod}} rank {{rank}} active", "A"),
            target(m("elasticep_worker_epoch", WORKER), "{{pod}} rank {{rank}} epoch", "B"),
        )
        .line_interpolation(mc.LineInterpolation.STEP_AFTER)
        .decimals(0),
    ]


def operator_rows() -> list[Item]:
    w = "$__rate_interval"
    buckets = f"rate({m('elasticep_reconcile_duration_seconds_bucket')}[{w}])"
    return [
        gd.Row("Operator"),
        bars(
            "Reconcile errors",
            "Reconciles that ended in an error (API errors, conflicts are not errors).",
            target(events("elasticep_reconcile_errors_total", (), w), "{{cluster}}"),
        ).span(8),
        timeseries(
            "Reconcile latency",
            "Duration of one reconcile (fetch, observe, plan, write status, act), p50 and p99.",
            "s",
            target(f"histogram_quantile(0.5, sum by ({KEYS}, le) ({buckets}))", "{{cluster}} p50", "A"),
            target(f"histogram_quantile(0.99, sum by ({KEYS}, le) ({buckets}))", "{{cluster}} p99", "B"),
        ).span(8),
        timeseries(
            "Since the last reconcile",
            "Seconds since the operator last completed a reconcile of the cluster; "
            "ElasticEPOperatorNotReconciling fires above 600 s.",
            "s",
            target(f"time() - {m('elasticep_last_reconcile_timestamp_seconds')}", "{{cluster}}"),
        ).span(8),
    ]


# ---- dashboard ---------------------------------------------------------------------------------------


def variables() -> list[gd.DatasourceVariable | gd.QueryVariable]:
    def query(name: str, label: str, expr: str) -> gd.QueryVariable:
        return (
            gd.QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query(expr)
            .refresh(md.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(md.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".+")
        )

    return [
        gd.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        query("namespace", "Namespace", "label_values(elasticep_cluster_phase, namespace)"),
        query(
            "cluster",
            "Cluster",
            'label_values(elasticep_cluster_phase{namespace=~"$namespace"}, cluster)',
        ),
    ]


# Annotation fields Grafana's Prometheus data source reads and the SDK's model does not name: they are
# added to the encoded JSON (the dashboard schema leaves an annotation query open for its data source).
ALERT_ANNOTATION = {
    "step": "60s",
    "titleFormat": "{{alertname}}",
    "textFormat": "{{namespace}}/{{cluster}} {{severity}}",
    "tagKeys": "severity,reason",
    "useValueForTime": False,
}
EPOCH_ANNOTATION = {
    "step": "30s",
    "titleFormat": "membership epoch {{cluster}}",
    "textFormat": "{{namespace}}/{{cluster}}",
    "tagKeys": "cluster",
    "useValueForTime": False,
}


def alerts_expr() -> str:
    firing = 'alertstate="firing"'
    return (
        f'ALERTS{{{firing}, alertname=~"ElasticEP.+", {OP}}}\n'
        f'or ALERTS{{{firing}, alertname="ElasticEPOperatorDown"}}'
    )


def epoch_expr() -> str:
    return f"changes({m('elasticep_membership_epoch')}[$__interval]) > 0"


def annotation_queries() -> list[gd.AnnotationQuery]:
    builtin = (
        gd.AnnotationQuery()
        .name("Annotations & Alerts")
        .datasource(md.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
        .enable(True)
        .hide(True)
        .icon_color("rgba(0, 211, 255, 1)")
        .type("dashboard")
        .built_in(1)
    )
    alerts = (
        gd.AnnotationQuery()
        .name("Firing alerts")
        .datasource(DATASOURCE)
        .enable(True)
        .icon_color("red")
        .expr(alerts_expr())
    )
    epochs = (
        gd.AnnotationQuery()
        .name("Membership changes")
        .datasource(DATASOURCE)
        .enable(False)
        .icon_color("blue")
        .expr(epoch_expr())
    )
    return [builtin, alerts, epochs]


def build() -> gd.Dashboard:
    board = (
        gd.Dashboard(TITLE)
        .uid(UID)
        .description(
            "ElasticEPClusters: phase, ranks, failures, restarts, recovery durations, the workers' recovery "
            "phases and degraded steps, and the operator's health. Generated by deploy/grafana/dashboard.py."
        )
        .tags(["elastic-ep", "kubernetes", "llm"])
        .editable()
        .tooltip(md.DashboardCursorSync.CROSSHAIR)
        .time("now-3h", "now")
        .timezone("browser")
        .refresh("30s")
        .variables(list(variables()))
        .annotations(list(annotation_queries()))
    )
    for item in (*cluster_rows(), *failure_rows(), *recovery_rows(), *serving_rows(), *operator_rows()):
        if isinstance(item, gd.Row):
            board.with_row(item)
        else:
            board.with_panel(item)
    return board


def model() -> md.Dashboard:
    """The built dashboard, panels numbered top to bottom."""
    built = build().build()
    for number, panel in enumerate(built.panels or [], start=1):
        panel.id_val = number
    return built


# The SDK's variable model gives every variable the interval variable's fields; Grafana's schema has them on
# no other kind of variable (tests/dashboard/ checks the JSON against it).
INTERVAL_ONLY = ("auto", "auto_count", "auto_min")


def dashboard_json() -> dict[str, Any]:
    """The dashboard as a JSON object: the SDK's encoding, plus the annotation fields its model lacks, less
    the interval fields on variables that are not intervals."""
    doc: dict[str, Any] = json.loads(JSONEncoder().encode(model()))
    extra = {"Firing alerts": ALERT_ANNOTATION, "Membership changes": EPOCH_ANNOTATION}
    for annotation in doc["annotations"]["list"]:
        annotation.update(extra.get(annotation["name"], {}))
    for variable in doc["templating"]["list"]:
        if variable["type"] != "interval":
            for key in INTERVAL_ONLY:
                variable.pop(key, None)
    return doc


def dashboard_text() -> str:
    return json.dumps(dashboard_json(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="compare instead of writing; exit 1 on a difference"
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    text = dashboard_text()
    wanted = {args.root / DASHBOARD_FILE: text, args.root / CHART_FILE: text}
    return write_or_check(wanted, check=args.check, remedy="python deploy/grafana/dashboard.py")


if __name__ == "__main__":
    sys.exit(main())
