#!/usr/bin/env python3
"""Rank failure and rejoin on GPUs (backend `mooncake`, one process per GPU); writes one JSON result.

    PYTHONPATH=worker:operator python bench/gpu_recovery.py --members 2 --ranks-per-member 1   # 2 GPUs
    PYTHONPATH=worker:operator python bench/gpu_recovery.py --members 2 --ranks-per-member 2   # 4 GPUs
    .venv/bin/python bench/gpu_recovery.py --dry-run      # the same scenario on CPU (mooncake-cpu)

Scenario: every rank starts; the ranks measure the steady-state step (the elastic runtime's step against a
plain forward with one all-reduce per layer, in short rounds that alternate the order, same processes; the
ratio is the median of the per-round ratios, with a bootstrap 95 % interval; host syncs per step counted
under `torch.cuda.set_sync_debug_mode`); a client streams requests to the leader and checks every answer
against the float64 reference; all ranks of the last member are SIGKILLed mid-stream; survivors keep
answering; the replacements start with rejoin and join; answers come from the whole world again.

Imports only torch, mooncake (in the rank processes) and eep_worker modules that need neither pydantic, pyzmq
nor kubernetes. Bounded (`--deadline-s`, default 330 s); the JSON is written whatever happens, with `ok` and
`error`. Environment for GPUs is set here: LD_PRELOAD (system libstdc++),
MOONCAKE_PG_PREFERRED_GPU_COLLECTIVE_BACKEND=new, MC_FORCE_TCP=true.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO / "operator", REPO / "worker"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from eep_worker import protocol as P  # noqa: E402
from eep_worker.settings import ClusterSettings, ModelSettings, Settings, TimeoutSettings  # noqa: E402

LIBSTDCXX = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"


# ---------------------------------------------------------------------------------------------- rank side


class JsonFileSource:
    """The leader's membership source for the bench: a JSON file {epoch, activeRanks, joiningRanks}."""

    def __init__(self, path: str) -> None:
        self.path, self._stop = path, threading.Event()
        self._latest: P.Snapshot | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                m = json.loads(Path(self.path).read_text())
                snap = P.Snapshot(int(m["epoch"]), frozenset(m["activeRanks"]), frozenset(m["joiningRanks"]))
                if self._latest is None or snap.epoch > self._latest.epoch:
                    self._latest = snap
            except (OSError, ValueError, KeyError, TypeError):
                pass
            self._stop.wait(0.02)

    def start(self) -> None:
        self._thread.start()

    def latest(self) -> P.Snapshot | None:
        return self._latest

    def stop(self) -> None:
        self._stop.set()


def _bootstrap_median_ci(values: list[float], resamples: int = 2000) -> list[float]:
    """95 % interval of the median of ``values`` (percentile bootstrap, fixed seed: reproducible)."""
    import random  # noqa: PLC0415

    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return [medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]]


SYNC_CHECK_STEPS = 100
"""Steady-state steps run under `torch.cuda.set_sync_debug_mode` (each mode)."""


def _checked_step(rt: Any, tokens: tuple[int, ...], offset: int) -> Any:
    """The plain step plus only the runtime's own per-collective success tracking (its `_combine`, which keeps
    the work handles, and `_all_succeeded` after the read-back). The batch travels in ``offset + n`` ints
    (``offset`` zeros first) and the model reads it at ``offset``. An attribution variant, not a baseline."""
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    n = len(tokens)
    control = torch.zeros(offset + n, dtype=torch.int64, pin_memory=rt.on_gpu)
    host = torch.tensor((0,) * offset + tokens, dtype=torch.int64)
    dev = torch.zeros(offset + n, dtype=torch.int64, device=rt.device)
    dev_tokens = dev[offset:]

    def step() -> None:
        if rt.is_leader:
            control.copy_(host)
        work = dist.broadcast(control, src=0, group=rt.world.cpu, async_op=True)
        work.wait()
        rt._works = [work]
        dev.copy_(control, non_blocking=True)
        out = rt.model.forward(dev_tokens, rt.metadata.logical_to_rank_dispatch_physical_map, rt._combine)
        if rt.is_leader:
            out[:n].to("cpu")
            rt._all_succeeded()

    return step


def _attribution_steps(rt: Any, tokens: tuple[int, ...], elastic_step: Any) -> dict[str, Any]:
    """Diagnosis (`--attribute`): variants that each change one thing between plain_checked and elastic."""
    from eep_worker.plan_ring import PlanRing  # noqa: PLC0415

    def swapped(**attrs: Any) -> Any:
        def step() -> None:
            saved = {k: getattr(rt, k) for k in attrs}
            for k, v in attrs.items():
                setattr(rt, k, v)
            try:
                elastic_step()
            finally:
                for k, v in saved.items():
                    setattr(rt, k, v)

        return step

    # The protocol's Python taken out: the leader copies a plan encoded once, followers take a plan decoded
    # once (its step -1 passes every later real decode's staleness check). What is left of elastic -
    # plain_wide is not the protocol's encode and decode.
    import numpy as np  # noqa: PLC0415

    everyone = frozenset(range(rt.world_size))
    encoded = P.encode(P.Plan(rt.epoch, -1, P.Kind.BATCH, tokens, everyone), len(tokens))
    encoded_array = np.asarray(encoded, dtype=np.int64)
    decoded = P.decode(encoded, world_size=rt.world_size, min_epoch=rt.epoch, after_step=-2)

    def copy_encoded(plan: P.Plan, out: Any) -> None:
        out[:] = encoded_array

    def decoded_once(header: Any, **_: Any) -> P.Plan:
        return decoded

    def bare_protocol() -> None:
        saved = P.encode_into, P.decode_header
        P.encode_into, P.decode_header = copy_encoded, decoded_once
        try:
            elastic_step()
        finally:
            P.encode_into, P.decode_header = saved

    plain = _checked_step(rt, tokens, 0)

    def plain_spin() -> None:
        # Calibration: 20 us of host work on every rank before the step, as a protocol cost would sit.
        end = time.perf_counter() + 20e-6
        while time.perf_counter() < end:
            pass
        plain()

    return {
        # plain_checked in the plan's buffer shape: the header's ints broadcast too, tokens read after them.
        "plain_wide": _checked_step(rt, tokens, P.HEADER),
        # No copy events at all: what the runtime's guard on reusing a pinned plan buffer costs.
        "elastic_no_events": swapped(ring=PlanRing(P.HEADER + len(tokens), pin=rt.on_gpu, event=None)),
        "elastic_bare_protocol": bare_protocol,
        "plain_checked_spin20us": plain_spin,
    }


def _steady_state(rt: Any, steps: int, rounds: int, attribute: bool = False) -> dict[str, Any]:
    """Every original rank, collectively, before serving: plain vs elastic step time, and host syncs."""
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    on_gpu = rt.on_gpu
    world = rt.world
    n = rt.s.model.max_batch_tokens
    tokens = tuple(range(7, 7 + n))
    live = frozenset(range(rt.world_size))

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize()

    dev_tokens = torch.tensor(tokens, dtype=torch.int64, device=rt.device)

    def combine(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, group=world.device)
        return t

    control = torch.zeros(n, dtype=torch.int64, pin_memory=on_gpu)
    host_tokens = torch.tensor(tokens, dtype=torch.int64)

    def plain_step() -> None:
        # The same model step without the elastic runtime, as a non-elastic server runs it: the leader
        # broadcasts the step's batch (the control message every server sends each step; SGLang's scheduler
        # does it on a CPU group), every rank copies it to the device and runs the forward with one plain
        # all-reduce per layer. No epoch, no membership, no success checks.
        if rt.is_leader:
            control.copy_(host_tokens)
        dist.broadcast(control, src=0, group=world.cpu)
        dev_tokens.copy_(control, non_blocking=True)
        out = rt.model.forward(dev_tokens, rt.metadata.logical_to_rank_dispatch_physical_map, combine)
        if rt.is_leader:
            out[:n].to("cpu")

    def batch_plan() -> P.Plan | None:
        # What the leader passes to `run_plan` for the next steady-state step (the others pass None).
        return P.Plan(rt.epoch, rt.step_no + 1, P.Kind.BATCH, tokens, live) if rt.is_leader else None

    def elastic_step() -> None:
        _, out = rt.run_plan(batch_plan())
        if rt.is_leader and out is not None:
            out[:n].to("cpu")
            rt._all_succeeded()

    steps_by_name = {
        "plain": plain_step,
        # elastic - plain_checked is what the plan protocol itself costs.
        "plain_checked": _checked_step(rt, tokens, 0),
        "elastic": elastic_step,
    }
    if attribute:
        steps_by_name.update(_attribution_steps(rt, tokens, elastic_step))
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for step in steps_by_name.values():
        for _ in range(10):
            step()  # warm-up
    order = list(steps_by_name.items())
    for i in range(rounds):
        # Alternate the order (ABC, CBA, ...): the collectives' latency drifts over seconds, and a fixed
        # order would charge the drift to whichever variant runs last.
        for name, step in order if i % 2 == 0 else order[::-1]:
            dist.barrier(group=world.cpu)
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync()
            times[name].append((time.perf_counter() - t0) / steps)
        if rt.is_leader and (i + 1) % 50 == 0:  # progress: a run that overstays its deadline shows where
            print(f"steady state: {i + 1} of {rounds} rounds", file=sys.stderr, flush=True)
    result: dict[str, Any] = {
        "plain_step_s": statistics.median(times["plain"]),
        "plain_checked_step_s": statistics.median(times["plain_checked"]),
        "elastic_step_s": statistics.median(times["elastic"]),
        "step_times_s": {name: [round(t, 7) for t in ts] for name, ts in times.items()},
    }
    for name in steps_by_name:
        if name not in ("plain", "elastic"):
            result[f"{name}_ratio"] = statistics.median(
                v / p for v, p in zip(times[name], times["plain"], strict=True)
            )
    # Paired per round (the variants of one round run back to back): the round-to-round spread of a step
    # (about +-15 % on H200s over Mooncake's TCP/P2P collectives) is larger than the difference measured.
    # Short rounds pair better: the collectives' latency drifts within a second.
    paired = [e / p for e, p in zip(times["elastic"], times["plain"], strict=True)]
    result["step_time_ratio"] = statistics.median(paired)
    result["step_time_ratio_ci95"] = _bootstrap_median_ci(paired)
    result["step_time_ratio_of_means"] = sum(times["elastic"]) / sum(times["plain"])
    result["step_time_ratio_of_medians"] = result["elastic_step_s"] / result["plain_step_s"]
    result["steps_per_round"], result["rounds"] = steps, rounds
    if on_gpu:
        # Count syncs in the elastic step (the leader's answer read-back excluded: it is the answer itself).
        counts = []
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(SYNC_CHECK_STEPS):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    rt.run_plan(batch_plan())
                counts.append(sum("synchroniz" in str(w.message) for w in caught))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        worst = torch.tensor([max(counts)], dtype=torch.int64)
        dist.all_reduce(worst, op=dist.ReduceOp.MAX, group=world.cpu)
        result["host_syncs_per_step_warn_mode"] = max(counts) / 1
        result["host_syncs_per_step_max_over_ranks"] = int(worst.item())
        if int(worst.item()) == 0:
            # Safe to run with "error" now: no rank will raise half-way through a collective.
            error_ok = True
            torch.cuda.set_sync_debug_mode("error")
            try:
                for _ in range(SYNC_CHECK_STEPS):
                    rt.run_plan(batch_plan())
            except RuntimeError:
                error_ok = False
            finally:
                torch.cuda.set_sync_debug_mode("default")
            result["error_mode_steps_without_sync"] = SYNC_CHECK_STEPS if error_ok else 0
    else:
        result["host_syncs_per_step_max_over_ranks"] = None  # no CUDA: nothing to count
    torch.cuda.synchronize() if on_gpu else None
    return result


def rank_process(  # noqa: PLR0917 - a multiprocessing target takes positional arguments
    settings: Settings, rank: int, events: Any, requests: Any, path: str, measure: dict[str, int]
) -> None:
    import logging  # noqa: PLC0415

    from eep_worker.rank import RankRuntime  # noqa: PLC0415

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
    )
    if measure.get("pin_cpus"):
        # Each rank (and every thread it starts: Mooncake's workers, the transfer engine) on its own share
        # of the host's cores, so the step-time rounds do not also measure where the scheduler put them.
        cpus = sorted(os.sched_getaffinity(0))
        share = max(1, len(cpus) // measure["world"])
        os.sched_setaffinity(0, cpus[rank * share : (rank + 1) * share] or cpus)
    rt = RankRuntime(
        settings, rank, events, requests, source_factory=lambda s: JsonFileSource(path), rendezvous=None
    )
    try:
        rt.start()
        if measure and not settings.rejoin:
            result = _steady_state(rt, measure["steps"], measure["rounds"], measure["attribute"])
            events.put(("bench", rank, result))
        rt.lead() if rt.is_leader else rt.follow()
    except BaseException as e:
        events.put(("bench_error", rank, f"{type(e).__name__}: {e}", traceback.format_exc()[-3000:]))
        sys.stderr.flush()
        os._exit(1)


# ---------------------------------------------------------------------------------------------- driver


class Run:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.world = a.members * a.ranks_per_member
        self.workdir = Path(a.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.membership = self.workdir / "membership.json"
        self.epoch = 0
        self.ctx = mp.get_context("spawn")
        self.events: Any = self.ctx.Queue()
        self.requests: Any = self.ctx.Queue()
        self.procs: dict[int, Any] = {}
        self.answers: list[dict[str, Any]] = []
        self.wrong: list[str] = []
        self.ready: set[int] = set()
        self.bench: dict[int, dict[str, Any]] = {}
        self.phases: dict[str, list[float]] = {}
        self.untrusted: list[float] = []
        self.rank_errors: list[str] = []
        self.recoveries: list[tuple[Any, ...]] = []
        self._pending: dict[str, tuple[list[int], float]] = {}
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self.port = _free_port()
        from eep_worker.moe import ModelConfig, ReferenceMoEModel, tolerance_for  # noqa: PLC0415

        self.config = ModelConfig(
            num_layers=a.layers, hidden_size=a.hidden, num_experts=a.experts, top_k=a.top_k, seed=0
        )
        self.reference = ReferenceMoEModel(self.config)
        self.tolerance = tolerance_for(self.config)

    def write_membership(self, active: list[int], joining: list[int]) -> None:
        self.epoch += 1
        tmp = self.membership.with_suffix(".tmp")
        tmp.write_text(json.dumps({"epoch": self.epoch, "activeRanks": active, "joiningRanks": joining}))
        tmp.replace(self.membership)

    def settings(self, member: int, rejoin: bool) -> Settings:
        a, rpm = self.a, self.a.ranks_per_member
        return Settings(
            cluster=ClusterSettings(
                "bench", "bench", member, member * rpm, rpm, self.world, "127.0.0.1", self.port, 0
            ),
            timeouts=TimeoutSettings(a.collective_timeout_s, a.reconcile_window_s, a.join_timeout_s),
            model=ModelSettings(
                a.layers, a.experts, a.top_k, a.hidden, 0, math.ceil(a.experts / rpm), a.max_batch
            ),
            backend=a.backend,
            pod_ip="127.0.0.1",
            http_port=0,
            rejoin=rejoin,
            membership_source="file",
            membership_file=str(self.membership),
            membership_zmq="",
            idle_step_s=0.01,
            subgroups=a.subgroups == "column",
            warmup_delay_s=a.warmup_delay_s,
        )

    def start_member(self, member: int, rejoin: bool, measure: bool) -> None:
        rpm = self.a.ranks_per_member
        for rank in range(member * rpm, (member + 1) * rpm):
            self.ready.discard(rank)
            m = (
                {
                    "steps": self.a.steps,
                    "rounds": self.a.rounds,
                    "pin_cpus": int(self.a.pin_cpus),
                    "attribute": self.a.attribute,
                    "world": self.world,
                }
                if measure
                else {}
            )
            p = self.ctx.Process(
                target=rank_process,
                args=(
                    self.settings(member, rejoin),
                    rank,
                    self.events,
                    self.requests if rank == 0 else None,
                    str(self.membership),
                    m,
                ),
                name=f"rank-{rank}",
            )
            p.start()
            self.procs[rank] = p

    def stall_dump(self, after_s: float) -> None:
        """What every rank process is blocked in, from /proc (and py-spy when installed)."""
        time.sleep(after_s)
        spy = shutil.which("py-spy")
        for rank, proc in sorted(self.procs.items()):
            lines = [f"rank {rank} pid {proc.pid} alive={proc.is_alive()} at {time.time():.3f}"]
            for task in sorted(Path(f"/proc/{proc.pid}/task").glob("*")):

                def read(name: str, task: Path = task) -> str:
                    try:
                        return (task / name).read_text().strip()
                    except OSError as e:
                        return f"<{e.strerror}>"

                state = read("stat").rsplit(")", 1)[-1].split()[:1]
                lines.append(
                    f"tid {task.name} {read('comm')!r} state={state} wchan={read('wchan')} "
                    f"syscall={read('syscall').split()[:1]}"
                )
            if spy:
                try:
                    r = subprocess.run(
                        [spy, "dump", "--native", "--pid", str(proc.pid)],
                        check=False, capture_output=True, text=True, timeout=60,
                    )  # fmt: skip
                    lines.append(r.stdout + r.stderr)
                except (OSError, subprocess.TimeoutExpired) as e:
                    lines.append(f"py-spy: {e}")
            (self.workdir / f"stall-dump-rank{rank}.txt").write_text("\n".join(lines) + "\n")

    def kill_member(self, member: int) -> None:
        rpm = self.a.ranks_per_member
        for rank in range(member * rpm, (member + 1) * rpm):
            os.kill(self.procs[rank].pid, signal.SIGKILL)
        for rank in range(member * rpm, (member + 1) * rpm):
            self.procs[rank].join(10)

    def pump(self) -> None:
        import torch  # noqa: PLC0415

        from eep_worker.moe import compare  # noqa: PLC0415

        while not self.stop.is_set():
            try:
                msg = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            kind = msg[0]
            if kind == "ready":
                self.ready.add(msg[1])
            elif kind == "response":
                _, rid, rows, epoch, active, _degraded = msg
                with self._lock:
                    tokens, t_sent = self._pending.pop(rid)
                check = compare(
                    torch.tensor(rows, dtype=torch.float64), self.reference.run(tokens), self.tolerance
                )
                if not check.ok:
                    self.wrong.append(f"{rid}: {check}")
                self.answers.append(
                    {
                        "t": time.time(),
                        "latency_s": time.time() - t_sent,
                        "epoch": epoch,
                        "active": active,
                        "ok": check.ok,
                    }
                )
            elif kind == "phase":
                self.phases.setdefault(f"rank{msg[1]}.{msg[2]}", []).append(float(msg[3]))
            elif kind == "untrusted":
                self.untrusted.append(float(msg[2]))
            elif kind == "bench":
                self.bench[msg[1]] = msg[2]
            elif kind == "bench_error":
                self.rank_errors.append(f"rank {msg[1]}: {msg[2]}\n{msg[3]}")
            elif kind == "exit":
                self.rank_errors.append(f"rank {msg[1]} exit {msg[2]}: {msg[3]}")
            elif kind == "recovered":
                self.recoveries.append(msg[1:])

    def client(self) -> None:
        from eep_worker.protocol import Request  # noqa: PLC0415

        i = 0
        while not self.stop.is_set():
            with self._lock:
                busy = len(self._pending)
            if busy < 4:
                i += 1
                tokens = [(i * 37 + j * 11) % 1024 for j in range(1 + i % 7)]
                rid = f"r{i}"
                with self._lock:
                    self._pending[rid] = (tokens, time.time())
                self.requests.put(Request(rid, tokens))
            time.sleep(self.a.request_interval_s)

    def wait(self, pred: Any, timeout_s: float, what: str) -> float:
        t0 = time.time()
        while time.time() - t0 < timeout_s:
            if self.rank_errors:
                raise RuntimeError(f"while waiting for {what}: {self.rank_errors[0]}")
            if pred():
                return time.time()
            time.sleep(0.02)
        raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")

    def first_answer_after(self, t: float, active: list[int]) -> float | None:
        for ans in list(self.answers):
            if ans["t"] >= t and ans["active"] == active:
                return float(ans["t"])
        return None

    def scenario(self, out: dict[str, Any]) -> None:
        a, rpm = self.a, self.a.ranks_per_member
        victim = a.members - 1
        victims = list(range(victim * rpm, (victim + 1) * rpm))
        survivors = [r for r in range(self.world) if r not in victims]
        everyone = list(range(self.world))
        threading.Thread(target=self.pump, daemon=True).start()
        self.write_membership(everyone, [])
        t0 = time.time()
        for m in range(a.members):
            self.start_member(m, rejoin=False, measure=a.steps > 0)
        self.wait(lambda: len(self.ready) == self.world, a.start_timeout_s, "every rank ready")
        out["start_s"] = time.time() - t0
        spy = shutil.which("py-spy")
        if a.profile_s > 0 and spy:
            for rank, proc in sorted(self.procs.items()):
                subprocess.Popen(
                    [
                        spy, "record", "--pid", str(proc.pid), "--duration", str(int(a.profile_s)),
                        "--rate", "1000", "--format", "raw", "--nonblocking", "--idle",
                        "--output", str(self.workdir / f"profile-rank{rank}.txt"),
                    ],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
        if a.steps > 0:
            # Bounded by --deadline-s: the measurement's length depends on --steps, --rounds and the model.
            self.wait(lambda: len(self.bench) == self.world, a.deadline_s, "steady-state measurements")
            out["steady_state"] = {f"rank{r}": v for r, v in sorted(self.bench.items())}
            lead = self.bench[0]
            out["step_time_ratio"] = lead["step_time_ratio"]
            out["step_time_ratio_ci95"] = lead["step_time_ratio_ci95"]
            out["plain_checked_ratio"] = lead["plain_checked_ratio"]
            out["host_syncs_per_step"] = lead.get("host_syncs_per_step_max_over_ranks")
        threading.Thread(target=self.client, daemon=True).start()
        self.wait(lambda: len(self.answers) >= 20, 60, "20 answers from the full world")
        if a.steady_only:
            return
        t_kill = time.time()
        self.kill_member(victim)
        self.write_membership(survivors, [])
        t_resume = self.wait(
            lambda: self.first_answer_after(t_kill, survivors) is not None, 90, "degraded answers"
        )
        out["detection_s"] = (min(self.untrusted) - t_kill) if self.untrusted else None
        out["resume_s"] = (self.first_answer_after(t_kill, survivors) or t_resume) - t_kill
        self.wait(lambda: len([x for x in self.answers if x["t"] > t_resume]) >= 10, 60, "degraded serving")
        t_start = time.time()
        self.start_member(victim, rejoin=True, measure=False)
        if a.stall_dump_s > 0:
            threading.Thread(target=self.stall_dump, args=(a.stall_dump_s,), daemon=True).start()
        self.write_membership(survivors, victims)
        self.wait(
            lambda: all(r in self.ready for r in victims), a.join_timeout_s + 120, "replacements joined"
        )
        out["replacement_ready_s"] = time.time() - t_start
        t_full = self.wait(
            lambda: self.first_answer_after(t_start, everyone) is not None, 60, "full capacity"
        )
        out["replacement_start_to_full_capacity_s"] = (
            self.first_answer_after(t_start, everyone) or t_full
        ) - t_start
        self.write_membership(everyone, [])
        self.wait(
            lambda: len([x for x in self.answers if x["t"] > t_full]) >= 20, 60, "serving after the join"
        )
        out["phases_s"] = {k: round(max(v), 4) for k, v in sorted(self.phases.items())}
        for name in ("wait_peer", "recover_ranks", "broadcast", "join"):
            values = [max(v) for k, v in self.phases.items() if k.endswith("." + name)]
            out[f"{name}_s"] = max(values) if values else None
        out["recoveries"] = [list(r) for r in self.recoveries]

    def finish(self) -> None:
        self.stop.set()
        for p in self.procs.values():
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
        for p in self.procs.values():
            p.join(5)


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _environment(a: argparse.Namespace) -> dict[str, Any]:
    """Set the loader/backend environment the rank processes inherit; returns what was set."""
    env: dict[str, str] = {"MC_FORCE_TCP": "true"}
    if a.backend == "mooncake":
        env["MOONCAKE_PG_PREFERRED_GPU_COLLECTIVE_BACKEND"] = "new"
        if Path(LIBSTDCXX).exists():
            env["LD_PRELOAD"] = LIBSTDCXX
    else:
        cpu_env = Path(sys.prefix) / "mooncake-cpu.env"
        if cpu_env.is_file():
            for line in cpu_env.read_text().splitlines():
                key, sep, value = line.strip().partition("=")
                if sep and not key.startswith("#"):
                    env[key] = value
    os.environ.update(env)
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=2)
    p.add_argument("--ranks-per-member", type=int, default=1)
    p.add_argument("--backend", default="mooncake", choices=["mooncake", "mooncake-cpu"])
    p.add_argument(
        "--dry-run", action="store_true", help="CPU mode: backend mooncake-cpu, short measurements"
    )
    p.add_argument("--subgroups", default="auto", choices=["auto", "column", "none"])
    p.add_argument("--collective-timeout-s", type=float, default=0.25)
    p.add_argument(
        "--reconcile-window-s", type=float, default=2.5, help="raised where the step fence needs more"
    )
    p.add_argument("--join-timeout-s", type=float, default=60.0)
    p.add_argument("--warmup-delay-s", type=float, default=0.0)
    p.add_argument("--start-timeout-s", type=float, default=180.0)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="steady-state steps per round (0: skip)")
    p.add_argument("--rounds", type=int, default=300, help="steady-state rounds (each runs every variant)")
    p.add_argument(
        "--steady-only", action="store_true", help="measure the steady state and 20 answers; no kill"
    )
    p.add_argument("--request-interval-s", type=float, default=0.01)
    p.add_argument("--deadline-s", type=float, default=330.0)
    p.add_argument(
        "--attribute",
        action="store_true",
        help="diagnosis: also time variants that each change one thing between plain_checked and elastic",
    )
    p.add_argument(
        "--pin-cpus", action="store_true", help="give each original rank its own share of the host's cores"
    )
    p.add_argument(
        "--stall-dump-s",
        type=float,
        default=0.0,
        help="diagnosis: this long after the replacement starts, write every rank's threads (kernel wait "
        "channel, syscall; py-spy --native when on PATH) to WORKDIR/stall-dump-rankN.txt",
    )
    p.add_argument(
        "--profile-s",
        type=float,
        default=0.0,
        help="diagnosis: py-spy (on PATH) samples every original rank for this long from the moment all are "
        "ready (the steady-state measurement), raw stacks to WORKDIR/profile-rankN.txt",
    )
    p.add_argument("--workdir", default="/tmp/eep-gpu-recovery")
    p.add_argument("--output", default="")
    a = p.parse_args(argv)
    if a.dry_run:
        a.backend = "mooncake-cpu"
        a.steps, a.rounds = min(a.steps, 20), min(a.rounds, 2)
    if a.subgroups == "auto":
        a.subgroups = "column" if a.backend == "mooncake" else "none"
    world = a.members * a.ranks_per_member
    default_name = "gpu_recovery.json" if world <= 2 else f"gpu_recovery_{world}.json"
    if a.backend == "mooncake-cpu":
        default_name = default_name.replace("gpu_", "gpu_dryrun_")
    output = Path(a.output or REPO / "bench" / "results" / default_name)
    out: dict[str, Any] = {
        "ok": False,
        "error": None,
        "backend": a.backend,
        "members": a.members,
        "ranks_per_member": a.ranks_per_member,
        "world_size": world,
        "settings": {k: v for k, v in vars(a).items() if k not in ("output", "workdir")},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    run: Run | None = None

    def give_up(signum: int, frame: Any) -> None:
        raise TimeoutError(f"deadline of {a.deadline_s:.0f}s reached")

    signal.signal(signal.SIGALRM, give_up)
    signal.alarm(int(a.deadline_s))
    t0 = time.time()
    try:
        out["environment"] = _environment(a)
        import torch  # noqa: PLC0415

        out["torch"] = torch.__version__
        if a.backend == "mooncake":
            if torch.cuda.device_count() < world:
                raise RuntimeError(
                    f"need {world} GPUs (one process per GPU), found {torch.cuda.device_count()}"
                )
            out["card"] = torch.cuda.get_device_name(0)
            out["cards"] = torch.cuda.device_count()
        else:
            out["card"] = "cpu"
        # Build/load Mooncake once before the ranks import it together (its first import JIT-builds on GPUs).
        t = time.time()
        subprocess.run(
            [sys.executable, "-c", "import torch; from mooncake import pg"],
            check=True,
            timeout=240,
            env=dict(os.environ),
        )
        out["mooncake_import_s"] = time.time() - t
        run = Run(a)
        run.scenario(out)
        out["answers"] = len(run.answers)
        out["wrong_answers"] = len(run.wrong)
        out["max_latency_s"] = max(x["latency_s"] for x in run.answers)
        out["ok"] = not run.wrong and not run.rank_errors
        if run.wrong:
            out["error"] = f"{len(run.wrong)} wrong answers, first: {run.wrong[0]}"
    except BaseException as e:
        out["error"] = f"{type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc()[-3000:]
    finally:
        signal.alarm(0)
        if run is not None:
            out.setdefault("answers", len(run.answers))
            out.setdefault("wrong_answers", len(run.wrong))
            out["rank_errors"] = run.rank_errors[:5]
            run.finish()
        out["wall_s"] = time.time() - t0
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(
            json.dumps(
                {
                    k: out.get(k)
                    for k in (
                        "ok",
                        "error",
                        "card",
                        "detection_s",
                        "resume_s",
                        "join_s",
                        "recover_ranks_s",
                        "broadcast_s",
                        "replacement_start_to_full_capacity_s",
                        "host_syncs_per_step",
                        "step_time_ratio",
                        "step_time_ratio_ci95",
                        "plain_checked_ratio",
                        "wall_s",
                    )
                },
                default=str,
            )
        )
        print(f"wrote {output}")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
