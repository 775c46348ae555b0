"""Microbenchmark of the compression and aggregation kernels.

For each size, times every kernel (best of several runs after a warm-up) and
the baseline a user would otherwise write (torch ops, ``torch.topk``,
``numpy.argpartition``, ``zlib.crc32``), and measures the memory copy
bandwidth in the same run so that streaming kernels can be judged against the
machine's roof. Backs both ``benchmarks/kernels.py`` and ``fedhpc bench kernels``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from collections.abc import Callable

import numpy as np

from fedhpc import kernels as K
from fedhpc.compress import get_codec

DEFAULT_SIZES = (1 << 20, 1 << 24, 1 << 26)
KERNELS = (
    "fp16", "bf16", "int8", "int4", "dequant-int8", "topk", "topk-ef", "axpy",
    "sparse-axpy", "median", "trimmed-mean", "crc32c", "encode-topk", "encode-int8",
)
QBLOCK = 256
TOPK_RATIO = 0.01
ROBUST_K = 8  # updates stacked for median / trimmed mean


@dataclass
class Record:
    kernel: str
    n: int
    seconds: float
    gbps: float
    baseline: str
    baseline_seconds: float
    speedup: float
    copy_gbps: float
    roof_fraction: float  # gbps / copy_gbps
    threads: int
    copyto_gbps: float  # copy into a preallocated array


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _torch_quant(t, bits: int):
    import torch

    qmax = 127 if bits == 8 else 7
    blocks = t.view(-1, QBLOCK)
    scale = blocks.abs().amax(dim=1, keepdim=True) / qmax
    q = torch.round(blocks / scale.clamp_min(1e-30)).clamp_(-qmax, qmax).to(torch.int8)
    if bits == 4:
        u = (q + 8).to(torch.uint8).view(-1, 2)
        q = u[:, 0] | (u[:, 1] << 4)
    return q, scale


def cases(n: int, rng: np.random.Generator):
    """Yield (kernel, ours, baseline name, baseline, bytes moved by ours)."""
    import torch

    x = rng.standard_normal(n, dtype=np.float32)
    t = torch.from_numpy(x)
    k = max(1, int(n * TOPK_RATIO))
    codes, scales = K.quantize(x, 8, QBLOCK)
    acc = np.zeros(n, dtype=np.float32)
    tacc = torch.from_numpy(acc.copy())
    residual = np.zeros(n, dtype=np.float32)
    tres = torch.zeros(n)
    idx, vals = K.topk(x, k)
    tidx, tvals = torch.from_numpy(idx.astype(np.int64)), torch.from_numpy(vals)
    stack = x[: (n // ROBUST_K) * ROBUST_K].reshape(ROBUST_K, -1)
    tstack = torch.from_numpy(stack)
    raw = x.view(np.uint8)

    def torch_topk_ef():
        tres.add_(t)
        sel = torch.topk(tres.abs(), k, sorted=False).indices
        tres[sel] = 0

    yield "fp16", lambda: K.to_fp16(x), "torch .half()", lambda: t.half(), 6 * n
    yield "bf16", lambda: K.to_bf16(x), "torch .bfloat16()", lambda: t.bfloat16(), 6 * n
    yield "int8", lambda: K.quantize(x, 8, QBLOCK), "torch ops", lambda: _torch_quant(t, 8), 5 * n
    yield "int4", lambda: K.quantize(x, 4, QBLOCK), "torch ops", lambda: _torch_quant(t, 4), 4 * n + n // 2
    tq, tscale = _torch_quant(t, 8)
    yield ("dequant-int8", lambda: K.dequantize(codes, scales, n, 8, QBLOCK), "torch ops",
           lambda: (tq.float().view(-1, QBLOCK) * tscale).view(-1), 5 * n)
    yield "topk", lambda: K.topk(x, k), "torch.topk", lambda: torch.topk(t.abs(), k, sorted=False), 4 * n
    yield "topk", lambda: K.topk(x, k), "numpy.argpartition", lambda: np.argpartition(np.abs(x), n - k)[n - k:], 4 * n
    yield "topk-ef", lambda: K.topk_ef(x, residual, k), "torch add+topk", torch_topk_ef, 12 * n
    yield "axpy", lambda: K.axpy(acc, x, 0.5), "torch add_(alpha)", lambda: tacc.add_(t, alpha=0.5), 12 * n
    yield ("sparse-axpy", lambda: K.sparse_axpy(acc, idx, vals, 0.5), "torch index_add_",
           lambda: tacc.index_add_(0, tidx, tvals, alpha=0.5), 16 * k)
    yield "median", lambda: K.median(stack), "torch.median(dim=0)", lambda: tstack.median(dim=0), 4 * n + 4 * n // ROBUST_K
    yield ("trimmed-mean", lambda: K.trimmed_mean(stack, 1), "torch sort+mean",
           lambda: tstack.sort(dim=0).values[1:-1].mean(dim=0), 4 * n + 4 * n // ROBUST_K)
    yield "crc32c", lambda: K.crc32c(raw), "zlib.crc32", lambda: zlib.crc32(raw), 4 * n
    # a codec's whole encode, as a client step runs it: the kernel, its refusal of NaN/Inf,
    # the frame and its checksum
    topk_codec, int8_codec = get_codec("topk", ratio=TOPK_RATIO), get_codec("int8", block=QBLOCK)
    yield "encode-topk", lambda: topk_codec.encode(x), "torch.topk", lambda: torch.topk(t.abs(), k, sorted=False), 4 * n
    yield ("encode-topk", lambda: topk_codec.encode(x), "numpy.argpartition",
           lambda: np.argpartition(np.abs(x), n - k)[n - k:], 4 * n)
    yield "encode-int8", lambda: int8_codec.encode(x), "torch ops", lambda: _torch_quant(t, 8), 5 * n


def run(sizes, kernels, threads: int, repeats: int, progress=print) -> list[Record]:
    """Time every selected kernel at every size; return the records."""
    import torch

    K.set_num_threads(threads)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    records = []
    for n in sizes:
        src = rng.standard_normal(n, dtype=np.float32)
        dst = np.empty_like(src)
        # The roof: a copy into a new array, the same work pattern as a kernel that
        # returns a new array (first-touch page faults included); the copy into a
        # preallocated array is recorded beside it.
        copy_gbps = 8 * n / best_time(src.copy, repeats) / 1e9
        copyto_gbps = 8 * n / best_time(functools.partial(np.copyto, dst, src), repeats) / 1e9
        progress(f"n={n:,}: memory copy {copy_gbps:.2f} GB/s into a new array, {copyto_gbps:.2f} GB/s into an "
                 "existing one (read+write)")
        for name, ours, base_name, base, nbytes in cases(n, rng):
            if name not in kernels:
                continue
            s = best_time(ours, repeats)
            b = best_time(base, max(1, repeats // 2) if n >= 1 << 26 else repeats)
            gbps = nbytes / s / 1e9
            rec = Record(name, n, s, gbps, base_name, b, b / s, copy_gbps, gbps / copy_gbps, threads, copyto_gbps)
            records.append(rec)
            progress(f"  {name:<18} {s * 1e3:9.3f} ms {gbps:7.2f} GB/s  vs {base_name:<22} {b * 1e3:9.3f} ms  x{b / s:6.1f}")
    return records


def table(records: list[Record]) -> str:
    """Markdown table of the records."""
    lines = [
        "| kernel | n | ms | GB/s | of copy (new array) | of copy (existing array) | baseline | baseline ms | speedup |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r.kernel} | {r.n:,} | {r.seconds * 1e3:.2f} | {r.gbps:.2f} | {r.roof_fraction:.0%} "
            f"| {r.gbps / r.copyto_gbps:.0%} | {r.baseline} | {r.baseline_seconds * 1e3:.2f} | {r.speedup:.1f}x |"
        )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=lambda s: [int(float(v)) for v in s.split(",")], default=list(DEFAULT_SIZES),
                   help="comma-separated element counts (default: 1M,16M,64M as 1048576,...)")
    p.add_argument("--kernels", "--codecs", type=lambda s: s.split(","), default=list(KERNELS),
                   help=f"comma-separated kernels (default: all of {','.join(KERNELS)})")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="OpenMP and torch threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per kernel; the best is kept (default 5)")
    p.add_argument("--json", metavar="FILE", help="write the records as JSON to FILE")


def main(args: argparse.Namespace) -> int:
    unknown = sorted(set(args.kernels) - set(KERNELS))
    if unknown:
        print(f"error: unknown kernel(s) {', '.join(unknown)}; choose from {', '.join(KERNELS)}", file=sys.stderr)
        return 2
    if args.threads < 1 or args.repeats < 1 or any(n < 1024 for n in args.sizes):
        print("error: --threads and --repeats must be >= 1 and sizes >= 1024", file=sys.stderr)
        return 2
    records = run(args.sizes, set(args.kernels), args.threads, args.repeats)
    print()
    print(table(records))
    if args.json:
        meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                "threads": args.threads, "python": platform.python_version()}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "records": [asdict(r) for r in records]}, f, indent=1)
        print(f"\nwrote {args.json}")
    return 0
