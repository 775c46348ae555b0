#!/usr/bin/env python
"""Differential privacy: final accuracy at epsilon about 1, 3 and 8 against no DP, and what DP costs a round.

Real ``fedhpc run`` jobs in one MPI launch (3 ranks), with Poisson sampling
(``selection.name = "poisson"``) in every job, DP or not, so that only DP
differs. Three workloads with enough clients for user-level DP to mean something:

* **digits-100**: the embedded digits, 100 clients with 2 classes each
  (non-IID), MLP 64-128-10, 20 clients a round on average (q = 0.2), 5 local
  epochs, 30 rounds, clip 1.0, delta 1e-3 (below 1/100);
* **synthetic-1000**: 1,000 clients of the ``synthetic`` data (32 features, 10
  classes, 20 samples each), MLP 32-64-10, 50 a round (q = 0.05), 2 local
  epochs, 30 rounds, clip 0.5, delta 1e-4;
* **shakespeare-816**: the offline LEAF Shakespeare build's 816 speaking roles
  as clients (natural partition), each capped at 64 training windows
  (``data.max_client_samples``: the largest role has 49,415, and an LSTM on
  all of them is hours on 2 cores), the benchmarks' small char-LSTM (82k
  parameters), 82 a round on average (q = 0.1), 4 local epochs, lr 1.0,
  30 rounds, clip 1.0, delta 1e-4, evaluated on 4,000 test windows.

Besides the fixed clip at each target, each workload runs at epsilon 8 with
adaptive clipping (``dp.adaptive_clip``, Andrew et al. 2021: the clip follows
the median norm, starting from the fixed clip; same noise multiplier, same
epsilon).

For each target epsilon the noise multiplier is the one for which
``dp-accounting``'s RDP accountant gives that epsilon after the workload's
rounds at its rate (found by bisection; the runs then report their own epsilon,
which is what the table shows). The cost of DP is measured in the same launch:
the round time with and without DP, and alone, one accountant call (RDP and
PLD), one clip of a client's update and one round's noise.

The Shakespeare data is the offline build (``fedhpc data prepare shakespeare``,
built on first use, or ``--shakespeare DIR``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import numpy as np

import _jobs
import paper

TARGETS = (1.0, 3.0, 8.0)
WORKLOADS = {
    "digits-100": {"rate": 0.2, "delta": 1e-3, "clip": 1.0, "sets": [
        "clients.total=100", "clients.per_round=20", "data.partition=classes", "model.hidden=[128]",
        "local.epochs=5", "local.lr=0.05"]},
    "synthetic-1000": {"rate": 0.05, "delta": 1e-4, "clip": 0.5, "sets": [
        "clients.total=1000", "clients.per_round=50", "data.name=synthetic", "data.partition=iid",
        "data.synthetic.samples=25000", "model.hidden=[64]", "local.epochs=2", "local.lr=0.1"]},
    "shakespeare-816": {"rate": 0.1, "delta": 1e-4, "clip": 1.0, "sets": [
        "clients.total=816", "clients.per_round=82", "data.name=shakespeare", "data.partition=natural",
        "data.max_client_samples=64", "model.name=paper:small_char_lstm", "local.epochs=4", "local.lr=1.0",
        "eval.max_samples=4000"]},
}
SIZES = {"full": 30, "tiny": 3}  # rounds


def noise_for(target: float, rate: float, rounds: int, delta: float) -> float:
    """The noise multiplier for which RDP's epsilon after ``rounds`` at ``rate`` is ``target``."""
    from fedhpc.privacy import Accountant

    lo, hi = 0.3, 50.0
    for _ in range(40):
        mid = (lo * hi) ** 0.5
        if Accountant(mid, delta).epsilon([rate] * rounds) > target:
            lo = mid
        else:
            hi = mid
    return hi


def costs(n: int = 8906) -> dict:
    """Seconds of one accountant call (30 rounds), one clip of an update of ``n`` values and one
    round's noise (the digits MLP has 8,906 parameters)."""
    from fedhpc.privacy import Accountant, clip, gaussian_noise

    acc = Accountant(1.0, 1e-3)

    def timed(fn, reps: int) -> float:
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps

    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    return {"accountant_rdp_s": timed(lambda: acc.epsilon([0.2] * 30), 5),
            "accountant_pld_s": timed(lambda: acc.epsilon([0.2] * 30, pld=True), 2),
            "clip_s": timed(lambda: clip(x.copy(), 1.0), 2000),
            "noise_s": timed(lambda: gaussian_noise(0, 1, n, 0.01), 200), "params": n}


def main(args: argparse.Namespace) -> int:
    rounds = SIZES[args.size]
    jobs, plan = [], []
    for name in args.workloads:
        w = WORKLOADS[name]
        base = [*w["sets"], f"rounds={rounds}", f"eval.every={rounds}", "selection.name=poisson",
                "codec.error_feedback=false", "guard.norm_multiple=0", "tracking.tensorboard=false"]
        if name.startswith("shakespeare"):
            base.append(f"data.root={paper.shakespeare_source(args.shakespeare)}")
        cases = [("no DP", None, base)]
        for eps in TARGETS:
            sigma = noise_for(eps, w["rate"], rounds, w["delta"])
            cases.append((f"epsilon {eps:g}", sigma, [*base, "dp.enabled=true", f"dp.clip={w['clip']}",
                                                      f"dp.noise_multiplier={sigma:.6f}", f"dp.delta={w['delta']}"]))
        label, sigma, sets = cases[-1]
        cases.append((f"{label}, adaptive clip", sigma, [*sets, "dp.adaptive_clip=true"]))
        for label, sigma, sets in cases:
            out = args.out / name / label.replace(" ", "-")
            jobs.append({"out": str(out), "sets": sets})
            plan.append((name, label, sigma, out))
    _jobs.run_plan(jobs, args.out / "plan.json", 3, reuse=args.reuse)
    rows = []
    for name, label, sigma, out in plan:
        metrics, bench = _jobs.read_run(out)
        last = metrics[-1]
        rows.append({"workload": name, "case": label, "noise_multiplier": sigma, "accuracy": last["accuracy"],
                     "epsilon": last["epsilon"], "epsilon_pld": last["epsilon_pld"],
                     "delta": WORKLOADS[name]["delta"], "final_clip": last.get("dp_clip"),
                     "round_s": statistics.fmean(m["round_seconds"] for m in metrics[1:-1] or metrics),
                     "clients_per_round": statistics.fmean(m["clients_selected"] for m in metrics)})
        print(f"  {name:15} {label:26} accuracy {last['accuracy']:.4f}, epsilon {last['epsilon']}", flush=True)
    cost = costs()
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
               "cpus": os.cpu_count(), "size": args.size, "rounds": rounds, "rows": rows, "costs": cost}
    _jobs.publish(table(rows, cost, rounds), results, args.json, args.readme, "privacy")
    return 0


def table(rows: list[dict], cost: dict, rounds: int) -> str:
    lines = [f"{rounds} rounds, Poisson sampling in every job, 3 ranks on this machine.", "",
             "| workload | case | noise multiplier | epsilon (RDP / PLD) at delta | final accuracy | clients a round | "
             "final clip | round s |", "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        eps = ("-" if r["epsilon"] is None else
               f"{r['epsilon']:.2f} / {r['epsilon_pld']:.2f} at {r['delta']:g}")
        sigma = "-" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:.3f}"
        clip = "-" if r["final_clip"] is None else f"{r['final_clip']:.3g}"
        lines.append(f"| {r['workload']} | {r['case']} | {sigma} | {eps} | {r['accuracy']:.4f} | "
                     f"{r['clients_per_round']:.1f} | {clip} | {r['round_s']:.3f} |")
    lines += ["", f"What DP costs, alone: an RDP accountant call {cost['accountant_rdp_s']:.3f} s (every round), a "
              f"PLD call {cost['accountant_pld_s']:.3f} s (the last round), clipping one client's update of "
              f"{cost['params']:,} values {1e6 * cost['clip_s']:.1f} us, one round's noise "
              f"{1e6 * cost['noise_s']:.0f} us."]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    _jobs.add_run_arguments(p, SIZES, "full (30 rounds, about 25 minutes), tiny", "privacy", shakespeare=True)
    p.add_argument("--workloads", type=lambda s: s.split(","), default=list(WORKLOADS),
                   help=f"comma-separated, of {', '.join(WORKLOADS)} (default: all)")


if __name__ == "__main__":
    _jobs.script(__doc__, add_arguments, main)
