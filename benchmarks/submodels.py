#!/usr/bin/env python
"""Budget sub-models against the other ways of living with slow clients, on the simulated clock.

Real ``fedhpc run`` jobs in one MPI launch (3 ranks): non-IID digits (50
clients holding 2 classes each, 20 a round), MLP 64-256-10, 2 local epochs of
SGD at lr 0.1, 100 rounds,
lognormal client speeds (``profiles.speed_sigma = 1.0``), int8 with error
feedback. The deadline is the median client's full-width round time, read off
a calibration round without one. Four ways to meet it:

* **full width, deadline**: whoever is late is dropped;
* **full width, partial work**: stragglers send the epochs that fit (FedProx);
* **random dropout**: every client trains half of the hidden units, drawn at
  random (``fed_dropout.rate = 0.5``, federated dropout);
* **budget widths**: each client the widest of 1, 0.75, 0.5, 0.25 whose
  predicted round fits (``submodels.mode = "budget"``), nested (the first
  units of every layer) and with the units drawn at random (``nested = false``).

Reported: accuracy against simulated time (and the time to 80 % and 85 %), the
final accuracy, clients aggregated per round, bytes up per round, the mean
width. Then what one client computes and holds at width 0.25 against 1: FLOPs
counted by forward hooks, and the peak resident memory of a process training a
wide MLP (64-4096-4096-10, batches of 512) at each width, each in its own
process.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

import _jobs

HERE = Path(__file__).resolve().parent
BASE = ["clients.total=50", "clients.per_round=20", "data.partition=classes", "model.hidden=[256]",
        "local.epochs=2", "local.lr=0.1", "clock=simulated", "profiles.speed_sigma=1.0", "codec.name=int8",
        "tracking.tensorboard=false", "seed=1"]
CASES = {
    "full width, deadline": [],
    "full width, partial work": ["stragglers.partial_work=true"],
    "random dropout 0.5": ["fed_dropout.rate=0.5"],
    "budget widths": ["submodels.mode=budget"],
    "budget widths, random units": ["submodels.mode=budget", "submodels.nested=false"],
}
SIZES = {"full": 100, "tiny": 2}  # rounds
LAST = 10  # the accuracy reported beside the final one: the mean of the last rounds (one round is noisy)
WIDE = [4096, 4096]  # the memory measurement's MLP
TARGETS = (0.80, 0.85)


def main(args: argparse.Namespace) -> int:
    rounds = SIZES[args.size]
    calib = args.out / "calibration"
    _jobs.run_plan([{"out": str(calib), "sets": [*BASE, "rounds=1", "clients.per_round=50"]}],
                   args.out / "plan-calibration.json", 3, reuse=args.reuse)
    with h5py.File(calib / "run.h5") as f:
        seconds = f["clients/seconds"][0]
    deadline = float(np.median(seconds[np.isfinite(seconds)]))
    print(f"  deadline: the median client's full-width round, {deadline:.4f} simulated s", flush=True)
    jobs = [{"out": str(args.out / name.replace(" ", "-").replace(",", "")), "name": name,
             "sets": [*BASE, f"rounds={rounds}", f"stragglers.deadline_s={deadline}", *extra]}
            for name, extra in CASES.items()]
    _jobs.run_plan(jobs, args.out / "plan.json", 3, reuse=args.reuse)
    rows = []
    for job in jobs:
        metrics, _ = _jobs.read_run(Path(job["out"]))
        clock = np.cumsum([m["sim_seconds"] for m in metrics])
        rows.append({"case": job["name"], "final_accuracy": metrics[-1]["accuracy"],
                     "last_accuracy": statistics.fmean(m["accuracy"] for m in metrics[-LAST:]),
                     "sim_seconds": float(clock[-1]), **{f"time_to_{t:g}": _jobs.time_to(metrics, t) for t in TARGETS},
                     "aggregated": statistics.fmean(m["clients_reported"] for m in metrics),
                     "bytes_up": statistics.fmean(m["bytes_up"] for m in metrics),
                     "width_mean": (statistics.fmean(m["width_mean"] for m in metrics)
                                    if metrics[0]["width_mean"] is not None else None),
                     "curve": [[float(c), m["accuracy"]] for c, m in zip(clock, metrics)]})
    cost = client_cost()
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
               "cpus": os.cpu_count(), "size": args.size, "rounds": rounds, "deadline_s": deadline, "rows": rows,
               "client_cost": cost}
    _jobs.publish(table(results), results, args.json, args.readme, "submodels")
    return 0


def client_cost() -> dict:
    """FLOPs and the peak RSS of a training process at width 0.25 against 1 (each its own process)."""
    from fedhpc.config import ModelConfig
    from fedhpc.models import Layout, build_model
    from fedhpc.models import submodel as S
    from fedhpc.runtime.submodels import Submodels

    model = build_model(ModelConfig(name="mlp", hidden=WIDE), (64,), 10, 0)
    subs = Submodels(model, Layout(model), S.slicable(model, "mlp", "k"), 0, True, (64,))
    peak = {f"{w:g}": int(subprocess.run([sys.executable, __file__, "--peak-of", str(w)], capture_output=True,
                                         text=True, check=True).stdout) for w in (1.0, 0.25)}
    return {"model": f"mlp 64-{'-'.join(map(str, WIDE))}-10", "params": {"1": Layout(model).size,
                                                                          "0.25": subs.size(0.25)},
            "flops_ratio": subs.flops_ratio(0.25), "peak_rss": peak}


def peak_of(width: float) -> int:
    """Train the wide MLP at ``width`` for a few batches in this process; its peak RSS in bytes."""
    import torch

    from fedhpc.config import ModelConfig, load_config
    from fedhpc.models import Layout, build_model
    from fedhpc.models import submodel as S
    from fedhpc.runtime.training import LocalTrainer

    torch.set_num_threads(1)
    model = build_model(ModelConfig(name="mlp", hidden=WIDE), (64,), 10, 0)
    if width < 1:
        pairs = S.slicable(model, "mlp", "k")
        model = S.build(model, pairs, S.nested(pairs, S.units(model, pairs), width))  # the full one is let go
    layout = Layout(model)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2048, 64)).astype(np.float32), rng.integers(0, 10, 2048)
    cfg = load_config(None, ["local.epochs=1", "local.batch_size=512"])
    LocalTrainer(cfg, model, layout, x, y).train(np.arange(2048), layout.flatten(model), 0, 0, 0.0, lambda: False)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def table(res: dict) -> str:
    lines = [f"{res['rounds']} rounds on the simulated clock, deadline {res['deadline_s']:.4f} s (the median "
             f"client's full-width round); non-IID digits, 50 clients, 20 a round, lognormal speeds (sigma 1).", "",
             f"| case | final accuracy (mean of the last {LAST}) | simulated s to 80 % / 85 % | simulated s in all | "
             "clients aggregated a round | KB up a round | mean width |", "|---|---:|---|---:|---:|---:|---:|"]
    s = _jobs.seconds_or_never

    for r in res["rows"]:
        width = "-" if r["width_mean"] is None else f"{r['width_mean']:.2f}"
        lines.append(f"| {r['case']} | {r['final_accuracy']:.4f} ({r['last_accuracy']:.4f}) | "
                     f"{s(r['time_to_0.8'])} / {s(r['time_to_0.85'])} "
                     f"| {r['sim_seconds']:.2f} | {r['aggregated']:.1f} | {r['bytes_up'] / 1e3:.1f} | {width} |")
    c = res["client_cost"]
    lines += ["", f"One client of the {c['model']} (batches of 512): width 0.25 has {c['flops_ratio']:.3f}x the "
              f"FLOPs of width 1 and {c['params']['0.25']:,} parameters against {c['params']['1']:,}; the peak "
              f"resident memory of its training process is {c['peak_rss']['0.25'] / 2**20:.0f} MB against "
              f"{c['peak_rss']['1'] / 2**20:.0f} MB."]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    _jobs.add_run_arguments(p, SIZES, "full (100 rounds of each case, about 2 minutes), tiny", "submodels")
    p.add_argument("--peak-of", type=float, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.peak_of is not None:
        print(peak_of(args.peak_of))
        return 0
    return main(args)


if __name__ == "__main__":
    _jobs.script(__doc__, add_arguments, run)
