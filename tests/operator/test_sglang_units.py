"""SGLang engine mode without a cluster: the flag table by release, the rendered probes (and the liveness
check run against real processes), the admission trigger's decision and its sender against a real HTTP
server, and the sender's metric."""

from __future__ import annotations

import http.server
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from operator_builders import observed, pod
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from eep_contract.reasons import AdmissionTriggerResult
from eep_contract.v1alpha1 import (
    ElasticEPClusterSpec,
    ElasticEPClusterStatus,
    MemberState,
    MemberStatus,
    Phase,
    SGLangJoinFlag,
    SGLangReleases,
    sglang_join_flag,
)
from eep_operator.core import podspec
from eep_operator.core.admission import AdmissionTarget, admission_target
from eep_operator.io.admission import AdmissionTrigger, post
from eep_operator.metrics import OperatorMetrics

R = AdmissionTriggerResult
F = SGLangJoinFlag


def sglang_spec(version: str = "0.5.23", mode: str = "PerMember", **sg: Any) -> ElasticEPClusterSpec:
    engine = {"name": "sglang", "port": 30000, **sg.pop("engine", {})}
    return ElasticEPClusterSpec.model_validate(
        {
            "image": "i",
            "nodes": 3,
            "ranksPerNode": 4,
            "recovery": {"mode": mode, "rejoinTimeoutSeconds": 90},
            "engine": {**engine, "sglang": {"modelPath": "m", "version": version, **sg}},
        }
    )


# ------------------------------------------------------------------------------ the table, by release


@pytest.mark.parametrize(
    ("version", "flag", "expected"),
    [
        ("0.5.10", F.AUTO, None),
        ("0.5.11", F.AUTO, F.REJOIN),
        ("0.5.15", F.AUTO, F.REJOIN),
        ("0.5.15", F.REJOIN, F.REJOIN),
        ("0.5.15", F.JOIN_MODE_RECOVER, SGLangReleases.JOIN_MODE_MESSAGE),
        ("0.5.16", F.AUTO, F.JOIN_MODE_RECOVER),
        ("0.5.16", F.REJOIN, F.REJOIN),
        ("0.5.20", F.REJOIN, F.REJOIN),
        ("0.5.20", F.JOIN_MODE_RECOVER, F.JOIN_MODE_RECOVER),
        ("0.5.21", F.REJOIN, SGLangReleases.REJOIN_MESSAGE),
        ("0.5.21", F.AUTO, F.JOIN_MODE_RECOVER),
        ("0.5.23", F.AUTO, F.JOIN_MODE_RECOVER),
        ("0.5.23.post1", F.REJOIN, SGLangReleases.REJOIN_MESSAGE),
        ("0.5.30", F.AUTO, F.JOIN_MODE_RECOVER),
        ("0.5.10", F.REJOIN, SGLangReleases.REJOIN_MESSAGE),
        ("0.5.9", F.AUTO, SGLangReleases.VERSION_MESSAGE),
        ("0.6.0", F.AUTO, SGLangReleases.VERSION_MESSAGE),
        ("1.5.20", F.AUTO, SGLangReleases.VERSION_MESSAGE),
    ],
)
def test_the_join_flag_each_release_accepts(version: str, flag: SGLangJoinFlag, expected: object) -> None:
    if expected is not None and not isinstance(expected, SGLangJoinFlag):
        assert isinstance(expected, str)
        with pytest.raises(ValueError, match=re.escape(expected)):
            sglang_join_flag(version, flag)
    else:
        assert sglang_join_flag(version, flag) == expected


@pytest.mark.parametrize(
    ("version", "flag", "args"),
    [
        ("0.5.11", "Auto", ["--elastic-ep-rejoin"]),
        ("0.5.16", "Auto", ["--elastic-ep-join-mode", "recover"]),
        ("0.5.20", "Rejoin", ["--elastic-ep-rejoin"]),
        ("0.5.23", "Auto", ["--elastic-ep-join-mode", "recover"]),
        ("0.5.23", "JoinModeRecover", ["--elastic-ep-join-mode", "recover"]),
    ],
)
def test_only_a_replacement_gets_the_flag_its_release_accepts(
    version: str, flag: str, args: list[str]
) -> None:
    spec = sglang_spec(version, joinFlag=flag)
    joiner = podspec.engine_command(spec, "ds", "prod", 2, join=True)
    fresh = podspec.engine_command(spec, "ds", "prod", 2, join=False)
    i = joiner.index("--port") + 2
    assert joiner[i : i + len(args)] == args and joiner[:i] == fresh
    assert not any(a.startswith(("--elastic-ep-rejoin", "--elastic-ep-join")) for a in fresh)


def test_release_0_5_10_runs_only_with_group_restarts() -> None:
    with pytest.raises(ValidationError, match=r"SGLang 0\.5\.10 has no join flag"):
        sglang_spec("0.5.10")
    spec = sglang_spec("0.5.10", mode="GroupRestart")
    assert "--elastic-ep-backend" in podspec.engine_command(spec, "ds", "prod", 1, join=False)
    with pytest.raises(ValueError, match="no join flag"):
        podspec.engine_command(spec, "ds", "prod", 1, join=True)


def test_the_release_is_required() -> None:
    with pytest.raises(ValidationError, match="version"):
        ElasticEPClusterSpec.model_validate(
            {"image": "i", "nodes": 2, "engine": {"name": "sglang", "sglang": {"modelPath": "m"}}}
        )


# ------------------------------------------------------------------------------------------- probes


def container(spec: ElasticEPClusterSpec, index: int) -> dict[str, Any]:
    p = podspec.render_pod(
        spec, cluster="ds", namespace="prod", uid="u", index=index, join=index > 0, epoch=1, incarnation=1
    )
    return dict(p["spec"]["containers"][0])


def test_sglang_probes_follow_what_each_node_rank_serves() -> None:
    spec = sglang_spec()
    leader, other = container(spec, 0), container(spec, 2)
    # Member 0: /health runs a generation that may take ~20 s and answer 503 while a joiner is admitted.
    assert leader["readinessProbe"] == {
        "httpGet": {"path": "/health", "port": 30000},
        "periodSeconds": 5,
        "timeoutSeconds": 25,
        "failureThreshold": 6,
    }
    # Members >= 1: no listener until joined, then a stand-in server: fast readiness, liveness by process.
    assert other["readinessProbe"] == {
        "httpGet": {"path": "/health", "port": 30000},
        "periodSeconds": 1,
        "failureThreshold": 1,
    }
    for c in (leader, other):
        live = c["livenessProbe"]
        assert live["exec"]["command"] == podspec.sglang_scheduler_check(4)
        assert (live["periodSeconds"], live["failureThreshold"]) == (10, 3)
    custom = sglang_spec(engine={"readinessPath": "/health_generate"})
    assert container(custom, 1)["readinessProbe"]["httpGet"]["path"] == "/health_generate"


def test_eep_worker_probes_are_unchanged() -> None:
    spec = ElasticEPClusterSpec.model_validate({"image": "i", "nodes": 2})
    c = container(spec, 1)
    assert c["readinessProbe"] == {
        "httpGet": {"path": "/ready", "port": 30000},
        "periodSeconds": 1,
        "failureThreshold": 1,
    }
    assert "livenessProbe" not in c


UNSHARE = shutil.which("unshare")


@dataclass
class Schedulers:
    """Processes titled like SGLang's schedulers (`exec -a`), in a mount namespace of their own (as in a
    container), and the rendered liveness check run in that namespace."""

    ranks: int
    shell: subprocess.Popen[str] = field(init=False)

    def __post_init__(self) -> None:
        assert UNSHARE is not None
        # A shell in a new mount namespace reads commands: it starts children and runs the probe there.
        self.shell = subprocess.Popen(
            [UNSHARE, "--mount", "--propagation", "private", "bash"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, line: str) -> str:
        assert self.shell.stdin is not None and self.shell.stdout is not None
        self.shell.stdin.write(f"{line}\necho __done\n")
        self.shell.stdin.flush()
        out = []
        while (text := self.shell.stdout.readline().rstrip("\n")) != "__done":
            out.append(text)
        return "\n".join(out)

    def start(self, title: str) -> int:
        return int(self.run(f"(exec -a '{title}' sleep 600) & echo $!"))

    def probe(self) -> int:
        """The exit status of the rendered liveness command (python3 -c ...), run in the namespace."""
        return int(self.run(f"{shlex.join(podspec.sglang_scheduler_check(self.ranks))}; echo $?"))

    def close(self) -> None:
        self.run("kill $(jobs -p) 2>/dev/null; wait")
        self.shell.communicate("exit\n", timeout=10)


@pytest.fixture
def schedulers() -> Iterator[Schedulers]:
    if UNSHARE is None or subprocess.run([UNSHARE, "--mount", "true"], check=False).returncode != 0:
        pytest.fail("unshare --mount is needed (the local process node needs it too)")
    s = Schedulers(ranks=3)
    try:
        yield s
    finally:
        s.close()


def test_liveness_check_notices_a_dead_scheduler(schedulers: Schedulers) -> None:
    assert schedulers.probe() == 0  # nothing started yet: the server is still importing
    starting = schedulers.start(
        "python3 -c from multiprocessing.spawn import spawn_main --multiprocessing-fork"
    )
    pids = [schedulers.start(f"sglang::scheduler_TP{r}") for r in range(2)]
    assert schedulers.probe() == 0  # 2 of 3 titled, one child still starting
    schedulers.run(f"kill {starting}; wait {starting} 2>/dev/null")
    assert schedulers.probe() == 1  # 2 of 3 and nothing starting: one died
    pids.append(schedulers.start("sglang::scheduler_TP2"))
    assert schedulers.probe() == 0
    schedulers.run(f"kill -9 {pids[1]}")  # dies without an exception, its parent keeps running
    assert schedulers.probe() == 1


# ------------------------------------------------------------------------ admission trigger: decision


def status_with(*states: MemberState, phase: Phase = Phase.RECOVERING) -> ElasticEPClusterStatus:
    members = [
        MemberStatus(index=i, first_rank=4 * i, rank_count=4, state=s, incarnation=2 if i else 1)
        for i, s in enumerate(states)
    ]
    return ElasticEPClusterStatus(phase=phase, members=members)


H, J = MemberState.HEALTHY, MemberState.JOINING


def test_admission_target_while_a_member_joins() -> None:
    spec = sglang_spec(admissionTrigger={"intervalSeconds": 0.5, "path": "/generate"})
    world = observed(pod(0, ip="127.0.1.5"), pod(1), pod(2, 2, ready=False, join=True, uid="joiner"))
    target = admission_target(spec, status_with(H, H, J), world)
    assert target == AdmissionTarget(
        url="http://127.0.1.5:30000/generate",
        body=b'{"input_ids":[0],"sampling_params":{"max_new_tokens":1,"temperature":0}}',
        interval_s=0.5,
        timeout_s=30.0,
        max_s=90.0,
        joiners=("joiner",),
    )
    # A new replacement is a new target (its sender starts afresh); the same one is the same target.
    again = observed(pod(0, ip="127.0.1.5"), pod(1), pod(2, 2, ready=False, join=True, uid="joiner"))
    assert admission_target(spec, status_with(H, H, J), again) == target
    other = observed(pod(0, ip="127.0.1.5"), pod(1), pod(2, 2, ready=False, join=True, uid="next"))
    assert admission_target(spec, status_with(H, H, J), other) != target


LEAD = pod(0, ip="10.0.0.1")
EEP_WORKER = ElasticEPClusterSpec.model_validate({"image": "i", "nodes": 3, "ranksPerNode": 4})
OFF = sglang_spec(admissionTrigger={"enabled": False})


@pytest.mark.parametrize(
    ("why", "spec", "status", "leader"),
    [
        ("nobody joins", sglang_spec(), status_with(H, H, H), LEAD),
        ("a member failed, none joins yet", sglang_spec(), status_with(H, MemberState.FAILED, H), LEAD),
        ("disabled", OFF, status_with(H, H, J), LEAD),
        ("member 0 has no IP", sglang_spec(), status_with(H, H, J), pod(0)),
        (
            "member 0 not running",
            sglang_spec(),
            status_with(H, H, J),
            replace(LEAD, running=False, phase="Pending"),
        ),
        ("member 0 being deleted", sglang_spec(), status_with(H, H, J), replace(LEAD, deleting=True)),
        ("member 0 not Healthy", sglang_spec(), status_with(MemberState.PENDING, H, J), LEAD),
        ("cluster Failed", sglang_spec(), status_with(H, H, J, phase=Phase.FAILED), LEAD),
        ("not SGLang", EEP_WORKER, status_with(H, H, J), LEAD),
    ],
)
def test_no_admission_target(
    why: str, spec: ElasticEPClusterSpec, status: ElasticEPClusterStatus, leader: Any
) -> None:
    world = observed(leader, pod(1), pod(2, 2, ready=False, join=True))
    assert admission_target(spec, status, world) is None, why


# -------------------------------------------------------------------------- admission trigger: sender


class Member0:
    """A real HTTP server on 127.0.0.1 that records POSTs and answers with `status` after `delay` seconds."""

    def __init__(self) -> None:
        self.posts: list[tuple[float, bytes]] = []
        self.status = 200
        self.delay = 0.0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.posts.append((time.monotonic(), body))
                time.sleep(owner.delay)
                self.send_response(owner.status)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/generate"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def member0() -> Iterator[Member0]:
    m = Member0()
    try:
        yield m
    finally:
        m.close()


@dataclass
class Results:
    seen: list[tuple[str, str, AdmissionTriggerResult]] = field(default_factory=list)

    def admission_request(self, namespace: str, cluster: str, result: AdmissionTriggerResult) -> None:
        self.seen.append((namespace, cluster, result))


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_sender_keeps_a_bounded_pace_until_told_to_stop(member0: Member0) -> None:
    results = Results()
    trigger = AdmissionTrigger(results)
    target = AdmissionTarget(url=member0.url, body=b'{"x":1}', interval_s=0.2, timeout_s=2, max_s=60)
    trigger.update("ns", "c", target)
    time.sleep(1.0)
    trigger.update("ns", "c", target)  # the same target keeps its sender (no burst of fresh starts)
    time.sleep(0.5)
    trigger.update("ns", "c", None)
    count = len(member0.posts)
    assert 6 <= count <= 9, member0.posts
    gaps = [b[0] - a[0] for a, b in zip(member0.posts, member0.posts[1:], strict=False)]
    assert min(gaps) >= 0.15, gaps
    assert {body for _, body in member0.posts} == {b'{"x":1}'}
    time.sleep(0.5)
    assert len(member0.posts) <= count + 1  # one may have been in flight
    assert {r for _, _, r in results.seen} == {R.SUCCEEDED} and results.seen[0][:2] == ("ns", "c")
    assert trigger.active("ns", "c") is None


def test_sender_stops_by_itself_after_max_seconds(member0: Member0) -> None:
    trigger = AdmissionTrigger(Results())
    trigger.update("ns", "c", AdmissionTarget(url=member0.url, interval_s=0.1, timeout_s=1, max_s=0.35))
    time.sleep(0.8)
    assert 3 <= len(member0.posts) <= 5 and trigger.active("ns", "c") is None


def test_one_request_in_flight_at_a_time(member0: Member0) -> None:
    member0.delay = 0.5  # survivors busy admitting: the answer waits
    results = Results()
    trigger = AdmissionTrigger(results)
    trigger.update("ns", "c", AdmissionTarget(url=member0.url, interval_s=0.05, timeout_s=5, max_s=60))
    time.sleep(1.2)
    trigger.stop_all()
    assert 2 <= len(member0.posts) <= 3


def test_results_are_classified(member0: Member0) -> None:
    member0.status = 503
    assert post(AdmissionTarget(url=member0.url)) == R.HTTP_ERROR
    member0.status, member0.delay = 200, 1.0
    assert post(AdmissionTarget(url=member0.url, timeout_s=0.2)) == R.TIMEOUT
    member0.delay = 0.0
    assert post(AdmissionTarget(url=member0.url)) == R.SUCCEEDED
    member0.close()
    assert post(AdmissionTarget(url=member0.url, timeout_s=1)) == R.UNREACHABLE


def test_results_are_counted_in_the_metric(member0: Member0) -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    trigger = AdmissionTrigger(metrics)
    trigger.update("ns", "c", AdmissionTarget(url=member0.url, interval_s=0.05, max_s=60))

    def count(result: AdmissionTriggerResult) -> float:
        labels = {"namespace": "ns", "cluster": "c", "result": result.value}
        return registry.get_sample_value("elasticep_admission_trigger_requests_total", labels) or 0.0

    wait_until(lambda: count(R.SUCCEEDED) >= 2)
    member0.status = 503
    wait_until(lambda: count(R.HTTP_ERROR) >= 1)
    trigger.stop_all()


def test_a_new_target_replaces_the_old_sender(member0: Member0) -> None:
    trigger = AdmissionTrigger(Results())
    first = AdmissionTarget(url=member0.url, interval_s=0.1, max_s=60, joiners=("a",))
    second = replace(first, joiners=("b",))
    trigger.update("ns", "c", first)
    trigger.update("ns", "c", second)
    assert trigger.active("ns", "c") == second
    trigger.update("ns", "other", first)
    assert trigger.active("ns", "other") == first and trigger.active("ns", "c") == second
    trigger.stop_all()
    wait_until(lambda: trigger.active("ns", "c") is None and trigger.active("ns", "other") is None)
