#!/usr/bin/env python
"""Client state at scale: 100,000 virtual clients, top-k with error feedback, a ~22k-parameter model.

Real ``fedhpc run`` jobs (3 ranks: rank 0 + 2 trainers), each in its own
``mpiexec`` so that every rank's peak RSS (``ru_maxrss``, via ``_peak.py``)
is that job's alone. ``synthetic`` data of shape [32], 5 samples per client,
MLP 32-512-10 (22,026 parameters, 88 kB of residual per client), top-k 5 %
with error feedback, one local epoch, K clients per round (100 and 1,000).
For each K:

* **no state**: error feedback off: the ranks' working set without client state;
* **in RAM**: every residual kept in RAM (``clients.state_memory_mb = 0``), R rounds;
* **spilled**: a budget of B MB per rank (``--budget-mb``), R/2 rounds and a
  checkpoint, then resumed (a second ``mpiexec``) to R rounds: its final model
  must be bit for bit the in-RAM run's;
* **bf16**: residuals stored as bfloat16 under half that budget, R rounds;
* **before** (with ``--before PYTHON``, the interpreter of another fedhpc
  checkout): the in-RAM job run by that code.

Reported per job: peak RSS of rank 0 and of the larger trainer, the client
state in RAM at the end (from ``metrics.jsonl``), states spilled and read back,
the mean round time and overhead (round time minus the slowest trainer's
training time) over the steady rounds, per selected client, and the
checkpoint's write and restore times (from ``run.log``).

And what bf16 residuals cost in accuracy: the digits workload (20 clients with
2 classes each, MLP 64-128-10, 5 local epochs) with top-k 1 % + error
feedback for 30 rounds, float32 against bf16 residuals, over 3 seeds.

Target (issue 24): memory within the budget plus the model's working set; at
most 50 us of overhead per selected client at 1,000 per round; resume bit-exact.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import _jobs

HERE = Path(__file__).resolve().parent
TARGET_US_PER_CLIENT = 50.0
SIZES = {  # --size: (clients, clients per round, rounds, digits rounds, seeds)
    "full": (100_000, [100, 1000], 10, 30, 3),
    "quick": (100_000, [1000], 6, 15, 1),
    "tiny": (2_000, [50], 4, 3, 1),
}


def sets(total: int, per_round: int, rounds: int) -> list[str]:
    return [f"clients.total={total}", f"clients.per_round={per_round}", f"rounds={rounds}",
            "data.name=synthetic", "data.partition=iid", "data.synthetic.shape=[32]",
            f"data.synthetic.samples={total * 5 * 5 // 4}", "model.name=mlp", "model.hidden=[512]",
            "local.epochs=1", "local.batch_size=16", "codec.name=topk", "codec.ratio=0.05",
            f"eval.every={rounds}", "eval.max_samples=2000", "tracking.tensorboard=false"]


def launch(out: Path, args: list[str], python: str = sys.executable, ranks: int = 3) -> dict:
    """One ``mpiexec`` of ``fedhpc ARGS`` under ``python``; every rank's peak RSS and the wall time."""
    peak = out / f"peak-{len(list(out.glob('peak-*'))) if out.exists() else 0}"
    cmd = [_jobs.mpiexec(), "-n", str(ranks), python, str(HERE / "_peak.py"), str(peak), *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=dict(os.environ, **_jobs.LAUNCH_ENV), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    return {"peak_rss": [int((peak / f"peak_rss.{r}").read_text()) for r in range(ranks)],
            "end_rss": [int((peak / f"end_rss.{r}").read_text()) for r in range(ranks)],
            "wall_s": time.perf_counter() - t0}


def summarise(out: Path, name: str, per_round: int, runs: list[dict], budget_mb: float) -> dict:
    """The table row of a finished run directory."""
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the first round warms allocators and caches, an evaluating one also evaluates: neither is steady
    steady = [m for m in metrics[1:] if m["accuracy"] is None] or metrics
    log = (out / "run.log").read_text()
    written = [float(s) for s in re.findall(r"checkpoint written: .* in ([0-9.]+)s", log)]
    restored = [float(s) for s in re.findall(r"resumed from .* client states in ([0-9.]+)s", log)]
    overhead = statistics.fmean(m["overhead_seconds"] for m in steady)
    row = {"case": name, "clients_per_round": per_round, "budget_mb": budget_mb,
           "rank0_peak_rss": max(r["peak_rss"][0] for r in runs),
           "trainer_peak_rss": max(max(r["peak_rss"][1:]) for r in runs),
           "trainer_end_rss": max(runs[-1]["end_rss"][1:]),
           # (code from before the store reports none of these)
           "state_ram_mb": metrics[-1].get("state_ram_mb", 0.0), "spills": sum(m.get("state_spills", 0) for m in metrics),
           "loads": sum(m.get("state_loads", 0) for m in metrics),
           "round_s": statistics.fmean(m["round_seconds"] for m in steady), "overhead_s": overhead,
           "overhead_us_per_client": 1e6 * overhead / per_round,
           "checkpoint_write_s": written[-1] if written else None, "restore_s": restored[-1] if restored else None,
           "final_accuracy": metrics[-1]["accuracy"]}
    print(f"  {name:10} K={per_round:5}: trainer peak {row['trainer_peak_rss'] / 1e6:6.0f} MB, at the end "
          f"{row['trainer_end_rss'] / 1e6:6.0f} MB, state in RAM "
          f"{row['state_ram_mb']:6.1f} MB, {row['spills']} spilled / {row['loads']} loaded, round "
          f"{row['round_s']:.3f}s, overhead {row['overhead_us_per_client']:.0f} us/client, checkpoint "
          f"{row['checkpoint_write_s'] or '-'}s, restore {row['restore_s'] or '-'}s", flush=True)
    return row


def scale(args, total: int, per_round: int, rounds: int) -> tuple[list[dict], bool]:
    """The four jobs of one K; whether the spilled-and-resumed model is the in-RAM one."""
    base, root = sets(total, per_round, rounds), args.out / f"k{per_round}"
    shutil.rmtree(root, ignore_errors=True)  # a resume must find this run's checkpoint, not an older one's
    budget = [f"clients.state_memory_mb={args.budget_mb}", f"clients.state_dir={args.state_dir or root / 'scratch'}"]
    rows = []
    for name, extra, r in (("no state", ["codec.error_feedback=false"], rounds), ("in RAM", [], rounds)):
        out = root / name.replace(" ", "-")
        got = launch(out, ["run", "--out", str(out), *(f"--set={s}" for s in base + extra + [f"rounds={r}"])])
        rows.append(summarise(out, name, per_round, [got], 0.0))
    out = root / "spilled"
    first = launch(out, ["run", "--out", str(out), *(f"--set={s}" for s in base + budget + [f"rounds={rounds // 2}"])])
    second = launch(out, ["run", "--resume", str(out), *(f"--set={s}" for s in budget + [f"rounds={rounds}"])])
    rows.append(summarise(out, "spilled", per_round, [first, second], args.budget_mb))
    exact = np.load(out / "final_weights.npy").tobytes() == np.load(root / "in-RAM" / "final_weights.npy").tobytes()
    half = [f"clients.state_memory_mb={args.budget_mb / 2}", budget[1], "codec.residual_dtype=bf16"]
    out = root / "bf16"
    got = launch(out, ["run", "--out", str(out), *(f"--set={s}" for s in base + half)])
    rows.append(summarise(out, "bf16", per_round, [got], args.budget_mb / 2))
    if args.before:
        out = root / "before"
        got = launch(out, ["run", "--out", str(out), *(f"--set={s}" for s in base)], args.before)
        rows.append(summarise(out, "before", per_round, [got], 0.0))
    return rows, exact


def bf16_accuracy(args, rounds: int, seeds: int) -> list[dict]:
    """Final accuracy of the digits workload with top-k 1 % + error feedback, float32 vs bf16 residuals."""
    jobs = []
    for seed in range(seeds):
        for dtype in ("float32", "bf16"):
            jobs.append({"out": str(args.out / "bf16-accuracy" / f"{dtype}-{seed}"), "sets": [
                f"seed={seed}", f"rounds={rounds}", "clients.total=20", "clients.per_round=20", "local.epochs=5",
                "local.lr=0.05", "model.hidden=[128]", "codec.name=topk", "codec.ratio=0.01",
                f"codec.residual_dtype={dtype}", f"eval.every={rounds}", "tracking.tensorboard=false"]})
    _jobs.run_plan(jobs, args.out / "bf16-accuracy" / "plan.json", 3, reuse=False)
    out = []
    for seed in range(seeds):
        acc = {d: _jobs.read_run(args.out / "bf16-accuracy" / f"{d}-{seed}")[0][-1]["accuracy"]
               for d in ("float32", "bf16")}
        out.append({"seed": seed, **acc})
        print(f"  digits, top-k 1 %, seed {seed}: float32 residuals {acc['float32']:.4f}, bf16 {acc['bf16']:.4f}",
              flush=True)
    return out


def table(total: int, rows: list[dict], exact: dict, acc: list[dict]) -> str:
    lines = [f"{total:,} clients, MLP 32-512-10 (22,026 parameters, 88 kB of residual each), top-k 5 % + error "
             "feedback, 3 ranks (2 trainers) on this machine.", "",
             "| K/round | case | budget/rank | trainer peak RSS | trainer RSS at the end | rank 0 peak | state in RAM "
             "(all ranks) | spilled / read back | round s | overhead per client | checkpoint write | restore |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['clients_per_round']:,} | {r['case']} | {r['budget_mb'] or '-'} MB | "
            f"{r['trainer_peak_rss'] / 1e6:.0f} MB | {r['trainer_end_rss'] / 1e6:.0f} MB | "
            f"{r['rank0_peak_rss'] / 1e6:.0f} MB | {r['state_ram_mb']:.1f} MB | "
            f"{r['spills']:,} / {r['loads']:,} | {r['round_s']:.3f} | {r['overhead_us_per_client']:.0f} us | "
            + (f"{r['checkpoint_write_s']:.2f} s" if r["checkpoint_write_s"] is not None else "-") + " | "
            + (f"{r['restore_s']:.2f} s" if r["restore_s"] is not None else "-") + " |")
    lines += ["", "Spilled, checkpointed and resumed = the in-RAM run, bit for bit: "
              + ", ".join(f"K={k}: {'yes' if v else 'NO'}" for k, v in exact.items()) + "."]
    if acc:
        f32, b16 = (statistics.fmean(a[d] for a in acc) for d in ("float32", "bf16"))
        lines += ["", f"bf16 residuals, digits with top-k 1 % + error feedback ({len(acc)} seed(s)): final accuracy "
                  f"{100 * b16:.1f} % against {100 * f32:.1f} % with float32 residuals ({100 * (b16 - f32):+.1f} "
                  f"points): " + ", ".join(f"seed {a['seed']} {100 * a['float32']:.1f} -> {100 * a['bf16']:.1f}"
                                           for a in acc) + "."]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    total, ks, rounds, digit_rounds, seeds = SIZES[args.size]
    args.out.mkdir(parents=True, exist_ok=True)
    rows, exact = [], {}
    for k in ks:
        got, exact[k] = scale(args, total, k, rounds)
        rows += got
    acc = bf16_accuracy(args, digit_rounds, seeds)
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
               "cpus": os.cpu_count(), "size": args.size, "clients": total, "budget_mb": args.budget_mb,
               "target_us_per_client": TARGET_US_PER_CLIENT, "rows": rows, "resume_exact": exact,
               "bf16_accuracy": acc}
    _jobs.publish(table(total, rows, exact, acc), results, args.json, args.readme, "clients")
    return 0 if all(exact.values()) else 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=sorted(SIZES), default="full", help="full (about 10 minutes), quick, tiny (smoke)")
    p.add_argument("--budget-mb", type=float, default=32.0, help="clients.state_memory_mb of the spilled jobs")
    p.add_argument("--state-dir", default="", help="clients.state_dir (default: under --out)")
    p.add_argument("--before", metavar="PYTHON", default="",
                   help="the interpreter of another fedhpc checkout to run the in-RAM jobs with too")
    _jobs.add_output_arguments(p, "clients")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
