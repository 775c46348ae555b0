#!/usr/bin/env python
"""Orchestration overhead of the fedhpc runtime, and its data plane against raw MPI and pickling.

Three measurements, all inside MPI jobs on this machine (wall clock):

* **Virtual clients**: real ``fedhpc run`` jobs (``run_job``) with 100, 1,000
  and 10,000 virtual clients, all selected every round, a tiny model (a
  32-16-10 MLP) and one SGD step per client; and one with 1,000 clients doing
  *realistic* local training: the issue's digits workload per client (72
  samples, 5 epochs, batch 16, MLP 64-128-10). Per round, overhead = round
  wall time - the slowest trainer rank's local training time, both as the
  runtime records them in ``metrics.jsonl`` (``round_seconds``,
  ``train_seconds``); the script also times the strategy's aggregation.
* **Model size**: the same for MLPs of about 1M, 10M and 100M parameters
  (32-W-W-10), one client per trainer rank, one SGD step each.
* **Data plane**: after each model-size job, in the same MPI launch, a
  round's traffic four ways, for the same bytes: (a) fedhpc's own code path
  (``bcast_array`` of the model, then per trainer ``codec.encode`` +
  ``seal_update`` + ``isend_chunked`` and on rank 0 ``Iprobe`` +
  ``recv_update`` + ``unpack_update`` + ``codec.decode``, with codec ``none``);
  (b) raw mpi4py buffers: ``Bcast`` of the float32 model and ``Gatherv`` of one
  float32 update per trainer into buffers allocated once; (c) the same into
  newly allocated buffers each time, which separates the cost of fresh memory
  (page faults) from the framework's own work; (d) pickling, as frameworks
  that send Python objects over MPI do: ``bcast`` of the model's
  ``state_dict`` and ``gather`` of one ``state_dict`` per trainer. Median of the
  repeats after a warm-up; the slowest rank's time from a barrier to rank 0
  having every update as a float32 array. And (e) the path of a
  sum-decomposable strategy: each trainer encodes and folds its update into
  its int64 ring sum (``Folder.take``), sends rank 0 its account, the sums
  are reduce-scattered over the trainers and the float32 mean gathered at
  rank 0 (``reduce_mean``, ``gather_mean``), as in a job.

Targets (issue 8): data plane within 1.25x of raw buffers; overhead with
1,000 clients and realistic training under 5% of the round.

The machine's cores are shared by all ranks (3 ranks on 2 cores by default),
so rank 0's work competes with the trainers for CPU, and every number is
noisy when other jobs run on the machine.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import _jobs

TARGET_DATAPLANE_RATIO = 1.25
TARGET_OVERHEAD_FRACTION = 0.05

# MLP 32-W-W-10 has W^2 + 44 W + 10 parameters
WIDTHS = {"1M": 978, "10M": 3141, "100M": 9978}


@dataclass
class Size:
    clients: list[int]  # virtual clients with the tiny model
    client_rounds: int
    realistic_clients: int
    realistic_rounds: int
    models: list[str]  # keys of WIDTHS
    model_rounds: int
    repeats: int  # data-plane repeats after the warm-up


SIZES = {
    "full": Size(clients=[100, 1000, 10000], client_rounds=5, realistic_clients=1000, realistic_rounds=4,
                 models=["1M", "10M", "100M"], model_rounds=4, repeats=5),
    "quick": Size(clients=[100, 1000], client_rounds=4, realistic_clients=1000, realistic_rounds=3,
                  models=["1M", "10M"], model_rounds=3, repeats=3),
    "tiny": Size(clients=[100], client_rounds=3, realistic_clients=50, realistic_rounds=3, models=["1M"],
                 model_rounds=3, repeats=1),
}


def width_params(w: int) -> int:
    """Parameters of the MLP 32-w-w-10."""
    return w * w + 44 * w + 10


def cases(size: Size) -> list[dict]:
    """The run_job cases: (name, kind, --set overrides)."""
    out = []
    for n in size.clients:
        per = 16
        out.append({"name": f"clients{n}", "kind": "clients", "clients": n, "sets": {
            "rounds": size.client_rounds, "clients.total": n, "clients.per_round": n,
            "data.name": "synthetic", "data.partition": "iid", "data.synthetic.shape": [32],
            "data.synthetic.samples": n * per * 5 // 4, "model.name": "mlp", "model.hidden": [16],
            "local.epochs": 1, "local.batch_size": per, "eval.every": size.client_rounds}})
    n = size.realistic_clients
    out.append({"name": f"realistic{n}", "kind": "clients", "clients": n, "sets": {
        "rounds": size.realistic_rounds, "clients.total": n, "clients.per_round": n,
        "data.name": "synthetic", "data.partition": "iid", "data.synthetic.shape": [64],
        "data.synthetic.samples": n * 72 * 5 // 4, "model.name": "mlp", "model.hidden": [128],
        "local.epochs": 5, "local.batch_size": 16, "local.lr": 0.05, "eval.every": size.realistic_rounds}})
    for m in size.models:
        w = WIDTHS[m]
        out.append({"name": f"model{m}", "kind": "model", "params": width_params(w), "clients": 2, "sets": {
            "rounds": size.model_rounds, "clients.total": 2, "clients.per_round": 2,
            "data.name": "synthetic", "data.partition": "iid", "data.synthetic.shape": [32],
            "data.synthetic.samples": 80, "model.name": "mlp", "model.hidden": [w, w],
            "local.epochs": 1, "local.batch_size": 32, "local.lr": 0.01, "eval.every": size.model_rounds}})
    return out


# -- worker side (under MPI) ------------------------------------------------
def _time_aggregation(timers: dict[int, float]) -> None:
    """Wrap every strategy the orchestrator builds so that its aggregate is timed into ``timers``."""
    from fedhpc.runtime import orchestrator

    get_strategy = orchestrator.get_strategy

    def timed_strategy(*a, **k):
        strategy = get_strategy(*a, **k)
        aggregate = strategy.aggregate

        def timed_aggregate(weights, outcome):
            t0 = time.perf_counter()
            try:
                return aggregate(weights, outcome)
            finally:
                timers[outcome.round] = time.perf_counter() - t0
        strategy.aggregate = timed_aggregate
        return strategy

    orchestrator.get_strategy = timed_strategy
    fold_round = orchestrator.Orchestrator.fold_round

    def timed_fold_round(self, r, outcome):  # a sum-decomposable strategy: the reduction and the step
        t0 = time.perf_counter()
        try:
            return fold_round(self, r, outcome)
        finally:
            timers[r] = time.perf_counter() - t0

    orchestrator.Orchestrator.fold_round = timed_fold_round


def run_case(comm, case: dict, out: Path) -> dict | None:
    """One run_job; on rank 0 the per-round breakdown from its metrics.jsonl
    (``train_seconds``: the slowest trainer rank's time in local training)."""
    from paper import toml_value
    from fedhpc.config import load_config
    from fedhpc.runtime.job import run_job

    aggregate: dict[int, float] = {}
    _time_aggregation(aggregate)
    cfg = load_config(None, [f"{k}={toml_value(v)}" for k, v in case["sets"].items()])
    t0 = time.perf_counter()
    if run_job(cfg, out / case["name"], comm=comm) != 0:
        raise RuntimeError(f"case {case['name']} failed")
    job_s = time.perf_counter() - t0
    if comm.rank != 0:
        return None
    metrics = [json.loads(line) for line in (out / case["name"] / "metrics.jsonl").read_text().splitlines()]
    rounds = [{"round": m["round"], "round_s": m["round_seconds"], "training_s": m["train_seconds"],
               "aggregate_s": aggregate.get(m["round"] - 1, 0.0), "overhead_s": m["overhead_seconds"],
               "evaluated": m["accuracy"] is not None} for m in metrics]
    # the first round warms up caches and allocators and the last one evaluates: neither is a typical round
    steady = [r for r in rounds[1:] if not r["evaluated"]] or rounds
    mean = {k: statistics.fmean(r[k] for r in steady) for k in ("round_s", "training_s", "aggregate_s", "overhead_s")}
    params = np.load(out / case["name"] / "final_weights.npy", mmap_mode="r").size
    return {"name": case["name"], "kind": case["kind"], "clients": case["clients"], "params": int(params),
            "job_s": job_s, "rounds": rounds, "steady_rounds": [r["round"] for r in steady], **mean,
            "overhead_fraction": mean["overhead_s"] / mean["round_s"],
            "overhead_per_client_ms": 1e3 * mean["overhead_s"] / case["clients"]}


def dataplane(comm, params: int, repeats: int) -> dict | None:
    """Seconds (median over ``repeats`` after a warm-up) to move a model down and one update per trainer up:
    fedhpc's code path, raw mpi4py buffers, and pickled state_dicts. On rank 0 only."""
    import torch
    from mpi4py import MPI

    from fedhpc.compress import get_codec
    from fedhpc.config import load_config
    from fedhpc.runtime.fold import Folder
    from fedhpc.runtime.transport import (
        Tag, bcast_array, gather_mean, hosts_comm, isend_chunked, recv_object, recv_update, reduce_mean,
    )
    from fedhpc.strategy import get_strategy
    from fedhpc.update import HEADER, BufferPool, Status, UpdateHeader, seal_update, unpack_update

    rank, trainers = comm.rank, comm.size - 1
    codec = get_codec("none")
    rng = np.random.default_rng(rank)
    weights = rng.standard_normal(params, dtype=np.float32) if rank == 0 else np.empty(params, np.float32)
    delta = rng.standard_normal(params, dtype=np.float32) if rank else np.empty(0, np.float32)
    max_bytes = 64 + 2 * 4 * params + (1 << 20)

    stage = {"encode_s": 0.0, "decode_s": 0.0}  # this rank's share of the fedhpc path's time
    pool = BufferPool()  # as the runtime keeps one per rank, reclaimed after every round

    def fedhpc_path():
        bcast_array(comm, weights, 600, "the model")
        if rank:
            t0 = time.perf_counter()
            head = UpdateHeader(Status.OK, 1, 0, rank, 1, 0.0, 0.0, 0.0, 0)
            buf = seal_update(head, codec.encode(delta, headroom=HEADER.size, alloc=pool.take))
            stage["encode_s"] = time.perf_counter() - t0
            MPI.Request.Waitall(isend_chunked(comm, buf, 0, Tag.UPDATE))
            pool.reclaim()
            return
        got, status = 0, MPI.Status()
        stage["decode_s"] = 0.0
        while got < trainers:
            # the orchestrator's receive loop: probe, receive, validate, decode; nap when nothing is there
            if comm.Iprobe(source=MPI.ANY_SOURCE, tag=Tag.UPDATE, status=status):
                buf = recv_update(comm, status, max_bytes, 600.0, pool)
                t0 = time.perf_counter()
                codec.decode(unpack_update(buf)[1], expected_n=params)
                stage["decode_s"] += time.perf_counter() - t0
                got += 1
            else:
                time.sleep(0.0002)
        pool.reclaim()

    hosts = hosts_comm(comm, 600)
    folder = Folder(load_config(None, [f"clients.per_round={trainers}"]), get_strategy("fedavg"), params, 1,
                    lambda cid: codec, None, 1.0)

    def fold_path():
        # what a round of a sum-decomposable strategy moves: the model down, each trainer's update
        # folded where it is (its account to rank 0), the int64 sums reduce-scattered, the mean gathered
        bcast_array(comm, weights, 600, "the model")
        if rank:
            t0 = time.perf_counter()
            folder.begin(0, [rank])
            head = UpdateHeader(Status.OK, 1, 0, rank, 1, 0.0, 0.0, 0.0, 0)
            comm.send(folder.take(seal_update(head, codec.encode(delta, headroom=HEADER.size, alloc=pool.take))),
                      dest=0, tag=Tag.FOLDED)
            stage["encode_s"] = time.perf_counter() - t0
            reduce_mean(comm, hosts, folder.acc, float(trainers), 600, "the mean")
            pool.reclaim()
            return
        for src in range(1, comm.size):
            recv_object(comm, src, Tag.FOLDED, 600, "an account")
        gather_mean(comm, params, 600, "the mean")

    counts = [0] + [params] * trainers
    recv = np.empty(params * trainers, np.float32) if rank == 0 else None

    displs = [0] + [params * i for i in range(trainers)]

    def raw_path():
        comm.Bcast(weights, root=0)
        comm.Gatherv(delta, [recv, counts, displs, MPI.FLOAT] if rank == 0 else None, root=0)

    def raw_fresh_path():
        # the same, receiving into newly allocated buffers as a runtime must for messages it did not
        # expect: on this machine first-touch page faults of fresh memory cost up to 20x a copy
        comm.Bcast(weights if rank == 0 else np.empty(params, np.float32), root=0)
        comm.Gatherv(delta, [np.empty(params * trainers, np.float32), counts, displs, MPI.FLOAT] if rank == 0
                     else None, root=0)

    names = [f"layer{i}" for i in range(4)]  # a state_dict of a few tensors, as a model would have

    def as_state(flat):
        return dict(zip(names, (torch.from_numpy(part) for part in np.array_split(flat, len(names)))))

    state_w = as_state(weights) if rank == 0 else None
    state_d = as_state(delta) if rank else None

    def pickle_path():
        comm.bcast(state_w, root=0)
        comm.gather(state_d, root=0)

    out = {"params": params, "bytes": 4 * params}
    for name, fn in (("fedhpc", fedhpc_path), ("fold", fold_path), ("raw", raw_path), ("raw_fresh", raw_fresh_path),
                     ("pickle", pickle_path)):
        times, encode, decode = [], [], []
        for i in range(repeats + 1):
            comm.Barrier()
            t0 = time.perf_counter()
            fn()
            elapsed = comm.reduce(time.perf_counter() - t0, op=MPI.MAX, root=0)
            stages = comm.reduce(stage["encode_s"], op=MPI.MAX, root=0), stage["decode_s"]
            if i and rank == 0:
                times.append(elapsed)
                encode.append(stages[0])
                decode.append(stages[1])
            gc.collect()
        if rank == 0:
            out[f"{name}_s"] = statistics.median(times)
            out[f"{name}_all_s"] = times
            if name == "fedhpc":
                # where the time beyond the transfer goes: the slowest trainer's encode + pack, rank 0's checks + decode
                out["fedhpc_encode_s"], out["fedhpc_decode_s"] = statistics.median(encode), statistics.median(decode)
            if name == "fold":
                out["fold_encode_s"] = statistics.median(encode)  # the slowest trainer's encode + fold
    if hosts is not None:
        hosts.Free()
    if rank != 0:
        return None
    out["fold_vs_raw"] = out["fold_s"] / out["raw_s"]
    out["fedhpc_vs_raw"] = out["fedhpc_s"] / out["raw_s"]
    # what is left without encoding (copy into the frame, checksum, finiteness) and checking/decoding
    out["transport_vs_raw"] = (out["fedhpc_s"] - out["fedhpc_encode_s"] - out["fedhpc_decode_s"]) / out["raw_s"]
    out["pickle_vs_raw"] = out["pickle_s"] / out["raw_s"]
    out["raw_fresh_vs_raw"] = out["raw_fresh_s"] / out["raw_s"]
    out["raw_gbps"] = (1 + trainers) * 4 * params / out["raw_s"] / 1e9
    return out


def _worker(plan_path: Path) -> int:
    from mpi4py import MPI

    from fedhpc.runtime.job import main_guarded

    comm = MPI.COMM_WORLD
    plan = json.loads(plan_path.read_text())
    out = Path(plan["out"])
    results = {"cases": [], "dataplane": []}

    def go():
        for case in plan["cases"]:
            t0 = time.perf_counter()
            r = run_case(comm, case, out)
            gc.collect()
            if case["kind"] == "model":
                d = dataplane(comm, case["params"], plan["repeats"])
                if comm.rank == 0:
                    results["dataplane"].append(d)
                gc.collect()
            if comm.rank == 0:
                results["cases"].append(r)
                print(f"  {case['name']}: {time.perf_counter() - t0:.1f}s", flush=True)
        if comm.rank == 0:
            Path(plan["result"]).write_text(json.dumps(results))
        return 0

    return main_guarded(go)


# -- driver -----------------------------------------------------------------
def markdown(res: dict, meta: dict) -> str:
    """The README section: overhead per case, then the data plane, then the targets."""
    out = [f"Measured by `{meta['command']}` (size `{meta['size']}`) on {meta['date']}, {meta['cpus']} cores, "
           f"{meta['ranks']} MPI ranks (rank 0 + {meta['ranks'] - 1} trainers); means over the steady rounds "
           f"(not the first, not the evaluating last).", "",
           "| case | clients | parameters | round s | slowest rank's training s | overhead s | overhead % of round | "
           "per client ms | of which aggregation s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in res["cases"]:
        out.append(f"| {c['name']} | {c['clients']:,} | {c['params']:,} | {c['round_s']:.3f} | {c['training_s']:.3f} | "
                   f"{c['overhead_s']:.3f} | {c['overhead_fraction']:.1%} | {c['overhead_per_client_ms']:.3f} | "
                   f"{c['aggregate_s']:.3f} |")
    out += ["", "Data plane, one model down to every trainer and one update from each back, same bytes "
            "(median over the repeats of the slowest rank's seconds; encode = the slowest trainer's `codec.encode` + `seal_update`, decode = "
            "rank 0's `unpack_update` + `codec.decode`, both inside the fedhpc time). \"fedhpc\" is the path of the "
            "strategies that get every update at rank 0; \"folded and reduced\" the default one of the "
            "sum-decomposable strategies (each trainer folds its update into its int64 ring sum, the sums "
            "are reduce-scattered and the float32 mean gathered at rank 0, 3x the bytes of the raw Gatherv):", "",
            "| parameters | MB per copy | fedhpc s | of which encode s | of which decode s | raw Bcast + Gatherv s | "
            "fedhpc / raw | without encode and decode / raw | raw into fresh buffers / raw | pickled state_dict s | "
            "pickle / raw | raw GB/s | folded and reduced s | of which encode + fold s | folded / raw |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for d in res["dataplane"]:
        out.append(f"| {d['params']:,} | {d['bytes'] / 1e6:.0f} | {d['fedhpc_s']:.4f} | {d['fedhpc_encode_s']:.4f} | "
                   f"{d['fedhpc_decode_s']:.4f} | {d['raw_s']:.4f} | {d['fedhpc_vs_raw']:.2f}x | "
                   f"{d['transport_vs_raw']:.2f}x | "
                   f"{d['raw_fresh_vs_raw']:.2f}x | {d['pickle_s']:.4f} | "
                   f"{d['pickle_vs_raw']:.2f}x | {d['raw_gbps']:.2f} | {d['fold_s']:.4f} | {d['fold_encode_s']:.4f} | "
                   f"{d['fold_vs_raw']:.2f}x |")
    t = res["targets"]
    out += ["", f"Targets: data plane (folded and reduced) within {TARGET_DATAPLANE_RATIO}x of raw buffers: "
            + ("met" if t["dataplane_met"] else "missed") + f" (worst {t['dataplane_worst_ratio']:.2f}x); "
            f"overhead with {t['realistic_clients']:,} clients and realistic training under "
            f"{TARGET_OVERHEAD_FRACTION:.0%} of the round: " + ("met" if t["overhead_met"] else "missed")
            + f" ({t['realistic_overhead_fraction']:.1%})."]
    return "\n".join(out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=sorted(SIZES), default="full",
                   help="full (100/1,000/10,000 clients, 1M/10M/100M parameters; 3-5 minutes on 2 cores), quick or tiny "
                        "(the smoke test)")
    p.add_argument("--ranks", type=int, default=3, help="MPI ranks: rank 0 + trainers (default 3, for 2 cores)")
    p.add_argument("--out", type=Path, default=Path("runs/bench-overhead"), help="where the runs go")
    p.add_argument("--json", metavar="FILE", type=_jobs.optional_path,
                   help="write the results as JSON to FILE ('' = not)")
    p.add_argument("--readme", metavar="FILE", type=_jobs.optional_path,
                   help="replace the text between <!-- overhead:begin --> and <!-- overhead:end --> in FILE "
                        "('' = not)")


def main(args: argparse.Namespace) -> int:
    if args.ranks < 2:
        print("error: --ranks must be >= 2", file=sys.stderr)
        return 2
    size = SIZES[args.size]
    out = args.out.resolve() / args.size
    out.mkdir(parents=True, exist_ok=True)
    plan = {"out": str(out), "result": str(out / "result.json"), "repeats": size.repeats, "cases": cases(size)}
    (out / "plan.json").write_text(json.dumps(plan, indent=1))
    t0 = time.perf_counter()
    print(f"{len(plan['cases'])} cases ({args.size}) in one MPI launch of {args.ranks} ranks; runs in {out}")
    _jobs.launch(Path(__file__), ["--worker", str(out / "plan.json")], args.ranks)
    res = json.loads((out / "result.json").read_text())
    realistic = next(c for c in res["cases"] if c["name"].startswith("realistic"))
    worst = max(d["fold_vs_raw"] for d in res["dataplane"])  # the default path of a sum-decomposable strategy
    res["targets"] = {"dataplane_worst_ratio": worst, "dataplane_met": worst <= TARGET_DATAPLANE_RATIO,
                      "realistic_clients": realistic["clients"],
                      "realistic_overhead_fraction": realistic["overhead_fraction"],
                      "overhead_met": realistic["overhead_fraction"] < TARGET_OVERHEAD_FRACTION}
    meta = {"size": args.size, "date": datetime.date.today().isoformat(), "cpus": os.cpu_count(), "ranks": args.ranks,
            "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "minutes": (time.perf_counter() - t0) / 60, "size_settings": asdict(size),
            "command": "make bench-overhead" if args.size == "full"
            else f"python benchmarks/overhead.py --size {args.size}"}
    _jobs.publish(markdown(res, meta), {"meta": meta, **res}, args.json, args.readme, "overhead")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker(Path(sys.argv[2])))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(json=Path("benchmarks/results/overhead.json"), readme=Path("benchmarks/README.md"))
    sys.exit(main(parser.parse_args()))
