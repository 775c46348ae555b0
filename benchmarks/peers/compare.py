#!/usr/bin/env python
"""fedhpc against Flower's simulation engine on the same digits workload (`make bench-peers`).

The workload (issue 8): sklearn digits, 20 clients holding exactly 2 classes
each (fedhpc's split, exported to an .npz so that Flower trains on the same
client data), MLP 64-128-10, SGD lr 0.05, batch 16, 5 local epochs, FedAvg,
every client every round, 30 rounds, test accuracy after each round, one
torch thread per training process.

* **fedhpc**: ``mpiexec -n 3 python -m mpi4py -m fedhpc run`` (rank 0 and two
  trainer ranks: two clients train at a time, like Flower's two Ray workers on
  this 2-core machine). Per round, ``round_seconds`` and ``train_seconds``
  (the slowest trainer rank's time in local training) from its
  ``metrics.jsonl``.
* **Flower**: ``flower_digits.py`` in its own venv (``setup_flower.sh``:
  ``flwr[simulation]``, Ray), 2 CPUs, 1 per client. Per round, its strategy's
  timestamps and each client's time in its training loop.

Both: wall time of the whole process, interpreter start included; per-round
overhead = round time - the slowest worker's local training. Each framework
runs ``--repeats`` times, alternating; the table gives medians, the JSON
every run. Writes ``benchmarks/results/peers.json``, a plot of the accuracy
curves, and the section between ``<!-- peers:begin -->`` and
``<!-- peers:end -->`` of ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the benchmarks' shared helpers
from _jobs import optional_path, publish  # noqa: E402
ROOT = HERE.parent.parent
FLOWER_PY = HERE / ".venv-flower" / "bin" / "python"
CLIENTS, ROUNDS = 20, 30
FEDHPC_SETS = [
    "data.name=digits", "data.partition=classes", "data.classes_per_client=2", "data.test_fraction=0.2",
    f"clients.total={CLIENTS}", f"clients.per_round={CLIENTS}", "model.name=mlp", "model.hidden=[128]",
    "local.epochs=5", "local.batch_size=16", "local.lr=0.05", "local.optimizer=sgd", "local.momentum=0.0",
    "local.threads=1", "strategy.name=fedavg", "codec.name=none", "eval.every=1", "seed=0",
]
# the issue's targets, and what it measured of Flower on this kind of machine
TARGET_WALL_RATIO, TARGET_OVERHEAD_RATIO = 2.5, 10.0
ISSUE_FLOWER = {"wall_s": "30-40", "round_s": "0.45-0.55", "overhead_s": "0.1-0.3", "accuracy": "about 87%"}


def timed(cmd: list[str], log: Path, env: dict | None = None) -> float:
    """Run ``cmd`` with its output in ``log``; return its wall seconds; raise with the log's tail if it fails."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited with {proc.returncode}; the end of {log}:\n"
                           + "\n".join(log.read_text().splitlines()[-20:]))
    return wall


def run_fedhpc(out: Path, rounds: int, ranks: int) -> dict:
    """One fedhpc job, timed from the outside; its per-round record from metrics.jsonl."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    sets = [a for s in FEDHPC_SETS + [f"rounds={rounds}"] for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    wall = timed([str(mpiexec), "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "fedhpc", "run",
                  "--out", str(out), *sets], out.with_suffix(".log"), env)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rounds_ = [{"round": m["round"], "round_s": m["round_seconds"], "slowest_worker_train_s": m["train_seconds"],
                "overhead_s": m["overhead_seconds"], "accuracy": m["accuracy"]} for m in metrics]
    return {"wall_s": wall, "rounds": rounds_}


def run_flower(npz: Path, out: Path, rounds: int) -> dict:
    """One Flower simulation, timed from the outside; its own JSON record."""
    wall = timed([str(FLOWER_PY), str(HERE / "flower_digits.py"), "--npz", str(npz), "--rounds", str(rounds),
                  "--out", str(out)], out.with_suffix(".log"))
    res = json.loads(out.read_text())
    return {"wall_s": wall, "rounds": res["rounds"], "startup_s": res["startup_s"],
            "ray_startup_s": res["ray_startup_s"], "versions": {k: res[k] for k in
                                                                ("flwr_version", "ray_version", "torch_version")}}


def summarize(run: dict) -> dict:
    """Means per round (all rounds, and rounds 2.. where start-up does not weigh), and the final accuracy."""
    rs = run["rounds"]
    out = {"wall_s": run["wall_s"], "final_accuracy": rs[-1]["accuracy"],
           "rounds_total_s": sum(r["round_s"] for r in rs)}
    for key in ("round_s", "slowest_worker_train_s", "overhead_s"):
        out[f"mean_{key}"] = statistics.fmean(r[key] for r in rs)
        out[f"mean_{key}_after_1"] = statistics.fmean(r[key] for r in rs[1:]) if len(rs) > 1 else out[f"mean_{key}"]
    out["outside_rounds_s"] = run["wall_s"] - out["rounds_total_s"]  # start-up, set-up and shutdown
    return out


def median_summary(runs: list[dict]) -> dict:
    """Per key, the median over the repeats."""
    sums = [summarize(r) for r in runs]
    return {k: statistics.median(s[k] for s in sums) for k in sums[0]}


def markdown(res: dict) -> str:
    f, w = res["fedhpc"]["median"], res["flower"]["median"]
    meta = res["meta"]
    rows = [("whole job, wall s (process start to exit)", "wall_s", "{:.1f}"),
            ("outside the rounds s (start-up, set-up, shutdown)", "outside_rounds_s", "{:.1f}"),
            ("mean round s", "mean_round_s", "{:.3f}"),
            ("mean round s, rounds 2..", "mean_round_s_after_1", "{:.3f}"),
            ("slowest worker's local training s per round", "mean_slowest_worker_train_s", "{:.3f}"),
            ("framework overhead s per round", "mean_overhead_s", "{:.4f}"),
            ("framework overhead s per round, rounds 2..", "mean_overhead_s_after_1", "{:.4f}"),
            ("accuracy after the last round", "final_accuracy", "{:.1%}")]
    out = [f"Measured by `{meta['command']}` on {meta['date']}, {meta['cpus']} cores; medians of {meta['repeats']} "
           f"alternating runs of each; flwr {meta['flower_versions']['flwr_version']} (ray "
           f"{meta['flower_versions']['ray_version']}), fedhpc with {meta['ranks']} MPI ranks.", "",
           "| | fedhpc | Flower (simulation, Ray) | Flower / fedhpc |", "|---|---:|---:|---:|"]
    for label, key, fmt in rows:
        ratio = "" if key == "final_accuracy" else f"{w[key] / f[key]:.1f}x" if f[key] > 0 else "—"
        out.append(f"| {label} | {fmt.format(f[key])} | {fmt.format(w[key])} | {ratio} |")
    curve_rounds = [r for r in (1, 2, 5, 10, 20, 30) if r <= meta["rounds"]]
    first_f, first_w = res["fedhpc"]["runs"][0]["rounds"], res["flower"]["runs"][0]["rounds"]
    out += ["", "Accuracy curve (first run of each): " + ", ".join(
        f"round {r}: {first_f[r - 1]['accuracy']:.1%} / {first_w[r - 1]['accuracy']:.1%}" for r in curve_rounds)
        + " (fedhpc / Flower).", ""]
    t = res["targets"]
    out.append(f"Targets: whole job at least {TARGET_WALL_RATIO}x faster: "
               f"{'met' if t['wall_met'] else 'missed'} ({t['wall_ratio']:.1f}x); per-round overhead at least "
               f"{TARGET_OVERHEAD_RATIO:.0f}x lower: {'met' if t['overhead_met'] else 'missed'} "
               f"({t['overhead_ratio']:.0f}x); same accuracy curve: final accuracy {f['final_accuracy']:.1%} vs "
               f"{w['final_accuracy']:.1%}. The issue measured Flower at {ISSUE_FLOWER['wall_s']} s, "
               f"{ISSUE_FLOWER['round_s']} s per round of which {ISSUE_FLOWER['overhead_s']} s overhead, "
               f"{ISSUE_FLOWER['accuracy']} at round 30.")
    return "\n".join(out)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, style in (("fedhpc", "o-"), ("flower", "s-")):
        rs = res[name]["runs"][0]["rounds"]
        ax1.plot([r["round"] for r in rs], [r["accuracy"] for r in rs], style, ms=3, label=name)
        ax2.plot([r["round"] for r in rs], [r["overhead_s"] for r in rs], style, ms=3, label=name)
    ax1.set(xlabel="round", ylabel="test accuracy", title="Same workload, same data")
    ax2.set(xlabel="round", ylabel="seconds", yscale="log", title="Per-round framework overhead")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"federated rounds (default {ROUNDS})")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each framework (default 3)")
    parser.add_argument("--ranks", type=int, default=3, help="fedhpc's MPI ranks (default 3: rank 0 + 2 trainers)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-peers", help="where the runs go")
    parser.add_argument("--json", type=optional_path, default=ROOT / "benchmarks" / "results" / "peers.json",
                        help="the JSON results ('' = not written)")
    parser.add_argument("--readme", type=optional_path, default=ROOT / "benchmarks" / "README.md",
                        help="the file whose peers section is rewritten ('' = none)")
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.repeats < 1:
        parser.error("--rounds must be >= 2 and --repeats >= 1")
    subprocess.run(["bash", str(HERE / "setup_flower.sh")], check=True)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    npz = out / "digits-classes2.npz"
    subprocess.run([sys.executable, str(HERE / "export_partition.py"), "--out", str(npz), "--clients",
                    str(CLIENTS)], check=True, stdout=subprocess.DEVNULL)
    runs: dict[str, list[dict]] = {"fedhpc": [], "flower": []}
    for i in range(args.repeats):
        runs["fedhpc"].append(run_fedhpc(out / f"fedhpc-{i}", args.rounds, args.ranks))
        print(f"fedhpc run {i + 1}: {runs['fedhpc'][-1]['wall_s']:.1f} s", flush=True)
        runs["flower"].append(run_flower(npz, out / f"flower-{i}.json", args.rounds))
        print(f"Flower run {i + 1}: {runs['flower'][-1]['wall_s']:.1f} s", flush=True)
    res = {name: {"median": median_summary(rs), "runs": rs} for name, rs in runs.items()}
    f, w = res["fedhpc"]["median"], res["flower"]["median"]
    res["targets"] = {"wall_ratio": w["wall_s"] / f["wall_s"], "wall_met": w["wall_s"] / f["wall_s"] >= TARGET_WALL_RATIO,
                      "overhead_ratio": w["mean_overhead_s"] / f["mean_overhead_s"],
                      "overhead_met": w["mean_overhead_s"] / f["mean_overhead_s"] >= TARGET_OVERHEAD_RATIO}
    res["meta"] = {"date": datetime.date.today().isoformat(), "cpus": os.cpu_count(), "repeats": args.repeats,
                   "rounds": args.rounds, "ranks": args.ranks, "python": platform.python_version(),
                   "flower_versions": runs["flower"][0]["versions"],
                   "command": "make bench-peers" if (args.rounds, args.repeats) == (ROUNDS, 3)
                   else f"python benchmarks/peers/compare.py --rounds {args.rounds} --repeats {args.repeats}"}
    publish(markdown(res), res, args.json, args.readme, "peers")
    if args.json:
        plot(res, args.json.parent / "peers_digits.png")
        print(f"wrote {args.json.parent / 'peers_digits.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
