#!/usr/bin/env python3
"""A device all-reduce on a chosen Mooncake route: time and correctness per size; writes one JSON result.

    python bench/route_probe.py --route p2p                 # the peer-to-peer (CUDA IPC) route, one host
    python bench/route_probe.py --route host-proxy          # MOONCAKE_PG_DISABLE_P2P_ROUTE=1: what hosts
                                                            # without RDMA take between them
    .venv/bin/python bench/route_probe.py --cpu             # the same harness on mooncake-cpu (no GPU)

Two rank processes (one GPU each) run, for every variant, a fresh group and `--repeats` all-reduces of
each size, every rank contributing `rank + 1`, so the right sum is `world (world + 1) / 2` in every element.
Per op it records the time, whether every element is right, Mooncake's `local_success` and its failed-ranks
hint, so a wrong value that Mooncake reported (and a wrong value it did not) are told apart.

Variants, each one cause ruled in or out (docs/known-issues.md, "Members on different hosts"):
- `default`: the collective on torch's default (legacy NULL) stream, read back at once with `.cpu()`;
- `sync-first`: the same, the stream synchronised before the read-back;
- `own-stream`: the rank's work on its own non-blocking stream, synchronised, then read back;
- `pinned-event`: own stream, read back into pinned memory, waiting on an event.

Environment set here for GPUs: LD_PRELOAD (system libstdc++),
MOONCAKE_PG_PREFERRED_GPU_COLLECTIVE_BACKEND=new, MC_FORCE_TCP=true; `--progress-timeout-s` sets
MC_TCP_PROGRESS_TIMEOUT_SEC. Bounded: a variant that has not finished in `--variant-timeout-s` is recorded as
hung and its processes killed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eep_contract.env import GPU_COLLECTIVES_ENV, GpuCollectives
from eep_localcluster.procs import free_port

VARIANTS = ("default", "sync-first", "own-stream", "pinned-event")
LIBSTDCXX = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"
RESULTS = Path(__file__).resolve().parent / "results"


def _rank(rank: int, world: int, port: int, a: dict[str, Any], out: Any) -> None:
    """One rank: join the group, run every size `repeats` times, report per-op records on `out`."""
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    from eep_worker.mooncake import Mooncake  # noqa: PLC0415

    cpu = bool(a["cpu"])
    variant = str(a["variant"])
    mc = Mooncake()
    mc.configure(host_ip="127.0.0.1", collective_timeout_s=a["collective_timeout_s"], reconcile_window_s=5.0)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    if not cpu:
        torch.cuda.set_device(rank)
    backend = "mooncake-cpu" if cpu else "mooncake"
    dist.init_process_group(backend, rank=rank, world_size=world, pg_options=mc.options(world, False))
    stream = None
    if not cpu and variant in ("own-stream", "pinned-event"):
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        torch.cuda.set_stream(stream)
    device = "cpu" if cpu else f"cuda:{rank}"
    want = world * (world + 1) / 2
    records: list[dict[str, Any]] = []
    for size in a["sizes"]:
        for i in range(int(a["repeats"])):
            x = torch.full((size,), float(rank + 1), device=device)
            t0 = time.perf_counter()
            work = dist.all_reduce(x, async_op=True)
            assert work is not None
            work.wait()
            if cpu:
                host = x
            elif variant == "default":
                host = x.cpu()
            elif variant == "sync-first":
                torch.cuda.current_stream().synchronize()
                host = x.cpu()
            elif variant == "own-stream":
                assert stream is not None
                stream.synchronize()
                host = x.cpu()
            else:
                host = torch.empty(size, pin_memory=True)
                host.copy_(x, non_blocking=True)
                done = torch.cuda.Event()  # type: ignore[no-untyped-call]
                done.record()
                done.synchronize()
            dt = time.perf_counter() - t0
            ok_values = bool((host == want).all().item())
            records.append(
                {
                    "size": size,
                    "repeat": i,
                    "seconds": dt,
                    "correct": ok_values,
                    "value0": float(host[0].item()),
                    "expected": want,
                    "local_success": mc.local_success(work),
                    "failed_hint": mc.failed_ranks(work) if not mc.local_success(work) else [],
                }
            )
    out.put({"rank": rank, "records": records})
    out.close()
    out.join_thread()
    os._exit(0)  # Mooncake's teardown can abort; the result is already out


def run_variant(a: dict[str, Any], world: int) -> dict[str, Any]:
    """One fresh group of `world` ranks for one variant; {ranks: {rank: records}, hung: [...], seconds}."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, a, out), daemon=True) for r in range(world)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    ranks: dict[int, list[dict[str, Any]]] = {}
    deadline = t0 + float(a["variant_timeout_s"])
    while len(ranks) < world and time.monotonic() < deadline:
        try:
            msg = out.get(timeout=1.0)
        except Exception:  # queue.Empty; the loop checks the deadline
            continue
        ranks[int(msg["rank"])] = msg["records"]
    hung = [r for r in range(world) if r not in ranks]
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(5)
    return {"ranks": ranks, "hung": hung, "seconds": time.monotonic() - t0}


def _summary(variant: str, result: dict[str, Any]) -> str:
    recs = [r for rs in result["ranks"].values() for r in rs]
    wrong = sum(not r["correct"] for r in recs)
    unreported = sum(not r["correct"] and r["local_success"] for r in recs)
    worst = max((r["seconds"] for r in recs), default=float("nan"))
    first = min((r["seconds"] for r in recs if r["repeat"] == 0), default=float("nan"))
    last = [r["seconds"] for r in recs if r["repeat"] > 0]
    steady = sorted(last)[len(last) // 2] if last else float("nan")
    return (
        f"{variant:13s} ops={len(recs):3d} wrong={wrong:3d} wrong_unreported={unreported:3d} "
        f"first_op_s={first:.4f} steady_op_s={steady:.6f} worst_s={worst:.3f} hung={result['hung']}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--route", choices=["p2p", "host-proxy"], default="p2p")
    p.add_argument("--cpu", action="store_true", help="mooncake-cpu instead of GPUs (the harness only)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--sizes", default="16,4096,1048576", help="elements (float32) per all-reduce")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--collective-timeout-s", type=float, default=2.0)
    p.add_argument("--progress-timeout-s", type=float, default=10.0, help="MC_TCP_PROGRESS_TIMEOUT_SEC")
    p.add_argument("--variant-timeout-s", type=float, default=90.0)
    p.add_argument("--out", type=Path, default=None, help="default bench/results/route_probe_<route>.json")
    args = p.parse_args(argv)

    env = {"MC_FORCE_TCP": "true", "MC_TCP_PROGRESS_TIMEOUT_SEC": str(int(args.progress_timeout_s))}
    if not args.cpu:
        env[GPU_COLLECTIVES_ENV] = GpuCollectives.NEW.value
        if Path(LIBSTDCXX).exists():
            env["LD_PRELOAD"] = LIBSTDCXX
    if args.route == "host-proxy":
        env["MOONCAKE_PG_DISABLE_P2P_ROUTE"] = "1"
    os.environ.update(env)  # inherited by the spawned ranks, which import mooncake after this

    base = {
        "cpu": args.cpu,
        "sizes": [int(s) for s in args.sizes.split(",")],
        "repeats": args.repeats,
        "collective_timeout_s": args.collective_timeout_s,
        "variant_timeout_s": args.variant_timeout_s,
    }
    variants = ["default"] if args.cpu else [v for v in args.variants.split(",") if v]
    doc: dict[str, Any] = {
        "route": args.route,
        "cpu": args.cpu,
        "world": args.world,
        "environment": env,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "variants": {},
    }
    lines = []
    for variant in variants:
        result = run_variant({**base, "variant": variant}, args.world)
        doc["variants"][variant] = result
        lines.append(_summary(variant, result))
        print(lines[-1], flush=True)
    out = args.out or RESULTS / f"route_probe_{'cpu' if args.cpu else args.route.replace('-', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
