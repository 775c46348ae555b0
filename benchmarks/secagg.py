#!/usr/bin/env python
"""Secure aggregation: what it adds to a round, per client and at the server, at 10, 100 and
1,000 clients a round, on the complete graph (SecAgg) and on SecAgg+'s sparse graph, next to
the plain round.

**The protocol alone**, in-process, with the objects the runtime uses
(``fedhpc.secagg``): one round per configuration, every client for real (keys,
sealed shares for its neighbours, its masked input, its reveals), an update of
``--values`` model values (default 10,000), 5 % of the clients dropping after
sharing (so the server also recovers their mask keys and removes their pairwise
masks), threshold 0.5; SecAgg+'s degree is 2 * ceil(log2 N). The unmasked sum is
checked against the plain sum, bit for bit. Reported per client: seconds at each
step and the control bytes up and down (pickled, as mpi4py sends them; gRPC's
protobuf is within a few bytes); at the server: routing and unmasking seconds and
the round's control bytes. The plain round is what a client and a folder do
without secure aggregation: encode with int8 and fold into the ring. A masked
input is 8 bytes a value whatever the codec (it is uniform over the ring).

**In a job**: two real ``fedhpc run`` jobs (3 ranks, the embedded digits, 100
clients, 20 a round, 5 rounds), with and without ``secagg.enabled``: the mean
round seconds, and rank 0's seconds in the protocol's steps.

Peak resident memory of this process is reported too.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import pickle
import platform
import resource
import statistics
import time

import numpy as np

import _jobs
from fedhpc.compress import get_codec
from fedhpc.ring import Accumulator, Ring
from fedhpc.secagg import SecAggClient, SecAggServer
from fedhpc.secagg import frame as masked_frame

SIZES = {"full": [10, 100, 1000], "quick": [10, 100], "tiny": [10]}
DROPOUT = 0.05
THRESHOLD = 0.5
JOB_ROUNDS = 5


def wire(obj) -> int:
    return len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def protocol_round(n_clients: int, degree: int, values: int, seed: int = 0) -> dict:
    """One round of the protocol among ``n_clients``; its costs."""
    rng = np.random.default_rng(seed)
    ids = list(range(n_clients))
    ring = Ring(40, n_clients)
    updates = {c: rng.normal(0, 0.01, values).astype(np.float32) for c in ids}
    dropped = set(rng.choice(n_clients, max(1, round(DROPOUT * n_clients)), replace=False).tolist())
    t: dict[str, list[float]] = {"keys": [], "share": [], "mask": [], "reveal": []}
    up: dict[str, list[int]] = {"keys": [], "share": [], "masked": [], "reveal": []}
    down: dict[str, list[int]] = {"neighbours": [], "routed": []}

    clients = {}
    for c in ids:
        t0 = time.perf_counter()
        clients[c] = SecAggClient(1, c)
        keys = clients[c].keys()
        t["keys"].append(time.perf_counter() - t0)
        up["keys"].append(wire(keys))
    t0 = time.perf_counter()
    server = SecAggServer(1, [clients[c].keys() for c in ids], degree, THRESHOLD, seed=seed)
    server_s = time.perf_counter() - t0
    sealed = []
    for c in ids:
        nb = server.neighbour_keys(c)
        down["neighbours"].append(wire(nb))
        t0 = time.perf_counter()
        mine = clients[c].share(nb, server.threshold)
        t["share"].append(time.perf_counter() - t0)
        up["share"].append(wire(mine))
        sealed += mine
    t0 = time.perf_counter()
    inbox = server.route(sealed)
    route_s = time.perf_counter() - t0
    for c in ids:
        down["routed"].append(wire((inbox.get(c, []), server.sharers)))
        clients[c].receive(inbox.get(c, []), server.sharers)
    survivors = [c for c in ids if c not in dropped]
    total = Accumulator(ring, values)
    plain = Accumulator(ring, values)
    for c in survivors:
        t0 = time.perf_counter()
        vec = np.empty(values, np.int64)
        Accumulator(ring, values, out=vec).fold(updates[c], 1.0)
        clients[c].mask(vec)
        t["mask"].append(time.perf_counter() - t0)
        up["masked"].append(masked_frame.frame_bytes(values))
        total.add(vec)
        plain.fold(updates[c], 1.0)
    reveals = []
    for c in survivors:
        t0 = time.perf_counter()
        mine = clients[c].reveal(survivors, server.sharers - set(survivors))
        t["reveal"].append(time.perf_counter() - t0)
        up["reveal"].append(wire(mine))
        reveals += mine
    acc = total.acc.copy()
    t0 = time.perf_counter()
    server.unmask(acc, survivors, reveals)
    unmask_s = time.perf_counter() - t0
    assert np.array_equal(acc, plain.acc), "the unmasked sum is not the plain sum"
    mean = {k: statistics.fmean(v) for k, v in t.items()}
    return {"clients": n_clients, "degree": len(server.graph[0]), "threshold": server.threshold,
            "dropped": len(dropped), "values": values,
            "client_s": mean, "client_total_s": sum(mean.values()),
            "up_bytes": {k: statistics.fmean(v) for k, v in up.items()},
            "down_bytes": {k: statistics.fmean(v) for k, v in down.items()},
            "server_s": {"setup": server_s, "route": route_s, "unmask": unmask_s},
            "round_control_bytes": sum(sum(v) for k, v in up.items() if k != "masked") + sum(map(sum, down.values()))}


def plain_round(n_clients: int, values: int) -> dict:
    """A client's int8 encode and a folder's fold of it, without secure aggregation."""
    codec = get_codec("int8")
    rng = np.random.default_rng(1)
    acc = Accumulator(Ring(40, n_clients), values)
    delta = rng.normal(0, 0.01, values).astype(np.float32)
    reps = 50
    t0 = time.perf_counter()
    for _ in range(reps):
        buf = codec.encode(delta, None)
    encode_s = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        part = codec.decode_parts(memoryview(buf), values)
        acc.fold(part.vals, 1.0, part.idx)
    fold_s = (time.perf_counter() - t0) / reps
    return {"encode_s": encode_s, "fold_s": fold_s, "int8_bytes": buf.nbytes, "none_bytes": 4 * values}


def main(args: argparse.Namespace) -> int:
    rows = []
    for n in SIZES[args.size]:
        for graph, degree in (("complete", 0), ("SecAgg+", 2 * math.ceil(math.log2(n)))):
            t0 = time.perf_counter()
            row = protocol_round(n, degree, args.values) | {"graph": graph}
            rows.append(row)
            print(f"  {n:5} clients, {graph:8} (degree {row['degree']}): client {row['client_total_s']:.4f} s, "
                  f"server unmask {row['server_s']['unmask']:.3f} s ({time.perf_counter() - t0:.0f} s)", flush=True)
    plain = plain_round(100, args.values)
    base = ["clients.total=100", "clients.per_round=20", f"rounds={JOB_ROUNDS}", "local.epochs=1",
            "guard.norm_multiple=0", "tracking.tensorboard=false", "eval.every=5"]
    jobs = [{"out": str(args.out / name), "sets": base + extra}
            for name, extra in (("plain", []), ("secagg", ["secagg.enabled=true"]))]
    _jobs.run_plan(jobs, args.out / "plan.json", 3, reuse=args.reuse)
    job = {}
    for name in ("plain", "secagg"):
        metrics, _ = _jobs.read_run(args.out / name)
        job[name] = {"round_s": statistics.fmean(m["round_seconds"] for m in metrics[1:]),
                     "secagg_s": statistics.fmean((m["secagg_seconds"] or 0.0) for m in metrics[1:]),
                     "bytes_up": statistics.fmean(m["bytes_up"] for m in metrics),
                     "secagg_bytes": statistics.fmean(m["secagg_bytes"] for m in metrics),
                     "accuracy": metrics[-1]["accuracy"]}
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
               "cpus": os.cpu_count(), "size": args.size, "values": args.values, "dropout": DROPOUT,
               "threshold": THRESHOLD, "rows": rows, "plain": plain, "job": job,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    _jobs.publish(table(results), results, args.json, args.readme, "secagg")
    return 0


def table(res: dict) -> str:
    p, n = res["plain"], res["values"]
    lines = [f"One round, {n:,} values an update, {100 * res['dropout']:.0f} % of the clients dropping after "
             f"sharing, threshold {res['threshold']}; seconds per client are means over the round's clients.", "",
             "| clients | graph | degree | client s: keys / share / mask / reveal | client KB up (ctrl + masked) | "
             "client KB down | server s: route / unmask | round control MB |",
             "|---:|---|---:|---|---:|---:|---|---:|"]
    for r in res["rows"]:
        c, u, d, s = r["client_s"], r["up_bytes"], r["down_bytes"], r["server_s"]
        ctrl = u["keys"] + u["share"] + u["reveal"]
        lines.append(f"| {r['clients']:,} | {r['graph']} | {r['degree']} | {c['keys']:.4f} / {c['share']:.4f} / "
                     f"{c['mask']:.4f} / {c['reveal']:.4f} | {ctrl / 1e3:.1f} + {u['masked'] / 1e3:.1f} | "
                     f"{(d['neighbours'] + d['routed']) / 1e3:.1f} | {s['route']:.3f} / {s['unmask']:.3f} | "
                     f"{r['round_control_bytes'] / 1e6:.2f} |")
    j = res["job"]
    lines += ["", f"The plain round, per client: int8 encode {1e3 * p['encode_s']:.3f} ms and fold "
              f"{1e3 * p['fold_s']:.3f} ms, {p['int8_bytes'] / 1e3:.1f} KB up ({p['none_bytes'] / 1e3:.1f} KB "
              f"uncompressed) against the masked input's {8 * n / 1e3:.1f} KB.", "",
              f"In a job (3 ranks, digits, 20 clients a round): round {j['plain']['round_s']:.3f} s without and "
              f"{j['secagg']['round_s']:.3f} s with secure aggregation, of which rank 0's protocol steps "
              f"{j['secagg']['secagg_s']:.3f} s; {j['plain']['bytes_up'] / 1e3:.0f} KB against "
              f"{j['secagg']['bytes_up'] / 1e3:.0f} KB of updates a round, plus {j['secagg']['secagg_bytes'] / 1e3:.0f} "
              f"KB of protocol messages; final accuracy {j['plain']['accuracy']:.4f} and "
              f"{j['secagg']['accuracy']:.4f} (the same model).", "",
              f"Peak resident memory of the in-process benchmark: {res['peak_rss_mb']:.0f} MB."]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=sorted(SIZES), default="full",
                   help="full (10, 100 and 1,000 clients: about 10 minutes), quick (10, 100), tiny (10)")
    p.add_argument("--values", type=int, default=10_000, help="values in an update (default 10,000)")
    p.add_argument("--reuse", action="store_true", help="keep the jobs an interrupted run finished")
    _jobs.add_output_arguments(p, "secagg")


if __name__ == "__main__":
    _jobs.script(__doc__, add_arguments, main)
