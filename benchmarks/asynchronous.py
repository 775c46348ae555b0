#!/usr/bin/env python
"""Asynchronous aggregation (FedAsync, FedBuff) against synchronous rounds, on the simulated clock.

Real ``fedhpc run`` jobs in one MPI launch (3 ranks): non-IID digits (50
clients holding 2 classes each), MLP 64-256-10, 2 local epochs of SGD at lr
0.1, int8 with error feedback, lognormal client speeds with sigma 0.5 and
1.0. Every case trains the same number of client tasks (2,000: 100 rounds of
20 clients) with 20 clients at work at once:

* **sync, wait for all**: a round ends when its 20 clients reported;
* **sync, deadline**: a round ends at the median client's round time (read off
  a calibration round of all 50 clients), the late are dropped;
* **sync, fastest 10**: a round ends when 10 of its 20 reported;
* **FedAsync**: 20 clients train continuously, each update applied as it
  comes with weight 0.6 (1 + staleness)^-0.5 (2,000 server steps);
* **FedBuff**: the same, applied 10 at a time (200 server steps).

Reported: simulated seconds to 80 % and 85 % accuracy, the final accuracy (and
the mean of the last ten evaluations), the simulated seconds of the whole run,
updates applied, and for the asynchronous cases the mean and largest staleness.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
from pathlib import Path

import h5py
import numpy as np

import _jobs

BASE = ["clients.total=50", "clients.per_round=20", "data.partition=classes", "model.hidden=[256]",
        "local.epochs=2", "local.lr=0.1", "clock=simulated", "codec.name=int8", "tracking.tensorboard=false",
        "seed=1"]
SIGMAS = (0.5, 1.0)
TARGETS = (0.80, 0.85)
LAST = 10  # evaluations averaged beside the final one
SIZES = {"full": 100, "tiny": 2}  # synchronous rounds; the asynchronous cases apply as many updates


def cases(rounds: int, deadline: float) -> dict[str, list[str]]:
    """Each case's settings for a run of ``rounds`` rounds' worth of client tasks."""
    return {
        "sync, wait for all": [f"rounds={rounds}"],
        "sync, deadline": [f"rounds={rounds}", f"stragglers.deadline_s={deadline}"],
        "sync, fastest 10": [f"rounds={rounds}", "stragglers.fastest_k=10"],
        "FedAsync": [f"rounds={rounds * 20}", "async.mode=fedasync",
                     f"eval.every={max(1, rounds // 5)}"],  # the digits' test set every 20 of its 2,000 steps
        "FedBuff (10)": [f"rounds={rounds * 2}", "async.mode=fedbuff", "async.buffer=10"],
    }


def main(args: argparse.Namespace) -> int:
    rounds = SIZES[args.size]
    rows = []
    for sigma in SIGMAS:
        base = [*BASE, f"profiles.speed_sigma={sigma}"]
        calib = args.out / f"sigma{sigma}" / "calibration"
        _jobs.run_plan([{"out": str(calib), "sets": [*base, "rounds=1", "clients.per_round=50"]}],
                       args.out / f"plan-calibration-{sigma}.json", 3, reuse=args.reuse)
        with h5py.File(calib / "run.h5") as f:
            seconds = f["clients/seconds"][0]
        deadline = float(np.median(seconds[np.isfinite(seconds)]))
        print(f"  sigma {sigma}: deadline {deadline:.4f} simulated s (the median client's round)", flush=True)
        jobs = [{"out": str(args.out / f"sigma{sigma}" / name.replace(" ", "-").replace(",", "")), "name": name,
                 "sets": [*base, *extra]} for name, extra in cases(rounds, deadline).items()]
        _jobs.run_plan(jobs, args.out / f"plan-{sigma}.json", 3, reuse=args.reuse)
        for job in jobs:
            metrics, bench = _jobs.read_run(Path(job["out"]))
            evaluated = [m["accuracy"] for m in metrics if m["accuracy"] is not None]
            applied = [m for m in metrics if m["staleness_mean"] is not None]
            rows.append({
                "sigma": sigma, "case": job["name"], "deadline_s": deadline,
                "final_accuracy": evaluated[-1], "last_accuracy": statistics.fmean(evaluated[-LAST:]),
                "sim_seconds": float(sum(m["sim_seconds"] for m in metrics)),
                **{f"time_to_{t:g}": _jobs.time_to(metrics, t) for t in TARGETS},
                "updates": sum(m["clients_reported"] for m in metrics), "steps": len(metrics),
                "staleness_mean": (statistics.fmean(m["staleness_mean"] for m in applied) if applied else None),
                "staleness_max": max((m["staleness_max"] for m in applied), default=None),
                "wall_seconds": bench["wall_s"]})
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
               "cpus": os.cpu_count(), "size": args.size, "rounds": rounds, "rows": rows}
    _jobs.publish(table(results), results, args.json, args.readme, "async")
    return 0


def table(res: dict) -> str:
    lines = [f"{res['rounds'] * 20:,} client tasks per case (sync: {res['rounds']} rounds of 20), 20 clients at "
             "work at once, simulated clock; non-IID digits, 50 clients with 2 classes each.", "",
             f"| speeds (sigma) | case | simulated s to 80 % / 85 % | final accuracy (mean of the last {LAST}) | "
             "simulated s in all | updates applied | staleness mean / max |", "|---|---|---|---:|---:|---:|---|"]
    s = _jobs.seconds_or_never

    for r in res["rows"]:
        stale = "-" if r["staleness_mean"] is None else f"{r['staleness_mean']:.1f} / {r['staleness_max']}"
        lines.append(f"| {r['sigma']:g} | {r['case']} | {s(r['time_to_0.8'])} / {s(r['time_to_0.85'])} | "
                     f"{r['final_accuracy']:.4f} ({r['last_accuracy']:.4f}) | {r['sim_seconds']:.2f} | "
                     f"{r['updates']:,} | {stale} |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    _jobs.add_run_arguments(p, SIZES, "full (2,000 client tasks per case, about 10 minutes here), tiny", "async")


if __name__ == "__main__":
    _jobs.script(__doc__, add_arguments, main)
