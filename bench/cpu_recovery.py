#!/usr/bin/env python3
"""Rank failure and rejoin on CPU (mooncake-cpu), with real `eep-worker serve` pods; writes
bench/results/cpu_recovery.json.

    .venv/bin/python bench/cpu_recovery.py [--members 3] [--warmup-delay-s 0] [--rounds 1]

Scenario (the test kit's operator stand-in writes the membership file, `eep_testkit.pods` runs the pods):
every pod starts; a client streams requests to member 0 and checks every answer against the float64
reference; the last member is SIGKILLed mid-stream; the membership is updated; a replacement pod starts with
--rejoin and the membership names it joining.

Measured per round: detection (kill -> the leader's first untrusted step), resume (kill -> first correct
answer from the survivors), wait_peer / recover_ranks / broadcast (leader's recovery phases), join (the
joiner's join_group calls), replacement start -> full capacity (pod start -> first answer from every rank;
includes process start, torch/mooncake import and the simulated weight load `--warmup-delay-s`).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from eep_contract.env import TuningEnv
from eep_testkit.client import CheckingClient
from eep_testkit.logs import log_lines
from eep_testkit.pods import LocalPods
from eep_testkit.stream import Stream

REPO = Path(__file__).resolve().parent.parent


def phase(text: str, name: str, epoch: int | None = None) -> float | None:
    epoch_pattern = str(epoch) if epoch is not None else r"-?\d+"
    pattern = re.compile(rf"epoch {epoch_pattern}: phase {name} took ([\d.]+)s")
    values = [float(m.group(1)) for _, msg in log_lines(text) if (m := pattern.search(msg))]
    return sum(values) if values else None


def one_round(pods: LocalPods, stream: Stream, victim: int) -> dict[str, Any]:
    victims = pods.ranks_of(victim)
    everyone = list(range(pods.world))
    survivors = [r for r in everyone if r not in victims]
    leader_log_before = len(pods.pods[0].logs())
    t_kill = time.time()
    pods.kill(victim)
    pods.standin.publish(survivors)
    t_resume = stream.first_after(t_kill, survivors, 60)
    t_start = time.time()
    pod = pods.start(victim, rejoin=True)
    epoch = pods.standin.publish(survivors, victims).epoch
    pods.wait_ready([victim], 120)
    t_ready = time.time()
    t_full = stream.first_after(t_start, everyone, 60)
    pods.standin.publish(everyone)
    leader = pods.pods[0].logs()[leader_log_before:]
    untrusted = [t for t, msg in log_lines(leader) if "not trusted" in msg and t >= t_kill - 0.01]
    return {
        "detection_s": (untrusted[0] - t_kill) if untrusted else None,
        "resume_s": t_resume - t_kill,
        "wait_peer_s": phase(leader, "wait_peer", epoch),
        "recover_ranks_s": phase(leader, "recover_ranks", epoch),
        "broadcast_s": phase(leader, "broadcast", epoch),
        "join_s": phase(pod.logs(), "join"),
        "replacement_ready_s": t_ready - t_start,
        "replacement_start_to_full_capacity_s": t_full - t_start,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--ranks-per-member", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--collective-timeout-s", type=float, default=0.25)
    p.add_argument(
        "--reconcile-window-s", type=float, default=2.5, help="raised where the step fence needs more"
    )
    p.add_argument("--join-timeout-s", type=float, default=60.0)
    p.add_argument("--warmup-delay-s", type=float, default=0.0)
    p.add_argument("--output", default=str(REPO / "bench" / "results" / "cpu_recovery.json"))
    a = p.parse_args(argv)
    out: dict[str, Any] = {
        "ok": False,
        "error": None,
        "backend": "mooncake-cpu",
        "settings": {k: v for k, v in vars(a).items() if k != "output"},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix="eep-cpu-recovery-")
    out["logs"] = tmp  # the pods' logs; removed after a successful run
    pods = LocalPods(
        Path(tmp),
        a.members,
        a.ranks_per_member,
        collective_timeout_s=a.collective_timeout_s,
        reconcile_window_s=a.reconcile_window_s,
        join_timeout_s=a.join_timeout_s,
        tuning=TuningEnv(warmup_delay_s=a.warmup_delay_s),
    )
    stream: Stream | None = None
    try:
        t = time.time()
        pods.start_all()
        out["start_s"] = time.time() - t
        stream = Stream(CheckingClient(pods.pods[0]))
        stream.start()
        stream.first_after(0, list(range(pods.world)), 30)
        rounds = [one_round(pods, stream, a.members - 1) for _ in range(a.rounds)]
        out["rounds"] = rounds
        for key in rounds[0]:
            values = [r[key] for r in rounds if r[key] is not None]
            out[key] = statistics.median(values) if values else None
        time.sleep(1.0)
        out["answers"] = len(stream.answered)
        out["errors"] = stream.errors[:5]
        out["ok"] = not stream.errors
        if stream.errors:
            out["error"] = f"{len(stream.errors)} failed requests"
    except BaseException as e:
        out["error"] = f"{type(e).__name__}: {e}"[:2000]
        out["traceback"] = traceback.format_exc()[-3000:]
    finally:
        if stream is not None:
            stream.stop(30)
        pods.stop()
    if out["ok"]:
        shutil.rmtree(tmp, ignore_errors=True)
        del out["logs"]
    out["wall_s"] = time.time() - t0
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    Path(a.output).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("rounds", "traceback")}, indent=2))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
