"""Bounded chaos soak (`make soak`): random failures for a fixed time, invariants checked throughout.

    .venv/bin/python bench/soak.py [--minutes 5] [--seed N] [--state DIR] [--gap 20,45]

Setup: local control plane (reused or started), a second process node when only one runs (removed again at
the end: agent, pod processes, IP leases, Node), the operator from the chart, the CPU example (4 members x 1
rank on `mooncake-cpu`), the checking client running the whole time. Then, at random moments (`--gap`
seconds apart, uniformly), one fault drawn from a shuffled deck of every kind (each kind once before any
repeats):

- `member`: SIGKILL of a random non-zero member's processes (only at full capacity, so that the soak
  exercises recoveries, not only the restart budget);
- `operator`: SIGKILL of the operator's process group (the Deployment's pod restarts it; its state lives in
  the CR status);
- `node`: a node agent stopped and started 5-20 s later (the node's pods die with it: a lost node);
- `agent-stop`: a node agent SIGSTOPped for 10-30 s, then SIGCONTed (the Node goes NotReady while its
  workers serve on): no member pod may be replaced and the group not restarted;
- `agent-kill`: a node agent SIGKILLed with its workers alive, `start-node` again 10-30 s later (the new
  agent reports the pods it finds running as killed, exit 137: `eep_localcluster.processnode._adopt`);
- `status-wipe`: `kubectl patch --subresource=status -p '{"status":null}'`; the operator must rebuild the
  status from its pods, the epoch no lower than before;
- `drain`: `kubectl drain --ignore-daemonsets --delete-emptydir-data` of one node through the Eviction API
  (the operator's PodDisruptionBudget lets one member go at a time), uncordoned once every member is
  Healthy again; evictions must not spend the crash budget;
- `spec-edit`: a pod annotation under `spec.template.metadata` set to a new value: nothing may be
  restarted (the `UpdatePending` condition says it waits). Once, in the last quarter of the run,
  `restart-generation`:
  `spec.restartGeneration` raised, the pending update applied by a group restart (requests may wait).

Invariants: the membership epoch never decreases (every status sample that carries a membership; a wiped
status, seen before the operator rebuilt it, is not the operator's); no answer is wrong; no request is lost
(each is answered in the end; retries are allowed); never two live process groups of one member's pod (two
incarnations of a rank; a /proc scan every 2 s); the running member pods all carry one revision of the
edited env var (no replacement runs a pending spec); at the end every member is Healthy, or the CR is Failed
with a reason in its Ready condition; after the CR is deleted no pod of it and no process of the namespace's
members is left. Writes bench/results/soak.json (`events`: each fault with its time and outcome). Exit 1 when
an invariant broke.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from eep_contract.env import POD_NAME, MemberEnv
from eep_contract.v1alpha1 import PLURAL, ConditionType, Labels
from eep_demo import scenario
from eep_demo.client import ClientSettings, LoadClient
from eep_demo.cluster import StatusSampler, find_pod_processes, kill_pod_processes
from eep_demo.live import LogView
from eep_demo.scenario import StepFailed
from eep_demo.timeline import RequestCounts, StatusSample, count_requests, epoch_regressions
from eep_localcluster.__main__ import tools_bin_dir
from eep_testkit import agents, crs
from eep_testkit.ports import free_port
from eep_testkit.pump import Pump
from eep_testkit.tools import ToolFailed

OUT = Path(__file__).resolve().parent / "results" / "soak.json"
NAME = "soak"
BASE_NODE = "eep-node-0"
EXTRA_NODE = "eep-soak-node-1"
"""Started when only one node runs: a drain needs somewhere to go."""
EDIT_KEY = "soak.elasticep.dev/edit"
"""The env var `spec-edit` sets (a pod-shaping field the CPU worker ignores)."""
NAMESPACE_ENV = MemberEnv.names()["namespace"]
KINDS = ("member", "operator", "node", "agent-stop", "agent-kill", "status-wipe", "drain", "spec-edit")


def kill_operator(session: scenario.Session) -> str:
    """SIGKILL the operator container's process group (the pod's containerID is process://<pid>)."""
    for pod in scenario.operator_pods(session.ctx, session.release):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            cid = str(cs.get("containerID") or "")
            if cid.startswith("process://") and cs.get("state", {}).get("running"):
                pid = int(cid.removeprefix("process://"))
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
                    return f"killed operator pod {pod['metadata']['name']} (pgid {pid})"
    return "no running operator process found"


def final_state(cr: dict[str, Any] | None) -> tuple[bool, str]:
    """(acceptable, description): all members Healthy, or phase Failed with a reason. Pure."""
    st = (cr or {}).get("status") or {}
    members = st.get("members") or []
    if members and all(m.get("state") == "Healthy" for m in members) and st.get("phase") == "Running":
        return True, "every member Healthy"
    if st.get("phase") == "Failed":
        ready: dict[str, Any] = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
        reason = f"{ready.get('reason', '')}: {ready.get('message', '')}".strip(": ")
        return bool(ready.get("reason")), f"CR Failed ({reason or 'no reason given'})"
    return False, f"phase {st.get('phase')}, members {[m.get('state') for m in members]}"


def published(samples: list[StatusSample]) -> list[StatusSample]:
    """The samples of a status the operator wrote: a wiped status (no members, epoch 0) is left out, so that
    the epoch check compares what the operator published before the wipe with what it rebuilt. Pure."""
    return [s for s in samples if s.members or s.epoch > 0]


def edit_value(pod: dict[str, Any]) -> str | None:
    """The value of the pod annotation `EDIT_KEY` (None: not set). Pure."""
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(EDIT_KEY)
    return None if value is None else str(value)


def revisions_of(pods: list[dict[str, Any]]) -> dict[str, str | None]:
    """Pod name -> its `EDIT_KEY` value, for the member pods that run and are not being deleted. Pure."""
    return {
        p["metadata"]["name"]: edit_value(p)
        for p in pods
        if (p.get("status") or {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    }


def process_groups(namespace: str) -> dict[str, set[int]]:
    """Pod name -> the process groups of live processes whose environment names that pod in `namespace`
    (one /proc scan; zombies have no environment)."""
    out: dict[str, set[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "environ").read_bytes()
        except OSError:
            continue
        env = dict(item.partition(b"=")[::2] for item in raw.split(b"\0") if b"=" in item)
        if env.get(NAMESPACE_ENV.encode()) != namespace.encode():
            continue
        pod = env.get(POD_NAME.encode())
        if pod is None:
            continue
        with contextlib.suppress(ProcessLookupError):
            out.setdefault(pod.decode(errors="replace"), set()).add(os.getpgid(int(entry.name)))
    return out


class Invariants:
    """Checks that need more than the status samples, every 2 s in a thread: two process groups of one
    member pod (two incarnations), running member pods of different revisions. Each message is kept once,
    with the soak time it was first seen."""

    def __init__(self, soak: Soak) -> None:
        self.soak = soak
        self.violations: list[str] = []
        self._seen: set[str] = set()
        self._pump = Pump(self._check, name="soak-invariants", interval_s=2.0, error_backoff_s=2.0)

    def start(self) -> None:
        self._pump.start()

    def stop(self) -> None:
        self._pump.stop(15)

    def _note(self, key: str, msg: str) -> None:
        """Keep `msg` unless a violation of the same `key` was kept already."""
        if key not in self._seen:
            self._seen.add(key)
            self.violations.append(f"+{self.soak.now():.0f}s: {msg}")
            self.soak.view.step(f"INVARIANT: {msg}")

    def _check(self) -> None:
        ctx = self.soak.ctx
        for pod, groups in process_groups(ctx.namespace).items():
            if len(groups) > 1:
                self._note(f"split {pod}", f"two live incarnations of {pod}: process groups {sorted(groups)}")
        revs = revisions_of(ctx.kube.pods(ctx.namespace, f"{Labels.CLUSTER}={NAME}"))
        if len(set(revs.values())) > 1:
            self._note(
                "revisions",
                f"running members of different revisions ({EDIT_KEY}): {dict(sorted(revs.items()))}",
            )


class Soak:
    """One soak run's state: the session, the load, the faults' record."""

    def __init__(self, session: scenario.Session, state: Path, rng: random.Random, view: LogView) -> None:
        self.session, self.ctx, self.state, self.rng, self.view = session, session.ctx, state, rng, view
        self.client: LoadClient | None = None
        self.sampler: StatusSampler | None = None
        self.events: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.nodes: list[str] = []
        self.started_node: str | None = None
        self.edits = 0
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    # ---- reading

    def cr(self) -> dict[str, Any]:
        return self.ctx.kube.get_cr(self.ctx.namespace, NAME) or {}

    def status(self) -> dict[str, Any]:
        return dict(self.cr().get("status") or {})

    def full(self) -> bool:
        assert self.sampler is not None
        return bool(self.sampler.samples) and self.sampler.samples[-1].full

    def member_uids(self) -> dict[int, str]:
        """Member index -> the uid of its pod that is not being deleted."""
        out = {}
        for pod in self.ctx.kube.pods(self.ctx.namespace, f"{Labels.CLUSTER}={NAME}"):
            member = pod["metadata"].get("labels", {}).get(Labels.MEMBER, "")
            if member.isdigit() and not pod["metadata"].get("deletionTimestamp"):
                out[int(member)] = pod["metadata"]["uid"]
        return out

    def condition(self, kind: ConditionType) -> dict[str, Any]:
        conds = self.status().get("conditions") or []
        return next((c for c in conds if c.get("type") == kind.value), {})

    def kubectl(self, *args: str, timeout_s: float = 120) -> str:
        return self.ctx.tools.run("kubectl", ["-n", self.ctx.namespace, *args], timeout_s)

    # ---- waiting with the client and the view running

    def soak_for(self, seconds: float, note: str) -> None:
        self.wait(lambda: False, seconds, note)

    def wait(self, until: Callable[[], bool], timeout_s: float, note: str) -> bool:
        assert self.sampler is not None

        def safe() -> bool:
            try:
                return until()
            except Exception:  # an API hiccup is a missed look, not a failure of the soak
                return False

        return scenario.follow(
            self.ctx, sampler=self.sampler, client=self.client, until=safe, timeout_s=timeout_s, note=note
        )

    def untouched(self, before: dict[int, str], restarts: int, what: str) -> str:
        """'' when no member pod was replaced and no group restart happened since `before`; else a problem."""
        after = self.member_uids()
        replaced = sorted(i for i, uid in before.items() if after.get(i) != uid)
        group = int(self.status().get("groupRestarts") or 0)
        if replaced or group != restarts:
            return f"{what}: members {replaced} replaced, group restarts {restarts} -> {group}"
        return ""

    # ---- nodes

    def setup_nodes(self) -> None:
        running = agents.running_agents(self.state)
        if len(running) < 2:
            self.view.step(f"starting a second process node {EXTRA_NODE} (a drain needs somewhere to go)")
            r = agents.start_node(self.state, EXTRA_NODE)
            if r.returncode != 0:
                raise StepFailed(f"start-node {EXTRA_NODE} failed ({r.returncode}): {r.stderr[-2000:]}")
            self.started_node = EXTRA_NODE
            running = agents.running_agents(self.state)
        self.nodes = running

    def restore_nodes(self) -> None:
        """Every agent the soak knows runs and is not frozen; every node schedulable."""
        for node in self.nodes:
            with contextlib.suppress(LookupError, ProcessLookupError):
                agents.signal_agent(self.state, node, signal.SIGCONT)
            if agents.agent_pid(self.state, node) is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    agents.start_node(self.state, node)
            with contextlib.suppress(ToolFailed, subprocess.TimeoutExpired):
                self.ctx.tools.run("kubectl", ["uncordon", node], 60)

    # ---- the faults

    def member_kill(self) -> str:
        if not self.full():
            return "skipped a member kill: not at full capacity"
        member = self.rng.randrange(1, int(self.cr()["spec"]["nodes"]))
        killed = kill_pod_processes(self.ctx.namespace, f"{NAME}-{member}")
        return f"SIGKILL member {member} ({len(killed)} processes)"

    def node_bounce(self, node: str) -> str:
        down_s = self.rng.uniform(5, 20)
        agents.stop_node(self.state, node)
        self.soak_for(down_s, f"node {node} down")
        r = agents.start_node(self.state, node)
        return f"node {node} stopped for {down_s:.0f}s, restarted (rc {r.returncode})"

    def agent_stop(self, node: str) -> str:
        frozen_s = self.rng.uniform(10, 30)
        full, before = self.full(), self.member_uids()
        restarts = int(self.status().get("groupRestarts") or 0)
        agents.signal_agent(self.state, node, signal.SIGSTOP)
        try:
            self.soak_for(frozen_s, f"agent of {node} frozen")
        finally:
            agents.signal_agent(self.state, node, signal.SIGCONT)
        self.soak_for(8, f"agent of {node} resumed")
        what = f"agent of {node} SIGSTOP for {frozen_s:.0f}s, SIGCONT"
        problem = self.untouched(before, restarts, f"agent SIGSTOP of {node}") if full else ""
        if problem:
            self.problems.append(problem)
            return f"{what}; {problem}"
        return f"{what}; nothing restarted" if full else f"{what} (not at full capacity before)"

    def agent_kill(self, node: str) -> str:
        down_s = self.rng.uniform(10, 30)
        live = agents.node_pod_pids(self.state, node)
        agents.signal_agent(self.state, node, signal.SIGKILL)
        self.soak_for(down_s, f"agent of {node} dead, its workers alive")
        still = agents.node_pod_pids(self.state, node)
        r = agents.start_node(self.state, node)
        return (
            f"agent of {node} SIGKILL with {len(live)} pods' processes live ({len(still)} still live after "
            f"{down_s:.0f}s), start-node (rc {r.returncode})"
        )

    def status_wipe(self) -> str:
        epoch = int((self.status().get("membership") or {}).get("epoch") or 0)
        self.kubectl("patch", PLURAL, NAME, "--subresource=status", "--type=merge", "-p", '{"status":null}')
        t = time.monotonic()

        def rebuilt() -> bool:
            return bool(self.status().get("members"))

        ok = self.wait(rebuilt, 120, "status wiped: waiting for the rebuild")
        after = int((self.status().get("membership") or {}).get("epoch") or 0)
        what = f"status wiped at epoch {epoch}"
        if not ok:
            self.problems.append(f"{what}: not rebuilt within 120 s")
            return f"{what}; not rebuilt within 120 s"
        if after < epoch:
            self.problems.append(f"{what}: rebuilt at epoch {after}")
        return f"{what}; rebuilt in {time.monotonic() - t:.1f}s at epoch {after}"

    def drain(self, node: str) -> str:
        evictions_before, restarts_before = self._evictions(), self._restarts()
        argv = [
            str(self.ctx.tools.bin_dir / "kubectl"), f"--kubeconfig={self.ctx.tools.kubeconfig}",
            "drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=300s",
        ]  # fmt: skip
        t = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            self.wait(lambda: proc.poll() is not None, 330, f"draining {node}")
        finally:
            if proc.poll() is None:
                proc.kill()
            out = proc.communicate(timeout=30)[0] or ""
        drained_s = time.monotonic() - t
        healthy = self.wait(self.full, 300, f"{node} drained: waiting for every member Healthy")
        with contextlib.suppress(ToolFailed, subprocess.TimeoutExpired):
            self.ctx.tools.run("kubectl", ["uncordon", node], 60)
        evicted, restarted = self._evictions() - evictions_before, self._restarts() - restarts_before
        refusals = out.count("disruption budget")
        what = (
            f"drain of {node}: rc {proc.returncode} after {drained_s:.0f}s ({evicted} evictions recorded, "
            f"{refusals} evictions refused by the budget, member restarts +{restarted}), "
            + ("every member Healthy, uncordoned" if healthy else "NOT every member Healthy in 300 s")
        )
        if proc.returncode != 0:
            self.problems.append(f"drain of {node} failed: {out[-1500:]}")
        return what

    def _restarts(self) -> int:
        """Member restarts the status counts (the crash budget spent)."""
        return sum(int(m.get("restarts") or 0) for m in self.status().get("members") or [])

    def _evictions(self) -> int:
        return sum(len(m.get("evictionTimes") or []) for m in self.status().get("members") or [])

    def spec_edit(self) -> str:
        self.edits += 1
        full, before = self.full(), self.member_uids()
        restarts = int(self.status().get("groupRestarts") or 0)
        patch = json.dumps({"spec": {"template": {"metadata": {"annotations": {EDIT_KEY: str(self.edits)}}}}})
        self.kubectl("patch", PLURAL, NAME, "--type=merge", "-p", patch)
        pending = self.wait(
            lambda: self.condition(ConditionType.UPDATE_PENDING).get("status") == "True",
            60,
            "spec edited: waiting for UpdatePending",
        )
        self.soak_for(5, "spec edited")
        what = f"{EDIT_KEY}={self.edits} under spec.template.metadata.annotations"
        if not pending:
            self.problems.append(f"spec edit {self.edits}: no UpdatePending=True within 60 s")
        problem = self.untouched(before, restarts, f"spec edit {self.edits}") if full else ""
        if problem:
            self.problems.append(problem)
        return f"{what}; UpdatePending {'True' if pending else 'not seen'}; " + (
            problem or ("nothing restarted" if full else "not at full capacity before")
        )

    def restart_generation(self) -> str:
        if self.edits == 0:
            self.events.append({"t": round(self.now(), 1), "action": "spec-edit", "what": self.spec_edit()})
        gen = int(self.cr()["spec"].get("restartGeneration") or 0) + 1
        restarts = int(self.status().get("groupRestarts") or 0)
        self.kubectl(
            "patch", PLURAL, NAME, "--type=merge", "-p", json.dumps({"spec": {"restartGeneration": gen}})
        )
        t = time.monotonic()
        want = str(self.edits)

        def applied() -> bool:
            revs = revisions_of(self.ctx.kube.pods(self.ctx.namespace, f"{Labels.CLUSTER}={NAME}"))
            return (
                self.full() and len(revs) == int(self.cr()["spec"]["nodes"]) and set(revs.values()) == {want}
            )

        def over() -> bool:
            return applied() or self.status().get("phase") == "Failed"

        self.wait(over, 300, f"restartGeneration {gen}: waiting for the update to be applied")
        ok = applied()
        group = int(self.status().get("groupRestarts") or 0)
        pending = self.condition(ConditionType.UPDATE_PENDING).get("status")
        what = f"restartGeneration -> {gen} ({EDIT_KEY}={want} pending)"
        if not ok:
            self.problems.append(f"{what}: not applied within 300 s (UpdatePending {pending})")
            return f"{what}; NOT applied within 300 s"
        return (
            f"{what}; applied by a group restart in {time.monotonic() - t:.0f}s "
            f"(group restarts {restarts} -> {group}), UpdatePending {pending}"
        )

    def member_nodes(self) -> list[str]:
        """The soak's nodes that run a member pod now (all of them when none does): a node fault hits
        members, not an empty node (after a drain every member may sit on the other node)."""
        pods = self.ctx.kube.pods(self.ctx.namespace, f"{Labels.CLUSTER}={NAME}")
        used = {(p.get("spec") or {}).get("nodeName") for p in pods}
        return [n for n in self.nodes if n in used] or list(self.nodes)

    def inject(self, kind: str) -> str:
        """Apply one fault of `kind` (KINDS); returns what was done and seen."""
        node = self.rng.choice(self.member_nodes())
        try:
            if kind == "member":
                return self.member_kill()
            if kind == "operator":
                return kill_operator(self.session)
            if kind == "node":
                return self.node_bounce(node)
            if kind == "agent-stop":
                return self.agent_stop(node)
            if kind == "agent-kill":
                return self.agent_kill(node)
            if kind == "status-wipe":
                return self.status_wipe()
            if kind == "drain":
                return self.drain(node)
            if kind == "spec-edit":
                return self.spec_edit()
            return self.restart_generation()
        except (ToolFailed, LookupError, subprocess.TimeoutExpired) as exc:
            self.problems.append(f"{kind}: {exc}"[:2000])
            return f"{kind} could not be applied: {exc}"[:500]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.split("\n")[0])
    p.add_argument("--state", default=".local/cluster")
    p.add_argument("--namespace", default="eep-soak")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--gap", default="20,45", help="seconds between events: min,max")
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--settle", type=float, default=300.0, help="seconds to reach the final state at the end")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    console = Console()
    view = LogView()
    gap_min, gap_max = (float(x) for x in a.gap.split(","))
    state = Path(a.state).resolve()
    try:
        session = scenario.open_session(state, a.namespace, a.namespace, view, tools_bin_dir())
    except StepFailed as exc:
        print(f"SOAK FAILED setting up: {exc}")
        return 1
    ctx = session.ctx
    soak = Soak(session, state, rng, view)
    checks = Invariants(soak)
    final = ""
    counts: RequestCounts | None = None
    try:
        soak.setup_nodes()
        cr = crs.from_example(NAME)
        # Member 0's TCPStore listens on every address: a fixed port collides with any other local cluster's
        # member 0 on this machine (their pods share the host's ports).
        cr["spec"]["elasticEP"]["coordinatorPort"] = free_port()
        scenario.apply_cluster(ctx, cr)
        scenario.wait_ready(ctx, NAME, 300)
        soak.client, soak.sampler = scenario.start_load(
            ctx, NAME, ClientSettings(concurrency=2, pace_s=0.1), 0.5
        )
        checks.start()
        soak.t0 = time.monotonic()
        deadline = soak.t0 + 60 * a.minutes
        view.step(f"soak for {a.minutes:g} min on nodes {soak.nodes}, seed {a.seed}")
        deck: list[str] = []
        raised = False
        while time.monotonic() < deadline:
            soak.soak_for(rng.uniform(gap_min, gap_max), "soaking")
            if time.monotonic() >= deadline:
                break
            if not raised and soak.now() >= 0.75 * 60 * a.minutes:
                kind, raised = "restart-generation", True
            else:
                if not deck:
                    deck = list(KINDS)
                    rng.shuffle(deck)
                kind = deck.pop()
            t = round(soak.now(), 1)
            view.step(f"fault: {kind}")
            what = soak.inject(kind)
            soak.events.append({"t": t, "action": kind, "what": what})
            view.step(what)
        if not raised:
            soak.events.append(
                {
                    "t": round(soak.now(), 1),
                    "action": "restart-generation",
                    "what": soak.inject("restart-generation"),
                }
            )
        view.step("chaos over: waiting for the final state")
        soak.restore_nodes()
        soak.wait(lambda: final_state(soak.cr())[0], a.settle, "settling")
        acceptable, final = final_state(soak.cr())
        if not acceptable:
            soak.problems.append(f"final state: {final}")
        pods = ctx.kube.pods(ctx.namespace, f"{Labels.CLUSTER}={NAME}")
        per_member: dict[str, int] = {}
        for pod in pods:
            member = pod["metadata"].get("labels", {}).get(Labels.MEMBER, "?")
            per_member[member] = per_member.get(member, 0) + 1
        if any(n > 1 for n in per_member.values()):
            soak.problems.append(f"more than one pod for a member at the end: {per_member}")
        assert soak.client is not None and soak.sampler is not None
        soak.client.stop(drain_s=120)
        soak.sampler.stop()
        checks.stop()
        soak.problems += checks.violations
        counts = count_requests(soak.client.attempts, soak.client.request_ids)
        samples = soak.sampler.snapshot()
        regressions = epoch_regressions(published(samples))
        if regressions:
            soak.problems.append(f"epoch decreased: {regressions[:5]}")
        if counts.wrong:
            wrong = [a_.detail for a_ in soak.client.attempts if a_.result.value == "wrong"][:5]
            soak.problems.append(f"{counts.wrong} wrong answers: {wrong}")
        if counts.failed:
            soak.problems.append(f"{counts.failed} requests never answered")
        scenario.delete_cluster(ctx, NAME)
        leaked = {f"{NAME}-{i}": find_pod_processes(ctx.namespace, f"{NAME}-{i}") for i in range(16)}
        leaked = {k: v for k, v in leaked.items() if v}
        if leaked:
            soak.problems.append(f"processes left after deleting the CR: {leaked}")
    except StepFailed as exc:
        soak.problems.append(str(exc)[:4000])
        if soak.client is not None:
            counts = count_requests(soak.client.attempts, soak.client.request_ids)
    finally:
        checks.stop()
        if soak.client is not None:
            soak.client.stop(0)
        if soak.sampler is not None:
            soak.sampler.stop()
        soak.restore_nodes()
        with contextlib.suppress(Exception):
            scenario.delete_cluster(ctx, NAME, timeout_s=60)
        if soak.started_node is not None:
            agents.remove_node(state, ctx.kube.core, soak.started_node)
        scenario.close_session(session, keep=False)
    doc = {
        "benchmark": "soak",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": a.seed,
        "minutes": a.minutes,
        "gap_s": [gap_min, gap_max],
        "nodes": soak.nodes,
        "events": soak.events,
        "final_state": final,
        "requests": None if counts is None else counts.__dict__,
        "problems": soak.problems,
        "ok": not soak.problems,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    console.print_json(json.dumps(doc))
    print("SOAK OK" if not soak.problems else f"SOAK FAILED: {soak.problems}")
    return 0 if not soak.problems else 1


if __name__ == "__main__":
    sys.exit(main())
