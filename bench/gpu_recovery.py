#!/usr/bin/env python3
"""Rank failure and rejoin on GPUs (backend `mooncake`, one process per GPU); writes one JSON result.

    .venv/bin/python bench/gpu_recovery.py --members 2 --ranks-per-member 1   # 2 GPUs
    .venv/bin/python bench/gpu_recovery.py --members 2 --ranks-per-member 2   # 4 GPUs
    .venv/bin/python bench/gpu_recovery.py --dry-run      # the same scenario on CPU (mooncake-cpu)
    .venv/bin/python bench/gpu_recovery.py --no-p2p --data-path staged   # off the peer-to-peer route
    .venv/bin/python bench/gpu_recovery.py --layers 4,30,61 --hidden 1024   # one scenario (row) per depth

Scenario: every rank starts; the ranks measure the steady-state step (the elastic runtime's step against a
plain forward with one all-reduce per layer, in short rounds that alternate the order, same processes; the
ratio is the median of the per-round ratios, with a bootstrap 95 % interval; host syncs per step counted
under `torch.cuda.set_sync_debug_mode`); a client streams requests to the leader and checks every answer
against the float64 reference; all ranks of the last member are SIGKILLed mid-stream; survivors keep
answering; the replacements start with rejoin and join; answers come from the whole world again.

The ranks are the worker's own `RankRuntime`, driven through its public step API for the measurement
(`RankRuntime.step` / `step_succeeded`; the step executor's `begin`, `combine` and `variant` for the
attribution variants), then serving as in a pod; the leader reads the membership with the worker's own
`FileSource`. The supervisor side is the test kit's (`eep_testkit`): the operator stand-in writes the
membership file, `QueuePump` dispatches the ranks' typed events, `ReferenceChecker` checks every answer.
Imports only torch, mooncake (in the rank processes), pydantic and this repository's source folders
(contract, worker, hack, testkit: what a GPU machine carries), none of them needing pyzmq, kubernetes,
prometheus_client, PyYAML or rich at import time; torch is imported once the environment is set.
Bounded (`--deadline-s`, default 330 s); the JSON is written whatever happens, with `ok` and `error`.
Environment for GPUs is set here: LD_PRELOAD (system libstdc++), MC_FORCE_TCP=true,
MOONCAKE_PG_PREFERRED_GPU_COLLECTIVE_BACKEND (`--gpu-collectives`, default new); `--no-p2p` adds
MOONCAKE_PG_DISABLE_P2P_ROUTE=1 (the route members on different hosts take without RDMA: host-proxy); on CPU,
what `hack/setup-mooncake-cpu.sh` wrote into the venv's mooncake-cpu.env.

Data path (`--data-path`, the worker's `EEP_DATA_PATH`; docs/known-issues.md, "Members on different hosts"):
`auto` probes the device route at start-up and falls back to `staged`; the JSON's `data_path` is what every
rank chose, with each rank's probe results. In the steady-state measurement the plain baseline's combines go
the same way as the runtime's (device group, or staged through host memory), so the ratio compares like with
like; `host_syncs_per_step` counts the staged path's one sync per combine (`torch.cuda.set_sync_debug_mode`),
and `path_host_syncs_per_step` is the path's own count of them, as a cross-check.

Recovery pause (issue #14): each depth's row has `detection_s` (kill -> the leader's first untrusted step),
`resume_s` (kill -> the first answer from the survivors), `longest_wait_s` (the longest any request answered
after the kill waited), `window_s` (the reconciliation window the worker set) and `implied_pause` (the bounds
the settings imply, `eep_contract.pause`). With several depths (`--layers 4,30,61`) the JSON's `rows` holds
one row per depth; with one, its keys are also at the top level, as before.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from eep_contract.env import GPU_COLLECTIVES_ENV, Coordinator, DataPath, GpuCollectives
from eep_contract.pause import DEFAULT_TAIL_TIMEOUT_S
from eep_testkit.envfile import mooncake_cpu_env
from eep_testkit.ports import free_port
from eep_testkit.pump import Pump, QueuePump
from eep_testkit.standin import MembershipFile, OperatorStandIn
from eep_testkit.stats import bootstrap_median_ci
from eep_testkit.stream import tokens_for
from eep_testkit.wait import wait_until
from eep_worker import events as E
from eep_worker import protocol as P
from eep_worker.membership import FileSource
from eep_worker.protocol import Request, StepPlan
from eep_worker.settings import ClusterSettings, ModelSettings, Settings, TimeoutSettings

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from eep_worker.rank import RankRuntime

REPO = Path(__file__).resolve().parent.parent
LIBSTDCXX = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"
Step = Callable[[], None]


# ---------------------------------------------------------------------------------------------- rank side


@dataclasses.dataclass(frozen=True)
class Measure:
    """What an original rank measures before it serves (`_steady_state`)."""

    steps: int
    """Steady-state steps per round."""
    rounds: int
    """Rounds; each runs every variant once."""
    attribute: bool
    """Also the attribution variants (`--attribute`)."""
    pin_cpus: bool
    """Each rank on its own share of the host's cores."""
    world: int


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """A rank's steady-state measurement, on the ranks' event queue next to the runtime's own events."""

    rank: int
    result: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class DataPathChosen:
    """The data path a rank serves with (`datapath.Choice`), reported once it has started."""

    rank: int
    mode: str
    described: str


@dataclasses.dataclass(frozen=True)
class BenchError:
    """A rank process ended with an exception (its last lines of traceback)."""

    rank: int
    error: str
    traceback: str


SYNC_CHECK_STEPS = 100
"""Steady-state steps run under `torch.cuda.set_sync_debug_mode` (each mode)."""
MEMBERSHIP_POLL_S = 0.02
"""How often the leader reads the membership file (seconds): a new snapshot reaches it within this."""


def _checked_step(rt: RankRuntime, tokens: tuple[int, ...], offset: int) -> Step:
    """The plain step plus only the runtime's own per-collective success tracking (the executor's `begin` and
    `combine`, which keep the work handles, and `step_succeeded` after the read-back). The batch travels in
    ``offset + n`` ints (``offset`` zeros first) and the model reads it at ``offset``. An attribution
    variant, not a baseline."""
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    ex = rt.executor
    n = len(tokens)
    control = torch.zeros(offset + n, dtype=torch.int64, pin_memory=rt.on_gpu)
    host = torch.tensor((0,) * offset + tokens, dtype=torch.int64)
    dev = torch.zeros(offset + n, dtype=torch.int64, device=rt.device)
    dev_tokens = dev[offset:]

    def step() -> None:
        if rt.is_leader:
            control.copy_(host)
        work = dist.broadcast(control, src=0, group=rt.world.cpu, async_op=True)
        assert work is not None
        work.wait()
        ex.begin(work)
        dev.copy_(control, non_blocking=True)
        out = rt.model.forward(dev_tokens, ex.dispatch_map, ex.combine)
        if rt.is_leader:
            out[:n].to("cpu")
            rt.step_succeeded()

    return step


class _PrecomputedCodec:
    """The protocol's Python taken out (`--attribute`): the leader copies a plan encoded once, followers take
    a plan decoded once (its step -1 passes every later real decode's staleness check)."""

    def __init__(self, encoded: npt.NDArray[np.int64], decoded: StepPlan) -> None:
        self.encoded, self.decoded = encoded, decoded

    def encode_into(self, plan: StepPlan, out: Any) -> None:
        out[:] = self.encoded

    def decode_header(
        self, header: Sequence[int], *, capacity: int, world_size: int, min_epoch: int, after_step: int
    ) -> StepPlan:
        return self.decoded


def _attribution_steps(rt: RankRuntime, tokens: tuple[int, ...], elastic_step: Step) -> dict[str, Step]:
    """Diagnosis (`--attribute`): variants that each change one thing between plain_checked and elastic."""
    import numpy as np  # noqa: PLC0415

    from eep_worker.plan_ring import PlanRing  # noqa: PLC0415

    ex = rt.executor
    # No copy events at all: what the runtime's guard on reusing a pinned plan buffer costs.
    ring = PlanRing(P.HEADER + len(tokens), pin=rt.on_gpu, event=None)

    def elastic_no_events() -> None:
        with ex.variant(ring=ring):
            elastic_step()

    # What is left of elastic - plain_wide without the protocol's encode and decode.
    everyone = frozenset(range(rt.world_size))
    encoded = P.encode(StepPlan(ex.epoch, -1, P.Kind.BATCH, tokens, everyone), len(tokens))
    codec = _PrecomputedCodec(
        np.asarray(encoded, dtype=np.int64),
        P.decode(encoded, world_size=rt.world_size, min_epoch=ex.epoch, after_step=-2),
    )

    def elastic_bare_protocol() -> None:
        with ex.variant(codec=codec):
            elastic_step()

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
        "elastic_no_events": elastic_no_events,
        "elastic_bare_protocol": elastic_bare_protocol,
        "plain_checked_spin20us": plain_spin,
    }


def _steady_state(rt: RankRuntime, measure: Measure) -> dict[str, Any]:
    """Every original rank, collectively, before serving: plain vs elastic step time, and host syncs."""
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    steps, rounds = measure.steps, measure.rounds
    on_gpu = rt.on_gpu
    world = rt.world
    ex = rt.executor
    n = rt.settings.model.max_batch_tokens
    tokens = tuple(range(7, 7 + n))
    mine = tokens if rt.is_leader else None  # what each rank passes to `rt.step`

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize()

    dev_tokens = torch.tensor(tokens, dtype=torch.int64, device=rt.device)

    staged = rt.data_path.mode.value == "Staged"

    def combine(t: torch.Tensor) -> torch.Tensor:
        if staged:  # the device route does not work here: the plain step stages its combines too
            rt.data_path.path.all_reduce(t)
        else:
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
        out = rt.model.forward(dev_tokens, ex.dispatch_map, combine)
        if rt.is_leader:
            out[:n].to("cpu")

    def elastic_step() -> None:
        # The runtime's own step, as serving runs it (the leader plans a BATCH of `tokens`).
        out = rt.step(mine).output
        if rt.is_leader and out is not None:
            out[:n].to("cpu")
            rt.step_succeeded()

    steps_by_name: dict[str, Step] = {
        "plain": plain_step,
        # elastic - plain_checked is what the plan protocol itself costs.
        "plain_checked": _checked_step(rt, tokens, 0),
        "elastic": elastic_step,
    }
    if measure.attribute:
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
    result["step_time_ratio_ci95"] = bootstrap_median_ci(paired)
    result["step_time_ratio_of_means"] = sum(times["elastic"]) / sum(times["plain"])
    result["step_time_ratio_of_medians"] = result["elastic_step_s"] / result["plain_step_s"]
    result["steps_per_round"], result["rounds"] = steps, rounds
    result["data_path"] = rt.data_path.mode.value
    if on_gpu:
        # Count syncs in the elastic step (the leader's answer read-back excluded: it is the answer itself).
        counts = []
        path_syncs_before = int(getattr(ex.path, "host_syncs", 0))
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(SYNC_CHECK_STEPS):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    rt.step(mine)
                counts.append(sum("synchroniz" in str(w.message) for w in caught))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        result["path_host_syncs_per_step"] = (
            int(getattr(ex.path, "host_syncs", 0)) - path_syncs_before
        ) / SYNC_CHECK_STEPS
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
                    rt.step(mine)
            except RuntimeError:
                error_ok = False
            finally:
                torch.cuda.set_sync_debug_mode("default")
            result["error_mode_steps_without_sync"] = SYNC_CHECK_STEPS if error_ok else 0
        torch.cuda.synchronize()
    else:
        result["host_syncs_per_step_max_over_ranks"] = None  # no CUDA: nothing to count
    return result


def rank_process(  # noqa: PLR0917 - a multiprocessing target takes positional arguments
    settings: Settings, rank: int, events: Any, requests: Any, path: str, measure: Measure | None
) -> None:
    import logging  # noqa: PLC0415

    from eep_worker.rank import RankRuntime  # noqa: PLC0415

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
    )
    if measure is not None and measure.pin_cpus:
        # Each rank (and every thread it starts: Mooncake's workers, the transfer engine) on its own share
        # of the host's cores, so the step-time rounds do not also measure where the scheduler put them.
        cpus = sorted(os.sched_getaffinity(0))
        share = max(1, len(cpus) // measure.world)
        os.sched_setaffinity(0, cpus[rank * share : (rank + 1) * share] or cpus)
    rt = RankRuntime(
        settings,
        rank,
        events,
        requests,
        source_factory=lambda s: FileSource(Path(path), poll_s=MEMBERSHIP_POLL_S),
        rendezvous=None,
    )
    try:
        rt.start()
        if rt.serves:  # a dedicated coordinator's rank 0 has no data path
            events.put(DataPathChosen(rank, rt.data_path.mode.value, rt.data_path.describe()))
        if measure is not None and not settings.rejoin:
            events.put(BenchResult(rank, _steady_state(rt, measure)))
        rt.serve()
    except BaseException as e:
        events.put(BenchError(rank, f"{type(e).__name__}: {e}", traceback.format_exc()[-3000:]))
        sys.stderr.flush()
        os._exit(1)


# ---------------------------------------------------------------------------------------------- driver


class Run:
    """The scenario's supervisor side: starts and kills the rank processes, plays the operator (the test kit's
    stand-in, writing the membership file), streams requests, checks every answer and reads the ranks'
    events."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.world = a.members * a.ranks_per_member + int(a.dedicated)
        self.serving = a.members * a.ranks_per_member
        self.workdir = Path(a.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.membership = MembershipFile(self.workdir / "membership.json")
        self.operator = OperatorStandIn(self.membership)
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
        self.recoveries: list[tuple[int, bool, float, str]] = []
        self.data_paths: dict[str, dict[str, str]] = {}
        """Per rank process (`rankN`, `rankN.rejoin` for a replacement): its mode and how it was chosen."""
        self._pending: dict[str, tuple[list[int], float]] = {}
        self._lock = threading.Lock()
        self._sent = 0
        self.port = free_port()
        # torch (the reference) here, not at the top: it is imported once the environment is set.
        from eep_testkit.reference import ReferenceChecker  # noqa: PLC0415
        from eep_worker.moe import ModelConfig  # noqa: PLC0415

        self.config = ModelConfig(
            num_layers=a.layers, hidden_size=a.hidden, num_experts=a.experts, top_k=a.top_k, seed=0
        )
        self.checker = ReferenceChecker(self.config)
        # The kinds not measured here (metrics, serving state, joining) are dropped.
        self.event_pump = QueuePump(self.events, self.handlers(), name="rank-events", unknown=lambda e: None)
        self.client = Pump(self.send_request, name="client", interval_s=a.request_interval_s)

    def ranks_of(self, member: int) -> range:
        """Member ``member``'s global ranks; with ``--dedicated`` member 0 is rank 0 alone (coordinator)."""
        rpm = self.a.ranks_per_member
        if not self.a.dedicated:
            return range(member * rpm, (member + 1) * rpm)
        return range(0, 1) if member == 0 else range(1 + (member - 1) * rpm, 1 + member * rpm)

    def settings(self, member: int, rejoin: bool) -> Settings:
        a, rpm = self.a, self.a.ranks_per_member
        ranks = self.ranks_of(member)
        return Settings(
            cluster=ClusterSettings(
                "bench",
                "bench",
                member,
                ranks.start,
                len(ranks),
                self.world,
                "127.0.0.1",
                self.port,
                0,
                Coordinator.DEDICATED if a.dedicated else Coordinator.MEMBER0,
            ),
            timeouts=TimeoutSettings(
                a.collective_timeout_s,
                a.reconcile_window_s,
                a.join_timeout_s,
                a.tail_timeout_s,
                a.device_timeout_s,
            ),
            model=ModelSettings(
                a.layers, a.experts, a.top_k, a.hidden, 0, math.ceil(a.experts / rpm), a.max_batch
            ),
            backend=a.backend,
            pod_ip="127.0.0.1",
            http_port=0,
            rejoin=rejoin,
            membership_source="file",
            membership_file=str(self.membership.path),
            membership_zmq="",
            idle_step_s=0.01,
            subgroups=a.subgroups == "column",
            warmup_delay_s=a.warmup_delay_s,
            data_path=DataPath(a.data_path.capitalize()),
            gpu_collectives=GpuCollectives(a.gpu_collectives),
        )

    def start_member(self, member: int, rejoin: bool, measure: bool) -> None:
        for rank in self.ranks_of(member):
            self.ready.discard(rank)
            m = (
                Measure(self.a.steps, self.a.rounds, self.a.attribute, self.a.pin_cpus, self.world)
                if measure
                else None
            )
            p = self.ctx.Process(
                target=rank_process,
                args=(
                    self.settings(member, rejoin),
                    rank,
                    self.events,
                    self.requests if rank == 0 else None,
                    str(self.membership.path),
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
        for rank in self.ranks_of(member):
            os.kill(self.procs[rank].pid, signal.SIGKILL)
        for rank in self.ranks_of(member):
            self.procs[rank].join(10)

    def handlers(self) -> dict[type[Any], Callable[[Any], None]]:
        """What the supervisor keeps of each kind of event on the ranks' queue (`QueuePump`)."""
        return {
            E.Ready: self._on_ready,
            E.Response: self._on_response,
            E.PhaseDuration: self._on_phase,
            E.Untrusted: self._on_untrusted,
            BenchResult: self._on_bench_result,
            DataPathChosen: self._on_data_path,
            BenchError: self._on_bench_error,
            E.Exiting: self._on_exiting,
            E.Recovered: self._on_recovered,
        }

    def _on_ready(self, event: E.Ready) -> None:
        self.ready.add(event.rank)

    def _on_response(self, event: E.Response) -> None:
        with self._lock:
            tokens, t_sent = self._pending.pop(event.request_id)
        verdict = self.checker.check_rows(tokens, event.output)
        if not verdict.ok:
            self.wrong.append(f"{event.request_id}: {verdict.detail}")
        self.answers.append(
            {
                "t": time.time(),
                "latency_s": time.time() - t_sent,
                "epoch": event.epoch,
                "active": event.active_ranks,
                "ok": verdict.ok,
            }
        )

    def _on_phase(self, event: E.PhaseDuration) -> None:
        self.phases.setdefault(f"rank{event.rank}.{event.phase}", []).append(event.seconds)

    def _on_untrusted(self, event: E.Untrusted) -> None:
        self.untrusted.append(event.at)

    def _on_bench_result(self, event: BenchResult) -> None:
        self.bench[event.rank] = event.result

    def _on_data_path(self, event: DataPathChosen) -> None:
        name = f"rank{event.rank}" + (".rejoin" if f"rank{event.rank}" in self.data_paths else "")
        self.data_paths[name] = {"mode": event.mode, "chosen": event.described}

    def _on_bench_error(self, event: BenchError) -> None:
        self.rank_errors.append(f"rank {event.rank}: {event.error}\n{event.traceback}")

    def _on_exiting(self, event: E.Exiting) -> None:
        self.rank_errors.append(f"rank {event.rank} exit {event.code}: {event.reason}")

    def _on_recovered(self, event: E.Recovered) -> None:
        self.recoveries.append((event.epoch, event.ok, event.seconds, event.reason))

    def send_request(self) -> None:
        """The client's step: one more request to the leader while fewer than 4 are unanswered."""
        with self._lock:
            busy = len(self._pending)
        if busy < 4:
            self._sent += 1
            tokens = tokens_for(self._sent, max_len=7)
            rid = f"r{self._sent}"
            with self._lock:
                self._pending[rid] = (tokens, time.time())
            self.requests.put(Request(rid, tokens))

    def wait(self, pred: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Until `pred()` holds; returns that moment (`time.time()`). Raises RuntimeError at once when a rank
        has failed, WaitTimeout after `timeout_s`."""

        def now_if_done() -> float | None:
            if self.rank_errors:
                raise RuntimeError(f"while waiting for {what}: {self.rank_errors[0]}")
            return time.time() if pred() else None

        def seen() -> str:
            return f"ready {sorted(self.ready)}, {len(self.answers)} answers, {len(self.wrong)} wrong"

        return wait_until(now_if_done, timeout_s, what, interval_s=0.02, describe=seen)

    def first_answer_after(self, t: float, active: list[int]) -> float | None:
        for ans in list(self.answers):
            if ans["t"] >= t and ans["active"] == active:
                return float(ans["t"])
        return None

    def scenario(self, out: dict[str, Any]) -> None:
        a = self.a
        members = a.members + int(a.dedicated)
        victim = a.kill_member if a.kill_member is not None else members - 1
        victims = list(self.ranks_of(victim))
        survivors = [r for r in range(self.world) if r not in victims]
        everyone = list(range(self.world))
        self.event_pump.start()
        self.operator.publish(everyone)
        t0 = time.time()
        for m in range(members):
            self.start_member(m, rejoin=False, measure=a.steps > 0)
        self.wait(lambda: len(self.ready) == self.world, a.start_timeout_s, "every rank ready")
        out["start_s"] = time.time() - t0
        self.wait(lambda: len(self.data_paths) >= self.serving, 10, "every serving rank's data path")
        modes = {v["mode"] for v in self.data_paths.values()}
        out["data_path"] = modes.pop() if len(modes) == 1 else sorted(modes)
        out["data_path_by_rank"] = dict(self.data_paths)
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
            out["path_host_syncs_per_step"] = lead.get("path_host_syncs_per_step")
        self.client.start()
        self.wait(lambda: len(self.answers) >= 20, 60, "20 answers from the full world")
        if a.steady_only:
            return
        t_kill = time.time()
        self.kill_member(victim)
        self.operator.publish(survivors)
        t_resume = self.wait(
            lambda: self.first_answer_after(t_kill, survivors) is not None, 90, "degraded answers"
        )
        out["detection_s"] = (min(self.untrusted) - t_kill) if self.untrusted else None
        out["resume_s"] = (self.first_answer_after(t_kill, survivors) or t_resume) - t_kill
        self.wait(lambda: len([x for x in self.answers if x["t"] > t_resume]) >= 10, 60, "degraded serving")
        # Issue #14: the longest a request waited across the kill, and what the settings imply.
        out["longest_wait_s"] = max(x["latency_s"] for x in list(self.answers) if x["t"] >= t_kill)
        implied = self.settings(0, rejoin=False).pause
        out["window_s"] = implied.window_s
        out["implied_pause"] = dataclasses.asdict(implied)
        t_start = time.time()
        self.start_member(victim, rejoin=True, measure=False)
        if a.stall_dump_s > 0:
            threading.Thread(target=self.stall_dump, args=(a.stall_dump_s,), daemon=True).start()
        self.operator.publish(survivors, victims)
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
        self.operator.publish(everyone)
        self.wait(
            lambda: len([x for x in self.answers if x["t"] > t_full]) >= 20, 60, "serving after the join"
        )
        out["phases_s"] = {k: round(max(v), 4) for k, v in sorted(self.phases.items())}
        for name in ("wait_peer", "recover_ranks", "broadcast", "join"):
            values = [max(v) for k, v in self.phases.items() if k.endswith("." + name)]
            out[f"{name}_s"] = max(values) if values else None
        out["recoveries"] = [list(r) for r in self.recoveries]

    def finish(self) -> None:
        self.client.stop()
        self.event_pump.stop()
        for p in self.procs.values():
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
        for p in self.procs.values():
            p.join(5)


ROW_SUMMARY = (
    "layers",
    "ok",
    "detection_s",
    "resume_s",
    "longest_wait_s",
    "window_s",
    "replacement_start_to_full_capacity_s",
    "error",
)
"""What is printed of each depth's row."""


def _depths(text: str) -> list[int]:
    """`--layers`: one depth or several, comma-separated (`4,30,61`)."""
    try:
        depths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: layers must be integers, comma-separated") from e
    if not depths or min(depths) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least one depth, each >= 1")
    return depths


def _environment(a: argparse.Namespace) -> dict[str, str]:
    """Set the loader/backend environment the rank processes inherit; returns what was set."""
    env: dict[str, str] = {"MC_FORCE_TCP": "true"}
    if a.no_p2p:
        env["MOONCAKE_PG_DISABLE_P2P_ROUTE"] = "1"
    if a.backend == "mooncake":
        env[GPU_COLLECTIVES_ENV] = a.gpu_collectives
        if Path(LIBSTDCXX).exists():
            env["LD_PRELOAD"] = LIBSTDCXX
    else:
        env.update(mooncake_cpu_env())
    os.environ.update(env)
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=2, help="serving members")
    p.add_argument(
        "--dedicated",
        action="store_true",
        help="a dedicated coordinator (issue #19): rank 0 alone, on the CPU, in a member 0 of its own; the "
        "serving members are 1..--members (use with --steps 0)",
    )
    p.add_argument("--kill-member", type=int, default=None, help="the member killed (default: the last)")
    p.add_argument(
        "--share-gpus",
        action="store_true",
        help="allow fewer GPUs than serving ranks: rank r takes GPU (r - first serving rank) mod the count",
    )
    p.add_argument("--ranks-per-member", type=int, default=1)
    p.add_argument("--backend", default="mooncake", choices=["mooncake", "mooncake-cpu"])
    p.add_argument(
        "--dry-run", action="store_true", help="CPU mode: backend mooncake-cpu, short measurements"
    )
    p.add_argument("--subgroups", default="auto", choices=["auto", "column", "none"])
    p.add_argument(
        "--data-path",
        default="auto",
        choices=["auto", "device", "staged"],
        help="the combines' data path (the worker's EEP_DATA_PATH): auto probes the device route, else "
        "staged",
    )
    p.add_argument(
        "--no-p2p",
        action="store_true",
        help="MOONCAKE_PG_DISABLE_P2P_ROUTE=1 in the ranks' environment: the device collectives leave the "
        "peer-to-peer route (as between hosts)",
    )
    p.add_argument(
        "--gpu-collectives",
        default="new",
        choices=[g.value for g in GpuCollectives],
        help=f"Mooncake's GPU collectives ({GPU_COLLECTIVES_ENV}): new (V2 device kernels) or legacy (run by "
        "its host worker thread)",
    )
    p.add_argument("--collective-timeout-s", type=float, default=0.25)
    p.add_argument(
        "--reconcile-window-s", type=float, default=2.5, help="raised where the step fence needs more"
    )
    p.add_argument("--join-timeout-s", type=float, default=60.0)
    p.add_argument(
        "--tail-timeout-s",
        type=float,
        default=DEFAULT_TAIL_TIMEOUT_S,
        help="collective timeout for the rest of a step after a failure (the worker's EEP_TAIL_TIMEOUT_S)",
    )
    p.add_argument(
        "--device-timeout-s",
        type=float,
        default=0.0,
        help="GPU device groups' creation-time timeout, experimental (EEP_DEVICE_COLLECTIVE_TIMEOUT_S); "
        "0: the collective timeout",
    )
    p.add_argument("--warmup-delay-s", type=float, default=0.0)
    p.add_argument("--start-timeout-s", type=float, default=180.0)
    p.add_argument(
        "--layers",
        type=_depths,
        default=[4],
        help="model depth; several (4,30,61) run the scenario once per depth, one row each in the JSON",
    )
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
    if a.dedicated and a.steps:
        p.error("--dedicated measures no steady state (rank 0 has no model): add --steps 0")
    world = a.members * a.ranks_per_member + int(a.dedicated)
    default_name = "gpu_recovery.json" if world <= 2 else f"gpu_recovery_{world}.json"
    if a.backend == "mooncake-cpu":
        default_name = default_name.replace("gpu_", "gpu_dryrun_")
    route = ("_nop2p" if a.no_p2p else "") + ("" if a.data_path == "auto" else f"_{a.data_path}")
    default_name = default_name.replace(".json", f"{route}.json")  # the recorded default runs stay
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

    def give_up(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"deadline of {a.deadline_s:.0f}s reached")

    signal.signal(signal.SIGALRM, give_up)
    signal.alarm(int(a.deadline_s))
    t0 = time.time()
    try:
        out["environment"] = _environment(a)
        import torch  # noqa: PLC0415

        out["torch"] = torch.__version__
        if a.backend == "mooncake":
            gpus = world - int(a.dedicated)  # a dedicated coordinator's rank 0 runs on the CPU
            if torch.cuda.device_count() < gpus and not a.share_gpus:
                raise RuntimeError(
                    f"need {gpus} GPUs (one process per GPU), found {torch.cuda.device_count()}; "
                    "--share-gpus runs several ranks on one (with --data-path staged: two ranks of one GPU "
                    "cannot take Mooncake's peer-to-peer route)"
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
        rows: list[dict[str, Any]] = []
        out["rows"] = rows
        for depth in a.layers:  # one scenario per depth, each with fresh ranks and its own deadline
            row: dict[str, Any] = {"layers": depth, "ok": False, "error": None}
            rows.append(row)
            signal.alarm(int(a.deadline_s))
            workdir = a.workdir if len(a.layers) == 1 else str(Path(a.workdir) / f"layers-{depth}")
            run = Run(argparse.Namespace(**{**vars(a), "layers": depth, "workdir": workdir}))
            try:
                run.scenario(row)
                row["answers"] = len(run.answers)
                row["wrong_answers"] = len(run.wrong)
                row["max_latency_s"] = max(x["latency_s"] for x in run.answers)
                row["ok"] = not run.wrong and not run.rank_errors
                if run.wrong:
                    row["error"] = f"{len(run.wrong)} wrong answers, first: {run.wrong[0]}"
            except Exception as e:  # the deadline's TimeoutError too: the next depth still runs
                row["error"] = f"{type(e).__name__}: {e}"
                row["traceback"] = traceback.format_exc()[-3000:]
            finally:
                signal.alarm(0)
                row["data_path_by_rank"] = dict(run.data_paths)  # the replacements' too
                row.setdefault("answers", len(run.answers))
                row["rank_errors"] = run.rank_errors[:5]
                run.finish()
                run = None
            print(json.dumps({k: row.get(k) for k in ROW_SUMMARY}, default=str), flush=True)
        out["ok"] = all(r["ok"] for r in rows)
        failed = [r for r in rows if not r["ok"]]
        if failed:
            out["error"] = f"layers {failed[0]['layers']}: {failed[0]['error'] or failed[0]['rank_errors']}"
        if len(rows) == 1:
            out.update(rows[0])  # one depth: the flat document of earlier runs
    except BaseException as e:
        out["error"] = f"{type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc()[-3000:]
    finally:
        signal.alarm(0)
        if run is not None:
            out["data_path_by_rank"] = dict(run.data_paths)  # the replacements' too
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
                        "data_path",
                        "detection_s",
                        "resume_s",
                        "join_s",
                        "recover_ranks_s",
                        "broadcast_s",
                        "replacement_start_to_full_capacity_s",
                        "host_syncs_per_step",
                        "path_host_syncs_per_step",
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
