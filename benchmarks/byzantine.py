#!/usr/bin/env python
"""Byzantine clients: final accuracy under each attack and each defense, and what a defense costs a round.

Real ``fedhpc run`` jobs in one MPI launch (3 ranks), every client in every
round (so a fraction of attackers is exactly that share of each round):

* **digits**: the embedded digits, 20 clients with exactly 2 classes each
  (non-IID), MLP 64-128-10, 5 local epochs, lr 0.05, 20 rounds; every attack
  at 0, 10, 20 and 30 % attackers (0, 2, 4, 6 of 20);
* **medmnist-format**: a MedMNIST-format ``.npz`` of jittered 28x28 digits
  (the paper benchmark's stand-in, ``paper.write_digits_medmnist``), 20
  clients with 2 classes each, MLP 784-128-10, 2 local epochs, 15 rounds;
  every attack at 20 %.

Attacks (``[attack]``, their default strengths): sign-flip (-1 x the update),
scale (10 x), gaussian (noise of std 1 instead of the update), label-flip
(C - 1 - y), alie ("a little is enough": mean - z_max * std of the honest
updates) and ipm (-0.5 x their mean), the last two forged on rank 0 from the
round's honest updates. Attackers are drawn with the run seed.

Defenses, each configured for the worst case here (6 attackers of 20): FedAvg
alone; norm bound (FedAvg behind ``guard.norm_multiple = 3``, the hardening
guard); coordinate median; trimmed mean (trim 0.3); Krum (f 6); multi-Krum
(f 6, m 14); Bulyan (f 4: it needs K >= 4f + 3, so it refuses 30 %);
geometric median (RFA); centered clipping (tau 1, 3 iterations). The norm
guard is off except in "norm bound", so each defense is measured alone. A
configuration a defense refuses is reported as refused, with its reason.

Then each defense's cost of one aggregation of 100 clients' updates, alone, at
the digits model's size and at 1M parameters, against ``numpy.mean`` of the
stacked updates (what a user would otherwise write).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np

import _jobs
import paper

FRACTIONS = (0.1, 0.2, 0.3)
ABSENT = "attackers absent"  # the table's oracle row: what a defense that removed exactly them would get
ATTACKS = ("sign-flip", "scale", "gaussian", "label-flip", "alie", "ipm")
# label: (strategy, its parameters, other settings)
DEFENSES = {
    "fedavg": ("fedavg", {}, []),
    "norm bound": ("fedavg", {}, ["guard.norm_multiple=3"]),
    "median": ("median", {}, []),
    "trimmed mean": ("trimmed-mean", {"trim": 0.3}, []),
    "krum": ("krum", {"f": 6}, []),
    "multi-krum": ("krum", {"f": 6, "m": 14}, []),
    "bulyan": ("bulyan", {"f": 4}, []),
    "geomedian": ("geomedian", {}, []),
    "centered clipping": ("centered-clipping", {"tau": 1.0, "iterations": 3}, []),
}


def defense_sets(label: str) -> list[str]:
    name, params, extra = DEFENSES[label]
    return [f"strategy.name={name}", *(f"strategy.{k}={v}" for k, v in params.items()), *extra]
BASE = ["clients.total=20", "clients.per_round=20", "data.partition=classes", "data.classes_per_client=2",
        "model.hidden=[128]", "local.lr=0.05", "clock=simulated", "guard.norm_multiple=0",
        "tracking.tensorboard=false"]
WORKLOADS = {"digits": {"sets": ["local.epochs=5"], "fractions": FRACTIONS},
             "medmnist-format": {"sets": ["data.name=medmnist", "local.epochs=2"], "fractions": (0.2,)}}
SIZES = {"full": {"rounds": {"digits": 20, "medmnist-format": 15}, "attacks": ATTACKS, "defenses": list(DEFENSES),
                  "cost_sizes": (9610, 1_000_000)},
         "tiny": {"rounds": {"digits": 3, "medmnist-format": 2}, "attacks": ("sign-flip", "alie"),
                  "defenses": ["fedavg", "median", "bulyan"], "cost_sizes": (9610,)}}


def refusal(sets: list[str]) -> str:
    """Why fedhpc refuses this configuration ("" = it runs)."""
    from fedhpc.config import load_config
    from fedhpc.errors import ConfigError

    try:
        load_config(None, sets)
    except ConfigError as exc:
        return str(exc)
    return ""


def attackers(sets: list[str], fraction: float) -> frozenset[int]:
    """The clients ``attack.fraction = fraction`` makes attackers in a run of ``sets``."""
    from fedhpc.attack import AttackPlan
    from fedhpc.config import load_config

    cfg = load_config(None, sets)
    return AttackPlan.choose(cfg.clients.total, fraction, [], cfg.seed)


def plan(args: argparse.Namespace, size: dict) -> tuple[list[dict], list[dict]]:
    """The jobs to run, and one row per (workload, defense, attack, fraction) in table order."""
    jobs, rows = [], []
    for workload, w in WORKLOADS.items():
        base = [*BASE, *w["sets"], f"rounds={size['rounds'][workload]}", f"eval.every={size['rounds'][workload]}"]
        if workload == "medmnist-format":
            base.append(f"data.root={args.medmnist}")
        for fraction in w["fractions"]:  # the oracle: FedAvg without the attackers at all (they fail every round)
            sets = [*base, "strategy.name=fedavg", f"faults.error_clients={sorted(attackers(base, fraction))}"]
            out = args.out / workload / "attackers-absent" / f"{fraction:g}"
            jobs.append({"out": str(out), "sets": sets})
            rows.append({"workload": workload, "defense": ABSENT, "attack": "any", "fraction": fraction, "out": out,
                         "refused": ""})
        for defense in size["defenses"]:
            cases = [("none", 0.0)] + [(a, f) for a in size["attacks"] for f in w["fractions"]]
            for attack, fraction in cases:
                sets = [*base, *defense_sets(defense)]
                if attack != "none":
                    sets += [f"attack.kind={attack}", f"attack.fraction={fraction}"]
                out = args.out / workload / defense.replace(" ", "-") / f"{attack}-{fraction:g}"
                why = refusal(sets)
                if not why:
                    jobs.append({"out": str(out), "sets": sets})
                rows.append({"workload": workload, "defense": defense, "attack": attack, "fraction": fraction,
                             "out": out, "refused": why})
    return jobs, rows


def best(reps: int, fn, *args) -> float:
    """The least of ``reps`` timings of ``fn(*args)``, in seconds."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times)


def costs(sizes: tuple[int, ...], clients: int = 100, reps: int = 3) -> list[dict]:
    """Seconds of one aggregation of ``clients`` updates by each defense (best of ``reps``), and of
    numpy.mean over the same stacked updates."""
    from fedhpc.strategy import get_strategy
    from fedhpc.types import ClientResult, RoundOutcome

    out = []
    for n in sizes:
        rng = np.random.default_rng(0)
        stack = (rng.standard_normal((clients, n)) * 0.01).astype(np.float32)
        outcome = RoundOutcome(0, [ClientResult(c, 10, 1.0, stack[c], 1.0, 4 * n) for c in range(clients)])
        weights = np.zeros(n, np.float32)
        numpy_s = best(reps, stack.mean, 0)
        row = {"params": n, "clients": clients, "numpy_mean_s": numpy_s, "defenses": {}}
        for label, (name, params, _) in DEFENSES.items():
            strategy = get_strategy(name, **params)
            row["defenses"][label] = best(reps, strategy.aggregate, weights, outcome)
        out.append(row)
        print(f"  costs at {n:,} parameters: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in row["defenses"].items()),
              flush=True)
    return out


def main(args: argparse.Namespace) -> int:
    size = SIZES[args.size]
    if args.medmnist is None:
        args.medmnist = args.out / "data" / "digits28mnist.npz"
        paper.write_digits_medmnist(args.medmnist, 1797, 2)
    jobs, rows = plan(args, size)
    print(f"{len(jobs)} jobs ({sum(bool(r['refused']) for r in rows)} configurations refused)", flush=True)
    _jobs.run_plan(jobs, args.out / "plan.json", 3, reuse=args.reuse)
    for r in rows:
        out = r.pop("out")
        if not r["refused"]:
            metrics, _ = _jobs.read_run(out)
            r["accuracy"] = metrics[-1]["accuracy"]
            r["round_s"] = float(np.mean([m["round_seconds"] for m in metrics]))
            r["attackers_per_round"] = float(np.mean([m["attackers_reported"] or 0 for m in metrics]))
    cost = costs(size["cost_sizes"])
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
               "cpus": os.cpu_count(), "size": args.size, "rounds": size["rounds"], "rows": rows, "costs": cost}
    _jobs.publish(table(rows, cost, size), results, args.json, args.readme, "byzantine")
    return 0


def table(rows: list[dict], cost: list[dict], size: dict) -> str:
    """Accuracy per (defense, attack x fraction), per workload; the 20 % verdict; the costs."""
    lines = []
    for workload, w in WORKLOADS.items():
        mine = [r for r in rows if r["workload"] == workload]
        cols = [(a, f) for a in size["attacks"] for f in w["fractions"]]
        cell = {(r["defense"], r["attack"], r["fraction"]): r for r in mine}
        absent = {r["fraction"]: r["accuracy"] for r in mine if r["defense"] == ABSENT}
        lines += [f"**{workload}** ({size['rounds'][workload]} rounds; final accuracy, attackers of 20 clients a "
                  f"round):", "",
                  "| defense | no attack | " + " | ".join(f"{a} {f:.0%}" for a, f in cols) + " |",
                  "|---|---:|" + "---:|" * len(cols)]
        for d in size["defenses"]:
            vals = [cell[(d, "none", 0.0)]] + [cell[(d, a, f)] for a, f in cols]
            lines.append(f"| {d} | " + " | ".join("refused" if v["refused"] else f"{v['accuracy']:.3f}"
                                                  for v in vals) + " |")
        lines.append(f"| *{ABSENT} (FedAvg without them)* | - | " + " | ".join(f"{absent[f]:.3f}" for _, f in cols)
                     + " |")
        clean = cell[("fedavg", "none", 0.0)]["accuracy"]
        lines += ["", f"With 20 % attackers, the best defense per attack against clean FedAvg ({clean:.3f}) and "
                      f"against FedAvg without the attackers' clients ({absent[0.2]:.3f}, what a defense that removed "
                      f"exactly them would lose: their data goes with their updates):"]
        for a in size["attacks"]:
            ran = [cell[(d, a, 0.2)] for d in size["defenses"] if not cell[(d, a, 0.2)]["refused"]]
            top = max(ran, key=lambda v: v["accuracy"])
            gap, short = (clean - top["accuracy"]) * 100, (absent[0.2] - top["accuracy"]) * 100
            lines.append(f"- {a}: {top['defense']} {top['accuracy']:.3f}: {gap:.1f} points below clean "
                         f"({'within' if gap <= 3 else 'NOT within'} 3), {short:.1f} below the attackers-absent run")
        refused = sorted({(r["defense"], r["refused"]) for r in mine if r["refused"]})
        lines += [f"- refused: {d}: {why}" for d, why in refused[:3]] + [""]
    lines += ["One aggregation of 100 clients' updates, alone (best of 3, this machine; the norm bound's is "
              "FedAvg's, its guard a norm per update):", "",
              "| defense | " + " | ".join(f"{c['params']:,} params" for c in cost) + " |",
              "|---|" + "---:|" * len(cost)]
    lines.append("| numpy.mean (baseline) | " + " | ".join(f"{c['numpy_mean_s'] * 1e3:.1f} ms" for c in cost) + " |")
    for d in DEFENSES:
        lines.append(f"| {d} | " + " | ".join(f"{c['defenses'][d] * 1e3:.1f} ms "
                                             f"({c['defenses'][d] / c['numpy_mean_s']:.1f}x)" for c in cost) + " |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    _jobs.add_run_arguments(p, SIZES, "full (about 10 minutes), tiny", "byzantine")
    p.add_argument("--medmnist", type=Path, default=None,
                   help="a MedMNIST-format .npz (default: jittered digits written under --out)")


if __name__ == "__main__":
    _jobs.script(__doc__, add_arguments, main)
