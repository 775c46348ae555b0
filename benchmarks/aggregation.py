#!/usr/bin/env python
"""Aggregation memory and accuracy: rank 0's peak resident memory against clients per round
and model size, and the ring's error against a float64 reference.

* **Memory**: real ``fedhpc run`` jobs (3 ranks: rank 0 + 2 trainers), each in
  its own ``mpiexec`` so that every rank's peak RSS (``ru_maxrss``, recorded by
  ``_peak.py``) is that job's alone. MLP 64-W-W-10 on the embedded digits,
  100 clients of about 14 samples, one local epoch (cheap training), error
  feedback off, 2 rounds; W = 4096 (17M parameters, 68 MB) and 10000 (101M,
  403 MB); 5, 20 and 100 clients per round; codecs ``none`` and
  ``topk-int8``; the norm guard's relative bound off (see ``job``); the
  strategy fedavg folded on the hosting ranks
  (``aggregation.fold = "ranks"``, the default) and at rank 0 (``"rank0"``).
  Reported: rank 0's peak above the same job with a tiny model (W = 16), in
  MB and in model sizes; the target is at most 4 model sizes. With
  ``--before PYTHON`` (the interpreter of another fedhpc checkout, e.g. the
  commit before the ring) the same jobs run there too, where they fit in
  memory (``--max-before-gb``).
* **Accuracy**: the mean of K synthetic updates (coordinates from 1e-6 to
  1e-1, sample weights) in the ring and as the float32 sum the strategies
  used before, both against float64: max and RMS absolute error.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import _jobs

HERE = Path(__file__).resolve().parent
TARGET_MODEL_SIZES = 4.0
WIDTHS = {"tiny": 16, "17M": 4096, "100M": 10000}
SIZES = {  # --size: (model sizes, clients per round, rounds)
    "full": (["17M", "100M"], [5, 20, 100], 2),
    "quick": (["17M"], [5, 20], 2),
    "tiny": (["tiny"], [5], 1),
}


def params(width: int) -> int:
    return 64 * width + width + width * width + width + width * 10 + 10


def job(python: str, out: Path, width: int, per_round: int, codec: str, fold: str, rounds: int) -> dict:
    """Run one job under ``python``; return its per-rank peak RSS (bytes) and wall time."""
    sets = [f"model.hidden=[{width},{width}]", "clients.total=100", f"clients.per_round={per_round}",
            "local.epochs=1", "codec.error_feedback=false", f"codec.name={codec}", f"rounds={rounds}",
            "eval.max_samples=100", "tracking.tensorboard=false",
            # the first round's guard bound is its own median, so verdicts wait until about half the round
            # has arrived and the folding ranks hold those frames (dense with codec none): only the absolute bound
            "guard.norm_multiple=0"]
    if codec == "topk-int8":
        sets.append("codec.ratio=0.01")
    if fold:
        sets.append(f"aggregation.fold={fold}")
    peak = out / "peak"
    cmd = [_jobs.mpiexec(), "-n", "3", python, str(HERE / "_peak.py"), str(peak), "run", "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=dict(os.environ, **_jobs.LAUNCH_ENV), capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  FAILED ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}", flush=True)
        return {"failed": proc.returncode, "wall_s": time.perf_counter() - t0}
    return {"peak_rss": [int((peak / f"peak_rss.{r}").read_text()) for r in range(3)],
            "wall_s": time.perf_counter() - t0}


def memory(args, models, clients) -> list[dict]:
    rows = []
    variants = [("after", sys.executable, "ranks"), ("after", sys.executable, "rank0")]
    if args.before:
        variants.append(("before", args.before, ""))
    for codec in args.codecs:
        for k in clients:
            base = {}
            for version, python, fold in variants:
                base[(version, fold)] = job(python, args.out / f"{version}-{fold}-tiny-{codec}-{k}",
                                            WIDTHS["tiny"], k, codec, fold, args.rounds)
            for m in models:
                n = params(WIDTHS[m])
                for version, python, fold in variants:
                    if version == "before" and k * 4 * n > args.max_before_gb * 2**30:
                        print(f"  skip before {m} {codec} {k}: {k} dense updates of {4 * n / 1e6:.0f} MB do not fit",
                              flush=True)
                        continue
                    got = job(python, args.out / f"{version}-{fold}-{m}-{codec}-{k}", WIDTHS[m], k, codec, fold,
                              args.rounds)
                    if "failed" in got or "failed" in base[(version, fold)]:
                        continue
                    above = got["peak_rss"][0] - base[(version, fold)]["peak_rss"][0]
                    rows.append({"version": version, "fold": fold or "rank0 (held)", "model": m, "params": n,
                                 "codec": codec, "clients": k, "rank0_peak_rss": got["peak_rss"][0],
                                 "trainer_peak_rss": max(got["peak_rss"][1:]), "rank0_above_tiny": above,
                                 "model_sizes": above / (4 * n), "wall_s": got["wall_s"]})
                    print(f"  {version:6} {fold or '-':5} {m:4} {codec:9} {k:3} clients: rank 0 +{above / 1e6:7.0f} MB "
                          f"= {above / (4 * n):5.2f} model sizes; trainers {max(got['peak_rss'][1:]) / 1e9:.2f} GB; "
                          f"{got['wall_s']:.0f}s", flush=True)
    return rows


def accuracy(k: int = 100, n: int = 1_000_000, seed: int = 0) -> dict:
    """The ring's mean and the float32 sum against float64, for k updates of n values."""
    from fedhpc import kernels as K
    from fedhpc.ring import DEFAULT_SCALE_BITS, Accumulator, Ring

    rng = np.random.default_rng(seed)
    counts = rng.integers(10, 500, k).astype(np.float64)
    coefs = counts / 256.0  # as the runtime does: sample counts over a power of two near the mean shard
    acc = Accumulator(Ring(DEFAULT_SCALE_BITS, k), n)
    f32 = np.zeros(n, np.float32)
    want = np.zeros(n)
    for i in range(k):
        d = (rng.normal(0, 1, n) * 10.0 ** rng.uniform(-6, -1, n)).astype(np.float32)
        acc.fold(d, coefs[i])
        K.axpy(f32, d, float(coefs[i] / coefs.sum()))
        want += coefs[i] * d.astype(np.float64)
    want /= coefs.sum()
    ring_err, f32_err = np.abs(acc.mean(math.fsum(coefs)) - want), np.abs(f32 - want)
    return {"clients": k, "values": n, "scale_bits": DEFAULT_SCALE_BITS,
            "ring_max_abs_err": float(ring_err.max()), "ring_rms_err": float(np.sqrt(np.mean(ring_err**2))),
            "float32_max_abs_err": float(f32_err.max()), "float32_rms_err": float(np.sqrt(np.mean(f32_err**2)))}


def table(rows: list[dict], acc: dict) -> str:
    lines = ["| code | folded | model | codec | clients/round | rank 0 above tiny | model sizes | trainer peak |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['version']} | {r['fold']} | {r['model']} ({r['params'] / 1e6:.0f}M) | {r['codec']} | "
                     f"{r['clients']} | {r['rank0_above_tiny'] / 1e6:.0f} MB | {r['model_sizes']:.2f} | "
                     f"{r['trainer_peak_rss'] / 1e9:.2f} GB |")
    lines += ["", f"Accuracy of the mean of {acc['clients']} updates of {acc['values']:,} values against float64: "
              f"ring ({acc['scale_bits']} bits) max {acc['ring_max_abs_err']:.2e}, RMS {acc['ring_rms_err']:.2e}; "
              f"float32 sum max {acc['float32_max_abs_err']:.2e}, RMS {acc['float32_rms_err']:.2e}."]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    models, clients, rounds = SIZES[args.size]
    args.rounds = args.rounds or rounds
    args.out.mkdir(parents=True, exist_ok=True)
    acc = accuracy(n=10_000 if args.size == "tiny" else 1_000_000)
    rows = memory(args, models, clients)
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
               "cpus": os.cpu_count(), "size": args.size, "target_model_sizes": TARGET_MODEL_SIZES,
               "memory": rows, "accuracy": acc}
    _jobs.publish(table(rows, acc), results, args.json, args.readme, "aggregation")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=sorted(SIZES), default="full", help="full (about an hour), quick, tiny (smoke)")
    p.add_argument("--codecs", type=lambda s: s.split(","), default=["none", "topk-int8"])
    p.add_argument("--rounds", type=int, default=0, help="rounds per job (default: the size's)")
    p.add_argument("--before", metavar="PYTHON", default="",
                   help="the interpreter of another fedhpc checkout to run the same jobs with")
    p.add_argument("--max-before-gb", type=float, default=8.5,
                   help="skip a 'before' job whose dense updates alone would need more")
    _jobs.add_output_arguments(p, "aggregation")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
