#!/usr/bin/env python3
"""Issue #19: can global rank 0 be a coordinator-only process on mooncake-cpu? Writes
bench/results/coordinator_only.json and prints a table.

    .venv/bin/python bench/coordinator_only.py [--cases A,B,C,D] [--ns 2,3] [--runs 3]

Plain processes, no operator and no `eep-worker serve`. Rank 0 hosts the TCPStore and Mooncake's coordinator
(it creates the world group first, so `launchCoordinator` runs in it), joins `new_group(ranks=[1..N])` as a
non-member and then only sleeps, reading the world group's active-ranks mirror (a host read, no collective, no
store call) to log when the coordinator changes the view. Ranks 1..N serve: one all-reduce of
``[rank + 1, step, joiner_ready]`` (float64) per step on the serving group, paced 5 ms, checked against the
group's active-ranks mirror: element 0 must be the sum of ``rank + 1`` over the active ranks and element 1
``step x active``, so a rank that ran a step out of line is a wrong answer too.

Cases (each a fresh set of processes):

- A: steady state only, ``--steady-s`` seconds of serving, then every mirror is compared with all-active.
- B: rank N (>= 2) SIGKILLed mid-stream; C: rank 1 (the lowest serving rank). The survivors, on their first
  failed collective (`local_success` False; groups are created with ``auto_deactivate_on_failure=True,
  auto_sync_on_failure=False`` as the worker does), drop to a short tail timeout, keep issuing steps, publish
  their first failed step in the TCPStore and park after ``max + 2`` (the worker's step fence, without a
  leader); parked, they wait for the coordinator's view to deactivate the suspects (the failure hint), pass a
  store barrier and serve on degraded. The harness then starts a replacement for the killed rank
  (``is_extension=True`` groups, `join_group` on the world then on the serving group). Each survivor reads
  `get_peer_state` on the world group every step (a host read) and puts it in the step's third element; the
  all-reduce makes every survivor see the same sum at the same step, so all park there, call `recover_ranks`
  on the world group then the serving group, pass an admission barrier with the joiner and go on at full
  size. Rank 0 calls nothing in any case.
- ``--heartbeat-steps K`` (issue #19 follow-up, results in bench/results/coordinator_only_heartbeat.json):
  every serving rank also runs a one-element all-reduce on the world group (rank 0 included) after every K-th
  step, and one more when it parks after a failure, so that rank 0 completes a world collective with the dead
  rank within the reconciliation window and reports the link. Rank 0 loops on that all-reduce. Without
  ``--heartbeat-gated`` it re-enters it at once and so is in flight whenever a view changes; Mooncake resets
  the group's task count (the parity of the buffer pair a collective uses) on every view change but not the
  in-flight collective's, so the next heartbeat pairs buffers of different parity and hangs. With
  ``--heartbeat-gated`` rank 0 enters heartbeat n only once a serving rank has announced it in the store.
- ``--planner`` (results in bench/results/coordinator_only_planner.json): rank 0 keeps the planner, as the
  worker's leader (`run_planner`): it broadcasts each step's plan on the world group, the serving ranks run
  the step, and the lowest live serving rank broadcasts the answer back on the world group; rank 0 checks it
  and plans the same request again after a FENCE when the step was not trusted. Cases A, B and C.
- D: today's layout for contrast: ranks 0..N all serve on the world group; rank 0 is SIGKILLed; after a
  while a replacement rank 0 starts its own TCPStore and coordinator.

Every process has a hard deadline, the harness SIGKILLs what is left at the end of each run, and every wait of
the harness has a timeout; a run that reaches one is reported as such (`hang`), with what the ranks logged.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from eep_worker.loader import loader_env

if TYPE_CHECKING:
    from eep_worker.mooncake import Mooncake

REPO = Path(__file__).resolve().parent.parent
RESULT = REPO / "bench" / "results" / "coordinator_only.json"
HOST = "127.0.0.1"
PACE_S = 0.005
CHILD_DEADLINE_S = 240.0


# ---------------------------------------------------------------------------------------------- child side


@dataclasses.dataclass
class Child:
    """One rank process's settings (from the command line) and its event log (JSON lines, wall time)."""

    role: str  # coord | serve | join | coord-join
    rank: int
    serving: list[int]
    port: int
    run_dir: Path
    collective_timeout_s: float
    tail_timeout_s: float
    window_s: float
    incarnation: int
    heartbeat_steps: int = 0  # 0: no world-group heartbeat
    heartbeat_gated: bool = False  # rank 0 enters heartbeat n only once a serving rank announced it
    planner: bool = False  # rank 0 plans every step (`run_planner`)

    @property
    def world_size(self) -> int:
        return max(self.serving) + 1

    def emit(self, ev: str, **fields: Any) -> None:
        line = json.dumps({"t": time.time(), "rank": self.rank, "inc": self.incarnation, "ev": ev, **fields})
        with (self.run_dir / f"rank{self.rank}.{self.incarnation}.jsonl").open("a") as f:
            f.write(line + "\n")

    def stopped(self) -> bool:
        return (self.run_dir / "stop").exists()


def _store(c: Child, master: bool) -> Any:
    return dist.TCPStore(  # type: ignore[attr-defined]
        HOST, c.port, c.world_size, is_master=master, wait_for_workers=False, timeout=timedelta(seconds=60)
    )


def _groups(c: Child, mc: Mooncake, store: Any, extension: bool) -> tuple[Any, Any]:
    """The world group, then the serving group (None on a non-member), every process in this order."""
    dist.init_process_group(
        backend="mooncake-cpu",
        store=store,
        rank=c.rank,
        world_size=c.world_size,
        pg_options=mc.options(c.world_size, extension),
    )
    world = dist.group.WORLD
    if c.serving == list(range(c.world_size)):
        return world, world
    serving = dist.new_group(
        c.serving, backend="mooncake-cpu", pg_options=mc.options(len(c.serving), extension)
    )
    return world, serving if isinstance(serving, dist.ProcessGroup) else None


def _active(mc: Mooncake, pg: Any) -> list[int]:
    return [int(v) for v in mc.active_ranks(pg).tolist()]


def run_coordinator(c: Child) -> None:
    """Rank 0, coordinator only: hosts the store and the coordinator, then reads the world mirror until told
    to stop. Never issues a collective, never calls the store after start-up."""
    # Importing it loads Mooncake, which needs the loader environment only the rank processes have.
    from eep_worker.mooncake import Mooncake  # noqa: PLC0415

    mc = Mooncake()
    mc.configure(host_ip=HOST, collective_timeout_s=c.collective_timeout_s, reconcile_window_s=c.window_s)
    store = _store(c, master=True)
    world, _ = _groups(c, mc, store, extension=c.role == "coord-join")
    c.emit("ready")
    last = _active(mc, world)
    c.emit("world_mirror", active=last)
    deadline = time.monotonic() + CHILD_DEADLINE_S
    beats = 0
    while not c.stopped() and time.monotonic() < deadline:
        if c.heartbeat_steps > 0:
            if not c.heartbeat_gated or store.check([f"coordonly/hb/{beats}"]):
                ok, hint = _heartbeat(mc, world, c.rank)
                if not ok:
                    c.emit("hb_failed", beat=beats, hint=hint, active=_active(mc, world))
                beats += 1
            else:
                time.sleep(0.001)
        else:
            time.sleep(0.05)
        now = _active(mc, world)
        if now != last:
            c.emit("world_mirror", active=now, beat=beats)
            last = now
    c.emit("exit", beats=beats)
    os._exit(0)


def _heartbeat(mc: Mooncake, world: Any, rank: int) -> tuple[bool, list[int]]:
    """One all-reduce of one float64 on the world group; (this rank's success, failed world ranks)."""
    t = torch.tensor([rank + 1.0], dtype=torch.float64)
    work = dist.all_reduce(t, group=world, async_op=True)
    assert work is not None
    work.wait()
    ok = mc.local_success(work)
    return ok, [] if ok else mc.failed_ranks(work)


class Server:
    """A serving rank's loop (module doc). `gen` counts membership changes this rank has passed."""

    def __init__(
        self, c: Child, mc: Mooncake, store: Any, *, world: Any, group: Any, step: int, gen: int
    ) -> None:
        self.c, self.mc, self.store, self.world, self.group = c, mc, store, world, group
        self.step, self.gen = step, gen
        self.local = c.serving.index(c.rank)
        self.wrong = 0
        self.steps_ok = 0
        self.resumed_pending = False
        self.beats = 0  # world-group heartbeats this rank has issued (rank 0 counts the same)
        self.hb_s = 0.0  # time spent in them

    def key(self, name: str) -> str:
        return f"coordonly/{name}"

    def wait_keys(self, keys: list[str], timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.store.check(keys):
                return True
            time.sleep(0.01)
        return False

    def barrier(self, name: str, count: int, timeout_s: float) -> bool:
        self.store.add(self.key(name), 1)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.store.add(self.key(name), 0) >= count:
                return True
            time.sleep(0.01)
        return False

    def heartbeat(self, why: str) -> None:
        """One world-group heartbeat (rank 0 takes part), announced in the store first if rank 0 is gated."""
        c = self.c
        if c.heartbeat_gated:
            self.store.set(self.key(f"hb/{self.beats}"), "1")
        t0 = time.perf_counter()
        ok, hint = _heartbeat(self.mc, self.world, c.rank)
        self.hb_s += time.perf_counter() - t0
        if not ok or why != "step":
            c.emit("hb", beat=self.beats, why=why, ok=ok, hint=hint, dt=time.perf_counter() - t0)
        self.beats += 1

    def one_step(self, flag: float) -> tuple[bool, list[float], list[int]]:
        t = torch.tensor([self.c.rank + 1.0, float(self.step), flag], dtype=torch.float64)
        work = dist.all_reduce(t, group=self.group, async_op=True)
        assert work is not None
        work.wait()
        ok = self.mc.local_success(work)
        hint = [] if ok else self.mc.failed_ranks(work)
        return ok, [float(v) for v in t.tolist()], hint

    def run(self) -> None:
        c = self.c
        deadline = time.monotonic() + CHILD_DEADLINE_S
        failing_since: int | None = None
        suspects: list[int] = []
        park_at: int | None = None
        live: list[int] = []
        while not c.stopped() and time.monotonic() < deadline:
            active = _active(self.mc, self.group)
            missing = [c.serving[i] for i, a in enumerate(active) if not a]
            flag = 0.0
            if failing_since is None and missing and self.world is not self.group:
                flag = 1.0 if self.mc.peer_ready(self.world, missing) else 0.0
            try:
                ok, got, hint = self.one_step(flag)
            except RuntimeError as e:
                c.emit("collective_error", step=self.step, error=str(e)[:300], active=active)
                self.watch_after_error(deadline)
                return
            after = _active(self.mc, self.group)
            if ok:
                n = sum(after)
                want0 = float(sum(c.serving[i] + 1 for i, a in enumerate(after) if a))
                if after != active or got[0] != want0 or got[1] != self.step * n:
                    self.wrong += 1
                    c.emit("wrong", step=self.step, got=got, want=[want0, self.step * n], active=after)
                else:
                    self.steps_ok += 1
                    if self.resumed_pending:
                        c.emit("resumed", step=self.step, active=after)
                        self.resumed_pending = False
                if self.step % 200 == 0:
                    c.emit("progress", step=self.step, wrong=self.wrong, active=after, hb_s=self.hb_s)
            if c.heartbeat_steps > 0 and (self.step + 1) % c.heartbeat_steps == 0:
                self.heartbeat("step")
            if failing_since is None and not ok:
                failing_since = self.step
                suspects = [c.serving[i] for i in hint]
                self.mc.set_collective_timeout(c.tail_timeout_s)
                c.emit("detected", step=self.step, hint=suspects, active=active)
                try:
                    self.store.set(self.key(f"fail/{self.gen}/{c.rank}"), str(self.step))
                except RuntimeError as e:
                    c.emit("store_error", error=str(e)[:300])
                    self.watch_after_error(deadline)
                    return
            if failing_since is not None and park_at is None:
                live = [r for r in c.serving if r not in suspects and active[c.serving.index(r)]]
                keys = [self.key(f"fail/{self.gen}/{r}") for r in live]
                if self.store.check(keys):
                    park_at = max(int(self.store.get(k)) for k in keys) + 2
                    c.emit("fence_agreed", park_at=park_at, survivors=live)
            if park_at is not None and self.step >= park_at:
                self.step += 1
                if not self.fence(suspects, live, deadline):
                    return
                failing_since, park_at, self.resumed_pending = None, None, True
                continue
            if ok and got[2] >= 1.0 and missing:
                self.step += 1
                if not self.recover(missing, [c.serving[i] for i, a in enumerate(after) if a]):
                    return
                self.resumed_pending = True
                continue
            self.step += 1
            time.sleep(PACE_S)
        c.emit(
            "final",
            step=self.step,
            wrong=self.wrong,
            steps_ok=self.steps_ok,
            active=_active(self.mc, self.group),
        )

    def fence(self, suspects: list[int], live: list[int], deadline: float) -> bool:
        """Parked: wait for the coordinator's view to drop the suspects, then a store barrier of the live."""
        c = self.c
        c.emit("parked", step=self.step, suspects=suspects)
        if c.heartbeat_steps > 0:
            # Rank 0 reports the dead rank only once a world collective with it completes: give it one
            # here, whatever the step, so its report lands within the reconciliation window.
            self.heartbeat("park")
        end = min(deadline, time.monotonic() + 45.0)
        while time.monotonic() < end:
            act = _active(self.mc, self.group)
            if not act[self.local]:
                c.emit("self_deactivated", active=act, world=_active(self.mc, self.world))
                self.watch_after_error(deadline)
                return False
            if all(not act[c.serving.index(s)] for s in suspects):
                c.emit("view", active=act, world=_active(self.mc, self.world))
                break
            time.sleep(0.005)
        else:
            c.emit("view_timeout", active=_active(self.mc, self.group), world=_active(self.mc, self.world))
            return False
        self.mc.set_collective_timeout(c.collective_timeout_s)
        if not self.barrier(f"fenced/{self.gen}", len(live), 30.0):
            c.emit("fence_barrier_timeout")
            return False
        self.gen += 1
        c.emit("fenced", step=self.step, gen=self.gen)
        return True

    def recover(self, missing: list[int], survivors: list[int]) -> bool:
        """Every survivor: `recover_ranks` on the world group, then the serving group; the admission barrier
        with the joiners; the step to resume at goes to the joiners through the store."""
        c = self.c
        for j in missing:
            self.store.set(self.key(f"recgen/{j}"), str(self.gen))
        t0 = time.time()
        rw = self.mc.recover_ranks(self.world, missing)
        t1 = time.time()
        rs = self.mc.recover_ranks(self.group, [c.serving.index(j) for j in missing])
        t2 = time.time()
        c.emit(
            "recovered",
            world=[rw.status, rw.reason, t1 - t0],
            serving=[rs.status, rs.reason, t2 - t1],
            step=self.step,
        )
        if c.rank == min(survivors):
            self.store.set(self.key(f"beats/{self.gen}"), str(self.beats))
            self.store.set(self.key(f"resume/{self.gen}"), str(self.step))
        if not self.barrier(f"admitted/{self.gen}", len(survivors) + len(missing), 60.0):
            c.emit("admission_barrier_timeout")
            return False
        self.gen += 1
        c.emit("admitted", step=self.step, active=_active(self.mc, self.group))
        return True

    def watch_after_error(self, deadline: float) -> None:
        """After this rank lost its place: log every change of its mirrors for a while (no collective)."""
        c = self.c
        last: tuple[list[int], list[int]] | None = None
        end = min(deadline, time.monotonic() + 40.0)
        while not c.stopped() and time.monotonic() < end:
            now = (_active(self.mc, self.group), _active(self.mc, self.world))
            if now != last:
                c.emit("mirrors", serving=now[0], world=now[1])
                last = now
            time.sleep(0.1)
        c.emit(
            "final", step=self.step, wrong=self.wrong, steps_ok=self.steps_ok, active=last[0] if last else []
        )


def _start_serving(c: Child, *, master: bool) -> tuple[Mooncake, Any, Any, Any]:
    """A serving rank's start: Mooncake configured, the store, the world and serving groups (extension
    groups for a replacement); reports `ready`, or `init_error` and exits 3."""
    from eep_worker.mooncake import Mooncake  # noqa: PLC0415  (as in run_coordinator)

    torch.set_num_threads(1)
    mc = Mooncake()
    mc.configure(host_ip=HOST, collective_timeout_s=c.collective_timeout_s, reconcile_window_s=c.window_s)
    store = _store(c, master=master)
    t0 = time.time()
    try:
        world, group = _groups(c, mc, store, extension=c.role == "join")
    except RuntimeError as e:
        c.emit("init_error", error=str(e)[:400])
        os._exit(3)
    c.emit("ready", init_s=time.time() - t0)
    return mc, store, world, group


def run_server(c: Child) -> None:
    """A serving rank (role serve), or a replacement (role join) that joins every group first."""
    joiner = c.role == "join"
    mc, store, world, group = _start_serving(c, master=c.rank == 0 and not joiner)
    step, gen = 0, 0
    if joiner:
        t1 = time.time()
        mc.join_group(world)
        t2 = time.time()
        if group is not world:
            mc.join_group(group)
        t3 = time.time()
        c.emit("joined", world_s=t2 - t1, serving_s=t3 - t2, active=_active(mc, group))
        gen = int(store.get(f"coordonly/recgen/{c.rank}"))
        srv = Server(c, mc, store, world=world, group=group, step=0, gen=gen)
        survivors = sum(_active(mc, group))
        if not srv.barrier(f"admitted/{gen}", survivors, 60.0):
            c.emit("admission_barrier_timeout")
            os._exit(4)
        step = int(store.get(f"coordonly/resume/{gen}"))
        srv.beats = int(store.get(f"coordonly/beats/{gen}"))
        srv.step, srv.gen, srv.resumed_pending = step, gen + 1, True
        c.emit("admitted", step=step, active=_active(mc, group))
        srv.run()
    else:
        Server(c, mc, store, world=world, group=group, step=step, gen=gen).run()
    os._exit(0)


# ---------------------------------------------------------------------------------------- planner layout

BATCH, FENCE, RECOVER = 0, 1, 2
HEAD = 4
"""A plan: [kind, step, request, output rank, live mask over the world...] (float64)."""
ANSWER_HEAD = 4
"""An answer: [sum, step x live, request x live, success, failure-hint mask over the world...] (float64); the
first three are the serving group's all-reduce, so the request comes back through every live serving rank."""


def _mask(ranks: set[int], world_size: int) -> list[float]:
    """``[world_size]``: 1.0 for the ranks in ``ranks``."""
    return [1.0 if r in ranks else 0.0 for r in range(world_size)]


def _ranks(mask: list[float]) -> set[int]:
    """The ranks a `_mask` marks."""
    return {r for r, v in enumerate(mask) if v >= 0.5}


def _expected(live: set[int], step: int, req: int) -> list[float]:
    """What the serving group's all-reduce of ``[rank + 1, step, request]`` over ``live`` gives."""
    return [float(sum(r + 1 for r in live)), float(step * len(live)), float(req * len(live))]


def _bcast(t: torch.Tensor, src: int, group: Any, mc: Mooncake) -> tuple[bool, list[int]]:
    """One broadcast on ``group`` from global rank ``src``; (this rank's success, failed group ranks)."""
    work = dist.broadcast(t, src=src, group=group, async_op=True)
    assert work is not None
    work.wait()
    ok = mc.local_success(work)
    return ok, [] if ok else mc.failed_ranks(work)


def run_planner(c: Child) -> None:
    """Rank 0 in the planner layout (``--planner``): hosts the store and the coordinator and plans every
    step, as the worker's leader does, but serves nothing. Each step it broadcasts the plan on the world
    group; for a BATCH step the lowest live serving rank (the output rank) broadcasts the answer back on the
    world group, with its own success and failure hint. A step is answered only when both broadcasts and the
    output rank's step succeeded and the world view did not change; otherwise the same request is planned
    again, after a FENCE naming the ranks seen failing. So the request in flight when the output rank dies is
    answered by the next one: no takeover, nothing lost. Rank 0 records, for every untrusted step, which
    request the next trusted answer carried back (`rerun_answered`: it must be the same one)."""
    from eep_worker.mooncake import Mooncake  # noqa: PLC0415  (as in run_coordinator)

    mc = Mooncake()
    mc.configure(host_ip=HOST, collective_timeout_s=c.collective_timeout_s, reconcile_window_s=c.window_s)
    store = _store(c, master=True)
    world, _ = _groups(c, mc, store, extension=False)
    c.emit("ready")
    w = c.world_size
    live, suspects = set(c.serving), set[int]()
    step = req = answered = wrong = 0
    resumed_pending = False
    rerun: int | None = None  # the request of the last untrusted step, until an answer comes back
    last_world = _active(mc, world)
    deadline = time.monotonic() + CHILD_DEADLINE_S
    while not c.stopped() and time.monotonic() < deadline:
        step += 1
        joiners = set[int]()
        if not suspects and step % 20 == 0:
            missing = sorted(set(c.serving) - live)
            if missing and mc.peer_ready(world, missing):
                joiners = set(missing)
        if suspects:
            kind, plan_live = FENCE, live - suspects
        elif joiners:
            kind, plan_live = RECOVER, live | joiners
        else:
            kind, plan_live = BATCH, live
        if not plan_live:
            c.emit("no_serving_rank", step=step, suspects=sorted(suspects))
            break
        out = min(plan_live)
        plan = torch.tensor([kind, step, req, out, *_mask(plan_live, w)], dtype=torch.float64)
        before = _active(mc, world)
        ok_p, hint_p = _bcast(plan, 0, world, mc)
        if kind == FENCE:
            c.emit("parked", step=step, suspects=sorted(suspects))
            end = time.monotonic() + 45.0
            while time.monotonic() < end and any(_active(mc, world)[s] for s in suspects):
                time.sleep(0.005)
            c.emit("view", active=_active(mc, world))
            mc.set_collective_timeout(c.collective_timeout_s)
            live, suspects, resumed_pending = plan_live, set(), True
        elif kind == RECOVER:
            for j in joiners:
                store.set(f"coordonly/pjoin/{j}", json.dumps({"step": step, "live": sorted(plan_live)}))
            rw = mc.recover_ranks(world, sorted(joiners))
            c.emit("recovered", world=[rw.status, rw.reason, 0.0], serving=["-", "", 0.0], step=step)
            live, resumed_pending = plan_live, True
        else:
            ans = torch.zeros(ANSWER_HEAD + w, dtype=torch.float64)
            ok_a, hint_a = _bcast(ans, out, world, mc)
            now = _active(mc, world)
            trusted = ok_p and ok_a and ans[3].item() >= 0.5 and now == before
            if trusted:
                got = [float(v) for v in ans[:3].tolist()]
                if got != _expected(plan_live, step, req):
                    wrong += 1
                    c.emit("wrong", step=step, got=got, want=_expected(plan_live, step, req))
                else:
                    if rerun is not None:
                        back = round(got[2] / len(plan_live))
                        c.emit("rerun_answered", step=step, untrusted_req=rerun, answered_req=back)
                        rerun = None
                    answered += 1
                    req += 1
                    if resumed_pending:
                        c.emit("resumed", step=step, active=now)
                        resumed_pending = False
            else:
                failed = set(hint_p) | set(hint_a) | {r for r, a in enumerate(now) if not a}
                if ok_a:
                    failed |= _ranks([float(v) for v in ans[ANSWER_HEAD:].tolist()])
                failed = (failed - {0}) & live
                c.emit("untrusted", step=step, req=req, failed=sorted(failed), active=now)
                rerun = req
                if failed:
                    suspects = failed
                    mc.set_collective_timeout(c.tail_timeout_s)
        now = _active(mc, world)
        if now != last_world:
            c.emit("world_mirror", active=now, step=step)
            last_world = now
        if step % 200 == 0:
            c.emit("planner", step=step, answered=answered, requests=req, wrong=wrong)
        time.sleep(PACE_S)
    c.emit(
        "final",
        step=step,
        wrong=wrong,
        steps_ok=answered,
        answered=answered,
        requests=req,
        active=sorted(live),
    )
    os._exit(0)


class PlannedServer:
    """A serving rank in the planner layout: executes every plan rank 0 broadcasts (`run_planner`). Its own
    check: the serving group's all-reduce must equal what the plan's live set implies."""

    def __init__(self, c: Child, mc: Mooncake, store: Any, *, world: Any, group: Any, live: set[int]) -> None:
        self.c, self.mc, self.store, self.world, self.group = c, mc, store, world, group
        self.live = live
        self.local = c.serving.index(c.rank)
        self.wrong = self.steps_ok = 0
        self.step = 0
        self.resumed_pending = False
        self.tail = False

    def failed(self, hint: list[int]) -> None:
        """This rank saw a collective fail: the rest of the step on the tail timeout, reported once."""
        if not self.tail:
            self.tail = True
            self.mc.set_collective_timeout(self.c.tail_timeout_s)
            self.c.emit("detected", step=self.step, hint=hint, active=_active(self.mc, self.group))

    def run(self) -> None:
        """Execute plans until told to stop: BATCH (the step, then the answer's broadcast), FENCE (park until
        the view drops the suspects), RECOVER (`recover_ranks` on the world, then the serving group)."""
        c, mc, w = self.c, self.mc, self.c.world_size
        deadline = time.monotonic() + CHILD_DEADLINE_S
        while not c.stopped() and time.monotonic() < deadline:
            plan = torch.zeros(HEAD + w, dtype=torch.float64)
            try:
                ok_p, hint_p = _bcast(plan, 0, self.world, mc)
            except RuntimeError as e:
                c.emit("collective_error", step=self.step, error=str(e)[:300])
                return
            vals = [float(v) for v in plan.tolist()]
            if not ok_p:
                if 0 in hint_p or not _active(mc, self.world)[0]:
                    c.emit("leader_lost", step=self.step)
                    return
                self.failed(hint_p)
            # A broadcast that saw a dead peer may still have delivered rank 0's plan: used when whole (the
            # next step, a known kind), as the worker's plan decoder does.
            if int(vals[1]) == self.step + 1 and int(vals[0]) in (BATCH, FENCE, RECOVER):
                kind, self.step, req, out = int(vals[0]), int(vals[1]), int(vals[2]), int(vals[3])
                plan_live = _ranks(vals[HEAD:])
            else:
                # Torn: keep in step with the others as a BATCH over the live set this rank knows.
                c.emit("torn_plan", step=self.step)
                kind, self.step, out, plan_live = BATCH, self.step + 1, min(self.live), set(self.live)
                req = -1
            if kind == FENCE:
                if not self.fence(self.live - plan_live, deadline):
                    return
                self.live, self.resumed_pending = plan_live, True
                continue
            if kind == RECOVER:
                self.recover(plan_live - self.live, plan_live)
                self.live, self.resumed_pending = plan_live, True
                continue
            self.batch(out, plan_live, req)
            time.sleep(PACE_S / 2)
        c.emit(
            "final", step=self.step, wrong=self.wrong, steps_ok=self.steps_ok, active=_active(mc, self.group)
        )

    def batch(self, out: int, plan_live: set[int], req: int) -> None:
        """One BATCH step: the serving group's all-reduce of ``[rank + 1, step, req]`` (zeros from a rank the
        plan leaves out), then the answer's broadcast from the output rank ``out`` on the world group."""
        c, mc, w = self.c, self.mc, self.c.world_size
        mine = c.rank in plan_live
        t = torch.tensor([c.rank + 1.0, float(self.step), float(req)], dtype=torch.float64) * float(mine)
        work = dist.all_reduce(t, group=self.group, async_op=True)
        assert work is not None
        work.wait()
        ok = mc.local_success(work)
        hint = [] if ok else [c.serving[i] for i in mc.failed_ranks(work)]
        if not ok:
            self.failed(hint)
        got = [float(v) for v in t.tolist()]
        ans = torch.zeros(ANSWER_HEAD + w, dtype=torch.float64)
        if c.rank == out:
            ans[:3] = torch.tensor(got, dtype=torch.float64)
            ans[3] = 1.0 if ok else 0.0
            ans[ANSWER_HEAD:] = torch.tensor(_mask(set(hint), w), dtype=torch.float64)
        ok_a, hint_a = _bcast(ans, out, self.world, mc)
        if not ok_a:
            self.failed(hint_a)
        if not ok:
            return
        if got != _expected(plan_live, self.step, req):
            self.wrong += 1
            c.emit("wrong", step=self.step, got=got, want=_expected(plan_live, self.step, req))
            return
        self.steps_ok += 1
        if self.resumed_pending:
            c.emit("resumed", step=self.step, active=_active(mc, self.group))
            self.resumed_pending = False
        if self.step % 200 == 0:
            c.emit("progress", step=self.step, wrong=self.wrong, active=_active(mc, self.group))

    def fence(self, suspects: set[int], deadline: float) -> bool:
        """Parked: until both groups show the suspects inactive (or this rank itself)."""
        c, mc = self.c, self.mc
        c.emit("parked", step=self.step, suspects=sorted(suspects))
        end = min(deadline, time.monotonic() + 45.0)
        while time.monotonic() < end:
            act, wact = _active(mc, self.group), _active(mc, self.world)
            if not act[self.local] or not wact[c.rank]:
                c.emit("self_deactivated", active=act, world=wact)
                return False
            if all(not act[c.serving.index(s)] and not wact[s] for s in suspects):
                c.emit("view", active=act, world=wact)
                mc.set_collective_timeout(c.collective_timeout_s)
                self.tail = False
                return True
            time.sleep(0.005)
        c.emit("view_timeout", active=_active(mc, self.group), world=_active(mc, self.world))
        return False

    def recover(self, joiners: set[int], plan_live: set[int]) -> None:
        """A survivor: `recover_ranks` on the world group (rank 0 does too), then on the serving group."""
        c, mc = self.c, self.mc
        t0 = time.time()
        rw = mc.recover_ranks(self.world, sorted(joiners))
        t1 = time.time()
        rs = mc.recover_ranks(self.group, [c.serving.index(j) for j in sorted(joiners)])
        t2 = time.time()
        c.emit("recovered", world=[rw.status, rw.reason, t1 - t0], serving=[rs.status, rs.reason, t2 - t1],
               step=self.step)  # fmt: skip
        c.emit("admitted", step=self.step, active=_active(mc, self.group))


def run_planned_server(c: Child) -> None:
    """A serving rank of the planner layout, or its replacement (role join), which joins the world group and
    then the serving group and takes the step and live set rank 0 left for it in the store."""
    joiner = c.role == "join"
    mc, store, world, group = _start_serving(c, master=False)
    srv = PlannedServer(c, mc, store, world=world, group=group, live=set(c.serving))
    if joiner:
        t1 = time.time()
        mc.join_group(world)
        t2 = time.time()
        mc.join_group(group)
        t3 = time.time()
        info = json.loads(store.get(f"coordonly/pjoin/{c.rank}"))
        srv.step, srv.live, srv.resumed_pending = int(info["step"]), set(info["live"]), True
        c.emit("joined", world_s=t2 - t1, serving_s=t3 - t2, active=_active(mc, group))
        c.emit("admitted", step=srv.step, active=_active(mc, group))
    srv.run()
    os._exit(0)


def child_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--role", required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--serving", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--collective-timeout-s", type=float, required=True)
    p.add_argument("--tail-timeout-s", type=float, required=True)
    p.add_argument("--window-s", type=float, required=True)
    p.add_argument("--incarnation", type=int, default=0)
    p.add_argument("--heartbeat-steps", type=int, default=0)
    p.add_argument("--heartbeat-gated", action="store_true")
    p.add_argument("--planner", action="store_true")
    a = p.parse_args(argv)
    c = Child(
        a.role,
        a.rank,
        [int(r) for r in a.serving.split(",")],
        a.port,
        a.run_dir,
        a.collective_timeout_s,
        a.tail_timeout_s,
        a.window_s,
        a.incarnation,
        a.heartbeat_steps,
        a.heartbeat_gated,
        a.planner,
    )
    if a.planner:
        (run_planner if a.role == "coord" else run_planned_server)(c)
    else:
        (run_coordinator if a.role in ("coord", "coord-join") else run_server)(c)


# ---------------------------------------------------------------------------------------------- harness side


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(loader_env(Path(sys.prefix), env))
    env.update(OMP_NUM_THREADS="1")
    return env


@dataclasses.dataclass
class Run:
    """One run's processes and events."""

    case: str
    n: int
    run_dir: Path
    port: int
    a: argparse.Namespace
    procs: dict[tuple[int, int], subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)

    @property
    def serving(self) -> list[int]:
        return list(range(self.n + 1)) if self.case == "D" else list(range(1, self.n + 1))

    def start(self, role: str, rank: int, incarnation: int = 0) -> float:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            "--role",
            role,
            "--rank",
            str(rank),
            "--serving",
            ",".join(map(str, self.serving)),
            "--port",
            str(self.port),
            "--run-dir",
            str(self.run_dir),
            "--collective-timeout-s",
            str(self.a.collective_timeout_s),
            "--tail-timeout-s",
            str(self.a.tail_timeout_s),
            "--window-s",
            str(self.a.window_s),
            "--incarnation",
            str(incarnation),
            "--heartbeat-steps",
            str(self.a.heartbeat_steps),
            *(["--heartbeat-gated"] if self.a.heartbeat_gated else []),
            *(["--planner"] if self.a.planner else []),
        ]
        log = (self.run_dir / f"rank{rank}.{incarnation}.log").open("wb")
        self.procs[(rank, incarnation)] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO
        )
        return time.time()

    def kill(self, rank: int, incarnation: int = 0) -> float:
        p = self.procs[(rank, incarnation)]
        p.send_signal(signal.SIGKILL)
        t = time.time()
        p.wait(timeout=10)
        return t

    def events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for f in sorted(self.run_dir.glob("rank*.jsonl")):
            for line in f.read_text().splitlines():
                if line.strip():
                    out.append(json.loads(line))
        return sorted(out, key=lambda e: float(e["t"]))

    def wait_for(self, pred: Callable[[list[dict[str, Any]]], bool], timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if pred(self.events()):
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        (self.run_dir / "stop").touch()
        end = time.monotonic() + 10
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, end - time.monotonic()))
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def first(
    evs: list[dict[str, Any]], ev: str, ranks: list[int] | None = None, after: float = 0.0
) -> float | None:
    ts = [
        float(e["t"])
        for e in evs
        if e["ev"] == ev and float(e["t"]) >= after and (ranks is None or e["rank"] in ranks)
    ]
    return min(ts) if ts else None


def last_of_each(evs: list[dict[str, Any]], ev: str, ranks: list[int], after: float = 0.0) -> float | None:
    """The time by which every rank in ``ranks`` logged ``ev`` (after ``after``); None if one never did."""
    ts = []
    for r in ranks:
        t = first(evs, ev, [r], after)
        if t is None:
            return None
        ts.append(t)
    return max(ts)


def one_run(case: str, n: int, a: argparse.Namespace, base: Path) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"{case}{n}-", dir=base))
    r = Run(case, n, run_dir, free_port(), a)
    out: dict[str, Any] = {"case": case, "n": n, "outcome": "error", "times": {}, "errors": []}
    times: dict[str, float | None] = out["times"]
    try:
        r.start("serve" if case == "D" else "coord", 0)
        time.sleep(1.0)  # rank 0 first: it hosts the store
        for k in range(1, n + 1):
            r.start("serve", k)
        everyone = list(range(n + 1))
        if not r.wait_for(lambda e: last_of_each(e, "ready", everyone) is not None, a.start_timeout_s):
            out["outcome"] = "hang: start-up"
            return out
        serving = r.serving

        def progressed(step: int) -> Callable[[list[dict[str, Any]]], bool]:
            return lambda e: all(
                any(x["ev"] == "progress" and x["rank"] == k and x["step"] >= step for x in e)
                for k in serving
            )

        if not r.wait_for(progressed(200), 60):
            out["outcome"] = "hang: steady state"
            return out
        if case == "A":
            t_steady = time.time()
            time.sleep(a.steady_s)
            t_stop = time.time()
            out["steps_per_s"] = _rate(r.events(), min(serving), t_steady, t_stop)
            r.stop()
            # Ranks leave one by one at the stop: a rank still in a collective then sees its peers go.
            evs = [e for e in r.events() if float(e["t"]) < t_stop or e["ev"] == "final"]
            finals = {e["rank"]: e for e in evs if e["ev"] == "final"}
            wrong = sum(int(f["wrong"]) for f in finals.values())
            steps = {k: finals[k]["step"] for k in finals}
            world_changes = [e["active"] for e in evs if e["ev"] == "world_mirror"]
            all_active = all(all(f["active"]) for f in finals.values()) and all(all(w) for w in world_changes)
            detected = [e for e in evs if e["ev"] in ("detected", "collective_error", "wrong")]
            out.update(steps=steps, wrong=wrong, world_mirror_changes=world_changes)
            ok = wrong == 0 and all_active and not detected and len(steps) >= 1
            out["outcome"] = "ok" if ok else "failed"
            if detected:
                out["errors"] = detected[:5]
            return out
        victim = {"B": n, "C": 1, "D": 0}[case]
        t_kill = r.kill(victim)
        times["kill_wall"] = t_kill
        survivors = [k for k in serving if k != victim]
        # Degraded serving: every survivor resumed, or one lost its place.
        r.wait_for(
            lambda e: (
                last_of_each(e, "resumed", survivors, t_kill) is not None
                or first(e, "self_deactivated", survivors) is not None
                or first(e, "view_timeout", survivors) is not None
                or first(e, "store_error", survivors) is not None
                or first(e, "collective_error", survivors, t_kill) is not None
            ),
            a.view_timeout_s,
        )
        evs = r.events()
        degraded_times(times, evs, survivors, victim, t_kill)
        bad = [
            e
            for e in evs
            if e["ev"] in ("self_deactivated", "view_timeout", "store_error", "collective_error")
        ]
        if times["resumed_s"] is None:
            out["errors"] = bad[:6]
            if case == "D":
                # Nothing can recover without the coordinator; give a replacement rank 0 a chance anyway.
                time.sleep(a.d_observe_s)
                t_rep = r.start("coord-join", 0, 1)
                time.sleep(a.d_observe_s)
                out["after_replacement"] = [e for e in r.events() if float(e["t"]) >= t_rep][:12]
                r.stop()
                evs = r.events()
                out["outcome"] = (
                    "not recovered (as expected)" if not _recovered(evs, survivors) else "recovered"
                )
            else:
                # Watch past Mooncake's 30 s heartbeat timeout: does the coordinator correct itself?
                time.sleep(a.observe_s)
                r.stop()
                evs = r.events()
                out["outcome"] = "failed: " + ("+".join(sorted({e["ev"] for e in bad})) or "no resume")
            degraded_times(times, evs, survivors, victim, t_kill)
            out["trace"] = _trace(evs, t_kill)
            return out
        t_rep = r.start("join", victim, 1)
        times["replacement_start_after_kill_s"] = t_rep - t_kill
        full = r.wait_for(
            lambda e: (
                last_of_each(e, "resumed", [*survivors, victim], t_rep) is not None
                and all(
                    any(
                        x["ev"] == "progress" and x["rank"] == k and x["t"] > t_rep and all(x["active"])
                        for x in e
                    )
                    for k in serving
                )
            ),
            a.join_timeout_s,
        )
        if full:
            time.sleep(3.0)  # serve a while at full size: the rejoined world must stay right
        r.stop()
        evs = r.events()
        degraded_times(times, evs, survivors, victim, t_kill)
        times["replacement_ready_s"] = _rel(first(evs, "ready", [victim], t_rep), t_rep)
        joined = [e for e in evs if e["ev"] == "joined"]
        rec = [e for e in evs if e["ev"] == "recovered"]
        times["join_world_s"] = joined[0]["world_s"] if joined else None
        times["join_serving_s"] = joined[0]["serving_s"] if joined else None
        times["recover_world_s"] = max((x["world"][2] for x in rec), default=None)
        times["recover_serving_s"] = max((x["serving"][2] for x in rec), default=None)
        times["full_after_replacement_s"] = _rel(
            last_of_each(evs, "admitted", [*survivors, victim], t_rep), t_rep
        )
        out["recover_status"] = [
            {"rank": x["rank"], "world": x["world"][:2], "serving": x["serving"][:2]} for x in rec
        ]
        ends = [e for e in evs if e["ev"] == "final"]
        out["wrong"] = sum(int(f["wrong"]) for f in ends)
        counts = [e for e in evs if e["rank"] == 0 and e["ev"] in ("planner", "final") and "answered" in e]
        out["planner_last"] = (
            {k: counts[-1][k] for k in ("step", "answered", "requests", "wrong")} if counts else None
        )
        out["wrong"] += int(counts[-1]["wrong"]) if counts and counts[-1]["ev"] == "planner" else 0
        out["untrusted"] = [
            {k: e[k] for k in ("step", "req", "failed")} for e in evs if e["ev"] == "untrusted"
        ][:8]
        out["steps_after_join"] = {f["rank"]: f["step"] for f in ends if f["rank"] in serving}
        errs = [
            e
            for e in evs
            if e["ev"] in ("wrong", "collective_error", "admission_barrier_timeout", "init_error")
        ]
        if a.planner:
            out["rerun_answered"] = [
                {k: e[k] for k in ("untrusted_req", "answered_req")}
                for e in evs
                if e["ev"] == "rerun_answered"
            ]
            if not any(e["ev"] == "final" and e["rank"] == 0 for e in evs):
                errs.append({"ev": "no_final", "rank": 0})
            if any(x["untrusted_req"] != x["answered_req"] for x in out["rerun_answered"]):
                errs.append({"ev": "rerun_answered_another_request", "rank": 0})
        out["errors"] = errs[:6]
        out["outcome"] = "ok" if full and out["wrong"] == 0 and not errs else "failed: rejoin"
        if out["outcome"] != "ok":
            out["trace"] = _trace(evs, t_kill)
        return out
    except Exception as e:  # a harness fault is recorded as the run's outcome
        out["outcome"] = f"error: {type(e).__name__}: {e}"
        return out
    finally:
        r.stop()
        out["run_dir"] = str(run_dir)
        out["coord_log"] = _coord_log(run_dir)


def degraded_times(
    times: dict[str, float | None],
    evs: list[dict[str, Any]],
    survivors: list[int],
    victim: int,
    t_kill: float,
) -> None:
    """Kill -> the survivors' first failed collective, their view without the victim, rank 0's world view
    without it, and every survivor's first right answer on the degraded group (seconds)."""
    times["detection_s"] = _rel(first(evs, "detected", survivors, t_kill), t_kill)
    times["view_s"] = _rel(last_of_each(evs, "view", survivors, t_kill), t_kill)
    dropped = [e for e in evs if e["ev"] == "world_mirror" and e["rank"] == 0 and not e["active"][victim]]
    times["world_view_rank0_s"] = _rel(first(dropped, "world_mirror", None, t_kill), t_kill)
    times["resumed_s"] = _rel(last_of_each(evs, "resumed", survivors, t_kill), t_kill)


def _rate(evs: list[dict[str, Any]], rank: int, t0: float, t1: float) -> dict[str, float] | None:
    """Serving steps per second of ``rank`` between its first and last progress line in [t0, t1], and the
    share of that time it spent in world-group heartbeats."""
    pr = [e for e in evs if e["ev"] == "progress" and e["rank"] == rank and t0 <= float(e["t"]) <= t1]
    if len(pr) < 2:
        return None
    dt = float(pr[-1]["t"]) - float(pr[0]["t"])
    hb = float(pr[-1].get("hb_s", 0.0)) - float(pr[0].get("hb_s", 0.0))
    return {
        "steps_per_s": round((int(pr[-1]["step"]) - int(pr[0]["step"])) / dt, 1),
        "heartbeat_share": round(hb / dt, 3),
        "seconds": round(dt, 2),
    }


def _coord_log(run_dir: Path) -> list[str]:
    """The coordinator's auto-deactivation and timeout lines from rank 0's log."""
    f = run_dir / "rank0.0.log"
    if not f.is_file():
        return []
    keep = ("auto_deactivate", "handleTimedOutAgent")
    return [ln[-200:] for ln in f.read_text(errors="replace").splitlines() if any(k in ln for k in keep)][:12]


def _rel(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 3)


def _recovered(evs: list[dict[str, Any]], survivors: list[int]) -> bool:
    return any(e["ev"] == "resumed" and e["rank"] in survivors for e in evs)


def _trace(evs: list[dict[str, Any]], t0: float) -> list[str]:
    """The membership events after ``t0``, one line each (progress lines left out)."""
    keep = [e for e in evs if float(e["t"]) >= t0 - 0.5 and e["ev"] not in ("progress",)]
    lines = []
    for e in keep[:40]:
        rest = {k: v for k, v in e.items() if k not in ("t", "rank", "inc", "ev")}
        lines.append(
            f"{float(e['t']) - t0:+.3f}s rank {e['rank']}.{e['inc']} {e['ev']} {json.dumps(rest)[:240]}"
        )
    return lines


def summary(rows: list[dict[str, Any]]) -> str:
    head = (
        "| case | N | outcome | detect s | view s | rank0 world view s | resumed s | join world/serving s "
        "| recover world/serving s | full after repl. s | wrong |"
    )
    lines = [head, "|" + " --- |" * 11]
    for x in rows:
        t = x["times"]

        def f(v: Any) -> str:
            return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)

        lines.append(
            f"| {x['case']} | {x['n']} | {x['outcome']} | {f(t.get('detection_s'))} | {f(t.get('view_s'))} | "
            f"{f(t.get('world_view_rank0_s'))} | {f(t.get('resumed_s'))} | "
            f"{f(t.get('join_world_s'))}/{f(t.get('join_serving_s'))} | "
            f"{f(t.get('recover_world_s'))}/{f(t.get('recover_serving_s'))} | "
            f"{f(t.get('full_after_replacement_s'))} | {f(x.get('wrong'))} |"
        )
    return "\n".join(lines)


def main() -> None:
    if "--child" in sys.argv:
        child_main([a for a in sys.argv[1:] if a != "--child"])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="A,B,C,D")
    p.add_argument("--ns", default="2,3")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--steady-s", type=float, default=8.0, help="case A: seconds of serving after warm-up")
    p.add_argument("--collective-timeout-s", type=float, default=0.25)
    p.add_argument("--tail-timeout-s", type=float, default=0.01)
    p.add_argument("--window-s", type=float, default=1.5, help="Mooncake's fault reconciliation window")
    p.add_argument("--start-timeout-s", type=float, default=90.0)
    p.add_argument("--view-timeout-s", type=float, default=60.0)
    p.add_argument("--join-timeout-s", type=float, default=90.0)
    p.add_argument("--d-observe-s", type=float, default=10.0)
    p.add_argument("--observe-s", type=float, default=36.0, help="after a failed recovery: watch the mirrors")
    p.add_argument(
        "--heartbeat-steps",
        type=int,
        default=0,
        help="K > 0: every serving rank runs an all-reduce on the world group after every K-th step (and one "
        "when it parks after a failure); rank 0 loops on that same all-reduce",
    )
    p.add_argument(
        "--heartbeat-gated",
        action="store_true",
        help="rank 0 enters heartbeat n only once a serving rank announced it in the store (not in flight "
        "while the view changes)",
    )
    p.add_argument(
        "--planner",
        action="store_true",
        help="rank 0 plans every step and the lowest live serving rank broadcasts each answer back to it "
        "(cases A, B, C)",
    )
    p.add_argument("--out", type=Path, default=RESULT)
    p.add_argument("--append", action="store_true", help="add to the rows already in --out")
    a = p.parse_args()
    if a.planner and "D" in a.cases.split(","):
        p.error("case D (today's layout) has no planner: leave it out of --cases with --planner")
    base = Path(tempfile.mkdtemp(prefix="coordonly-"))
    rows: list[dict[str, Any]] = []
    if a.append and a.out.is_file():
        rows = list(json.loads(a.out.read_text())["runs"])
    for case in a.cases.split(","):
        for n in [int(x) for x in a.ns.split(",")]:
            for i in range(1 if case == "D" else a.runs):
                t0 = time.time()
                row = one_run(case, n, a, base)
                row["started"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0))
                row["wall_s"] = round(time.time() - t0, 1)
                rows.append(row)
                print(f"{case} N={n} run {i + 1}: {row['outcome']} {json.dumps(row['times'])}", flush=True)
                a.out.parent.mkdir(parents=True, exist_ok=True)
                a.out.write_text(json.dumps(_doc(a, rows), indent=1) + "\n")
    print(summary(rows))


def _doc(a: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "what": "issue #19: coordinator-only rank 0 on mooncake-cpu (bench/coordinator_only.py)",
        "mooncake": "mooncake-transfer-engine 0.3.13.post1 (CPU)",
        "settings": {
            "collective_timeout_s": a.collective_timeout_s,
            "tail_timeout_s": a.tail_timeout_s,
            "window_s": a.window_s,
            "pace_s": PACE_S,
            "heartbeat_steps": a.heartbeat_steps,
            "heartbeat_gated": a.heartbeat_gated,
            "planner": a.planner,
        },
        "runs": rows,
    }


if __name__ == "__main__":
    main()
