"""Flower's side of the peer comparison: fedhpc's digits workload in a Flower simulation (Ray backend), timed.

The workload is fedhpc's: the client data is read from the .npz that
``export_partition.py`` writes (fedhpc's own split: 20 clients holding exactly
2 digit classes each), the model is an MLP 64-128-10, every client trains 5
local epochs of SGD (lr 0.05, no momentum, batch 16, reshuffled each epoch)
with one torch thread, the server averages the updates weighted by sample
counts (FedAvg, every client every round) and evaluates the global model on
the held-out test split after each round (centralised, server-side).

Flower runs it with its Message API (``ClientApp``, ``ServerApp``, the
``flwr.serverapp.strategy.FedAvg`` strategy) on the simulation runtime with
the Ray backend: 2 CPUs in all and 1 per client, so two clients train at a
time, each in one Ray worker process. ``flwr.simulation.run_simulation`` is
the Python entry point to that runtime: flwr 1.41 marks it deprecated in
favour of ``flwr run``, which runs the same ``_run_simulation`` in a process
behind a detached local SuperLink daemon; this measures that engine in one
process, without the daemon.
Flower's telemetry is switched off (``FLWR_TELEMETRY_ENABLED=0`` unless
set): it posts events to Flower's servers, which a benchmark machine may not
reach, and it is no part of the work being compared.

What it writes to ``--out`` (JSON), all times in seconds:

* ``total_s``: from the first line of this file to the end of the
  simulation (the caller's process wall time adds interpreter start-up and
  Ray's shutdown at exit); ``imports_s``: the first line to the end of the
  imports;
* ``startup_s``: the first line to the moment the first client starts
  training, of which ``ray_startup_s`` is spent after ``run_simulation`` is
  called (Ray start-up, the actor pool, the first ClientApp call);
* per round: ``round_s``, from the start of the strategy's
  ``configure_train`` to the end of that round's aggregation and server-side
  evaluation (round 1 also waits for Ray to come up, see ``ray_startup_s``),
  and when that was (``start_s``, ``end_s``, from the first line);
  ``fits``, each client's time inside its local training loop (``train_s``)
  with the pid of the Ray worker that ran it and when it started (reported
  back in the fit metrics);
  ``slowest_worker_train_s``, the largest sum of fit times of one pid;
  ``overhead_s`` = ``round_s`` - ``slowest_worker_train_s``; ``accuracy``;
* ``summary``: means over all rounds and over rounds 2.. (round 1 holds the
  wait for Ray), the last round's accuracy; the flwr, ray and torch versions.

Run it with the venv of ``setup_flower.sh``::

    benchmarks/peers/.venv-flower/bin/python benchmarks/peers/flower_digits.py \\
        --npz runs/peers/digits-classes2.npz --rounds 30 --out runs/peers/flower.json
"""

import time

T0 = time.time()

import os  # noqa: E402  (the imports are part of what is timed)

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import flwr  # noqa: E402
import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402
from torch import nn  # noqa: E402

T_IMPORTED = time.time()

LR, EPOCHS, BATCH = 0.05, 5, 16


def build_model() -> nn.Module:
    """The MLP 64-128-10 of fedhpc's digits workload."""
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def train_epochs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, epochs: int, batch: int,
                 gen: torch.Generator) -> float:
    """Local SGD over (x, y), reshuffled each epoch; the mean loss of the last epoch."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        total = 0.0
        order = torch.randperm(len(y), generator=gen)
        for b in range(0, len(y), batch):
            idx = order[b : b + batch]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
    return total / len(y)


client_app = ClientApp()


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    """Train this node's client (its ``partition-id``) from the global model; time the training loop only."""
    torch.set_num_threads(1)
    config = msg.content["config"]
    cid = int(context.node_config["partition-id"])
    with np.load(str(config["npz"])) as npz:  # lazy: reads only this client's two arrays
        x, y = torch.from_numpy(npz[f"x_{cid}"]), torch.from_numpy(npz[f"y_{cid}"])
    model = build_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    seed = int(np.random.SeedSequence([int(config["seed"]), int(config["server-round"]), cid]).generate_state(1)[0])
    gen = torch.Generator().manual_seed(seed)
    start, t = time.time(), time.perf_counter()
    loss = train_epochs(model, x, y, float(config["lr"]), int(config["epochs"]), int(config["batch-size"]), gen)
    train_s = time.perf_counter() - t
    metrics = MetricRecord({"num-examples": len(y), "train-loss": loss, "train-s": train_s, "start": start,
                            "pid": os.getpid(), "client": cid})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


def weighted_loss(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """The clients' last-epoch training loss, averaged by sample count (the other fit metrics are per client)."""
    metrics = [r["metrics"] for r in records]
    total = sum(m[weight_key] for m in metrics)
    return MetricRecord({"train-loss": sum(m["train-loss"] * m[weight_key] for m in metrics) / total})


class TimedFedAvg(FedAvg):
    """FedAvg over every client, with a server-side evaluation that closes each round, and a log of round times.

    A round starts when ``configure_train`` is called and ends when
    :meth:`evaluate` (the strategy's ``evaluate_fn``) has scored the
    aggregated model; ``aggregate_train`` keeps each client's fit metrics.
    Any failed client fails the run: a benchmark with holes is no benchmark.
    """

    def __init__(self, clients: int, x_test: np.ndarray, y_test: np.ndarray):
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients,
                         min_available_nodes=clients, train_metrics_aggr_fn=weighted_loss)
        self.clients = clients
        self.x_test, self.y_test = torch.from_numpy(x_test), torch.from_numpy(y_test)
        self.rounds: dict[int, dict] = {}
        self.initial_accuracy: float | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self.rounds[server_round] = {"start": time.time()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies):
        replies = list(replies)
        errors = [m.error.reason for m in replies if m.has_error()]
        if errors or len(replies) != self.clients:
            raise RuntimeError(f"round {server_round}: {len(replies)} of {self.clients} clients replied, "
                               f"errors: {errors}")
        self.rounds[server_round]["fits"] = [
            {"client": int(m["client"]), "pid": int(m["pid"]), "start_s": m["start"] - T0, "train_s": m["train-s"]}
            for m in (r.content["metrics"] for r in replies)]
        return super().aggregate_train(server_round, replies)

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Accuracy of the global model on the test split (round 0: the initial model)."""
        model = build_model()
        model.load_state_dict(arrays.to_torch_state_dict())
        model.eval()
        with torch.no_grad():
            accuracy = float((model(self.x_test).argmax(1) == self.y_test).float().mean())
        if server_round == 0:
            self.initial_accuracy = accuracy
        else:
            self.rounds[server_round].update(end=time.time(), accuracy=accuracy)
        return MetricRecord({"accuracy": accuracy})


def run(npz_path: Path, rounds: int, cpus: int, seed: int) -> dict:
    """Run the simulation; return the measurements (see the module docstring)."""
    torch.set_num_threads(1)
    with np.load(npz_path) as npz:
        clients = int(npz["num_clients"])
        strategy = TimedFedAvg(clients, npz["x_test"], npz["y_test"])
    torch.manual_seed(seed)
    initial = ArrayRecord(build_model().state_dict())
    train_config = ConfigRecord({"npz": str(npz_path.resolve()), "lr": LR, "epochs": EPOCHS, "batch-size": BATCH,
                                 "seed": seed})
    server_app = ServerApp()

    @server_app.main()
    def server_main(grid: Grid, context: Context) -> None:
        strategy.start(grid, initial, num_rounds=rounds, train_config=train_config, evaluate_fn=strategy.evaluate)

    backend_config = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                      "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False}}
    t_sim = time.time()
    run_simulation(server_app, client_app, num_supernodes=clients, backend_config=backend_config)
    t_end = time.time()
    if len(strategy.rounds) != rounds or any("end" not in r for r in strategy.rounds.values()):
        raise RuntimeError(f"the simulation ended after {len(strategy.rounds)} of {rounds} rounds; see its log above")

    per_round = []
    for n, r in sorted(strategy.rounds.items()):
        by_pid: dict[int, float] = defaultdict(float)
        for fit in r["fits"]:
            by_pid[fit["pid"]] += fit["train_s"]
        round_s, slowest = r["end"] - r["start"], max(by_pid.values())
        per_round.append({"round": n, "round_s": round_s, "slowest_worker_train_s": slowest,
                          "overhead_s": round_s - slowest, "accuracy": r["accuracy"], "workers": len(by_pid),
                          "start_s": r["start"] - T0, "end_s": r["end"] - T0,
                          "fits": sorted(r["fits"], key=lambda f: f["start_s"])})
    first_train = per_round[0]["fits"][0]["start_s"]

    def mean(key: str, skip: int = 0) -> float | None:
        values = [r[key] for r in per_round[skip:]]
        return float(np.mean(values)) if values else None

    return {
        "framework": "flower", "flwr_version": flwr.__version__, "ray_version": ray.__version__,
        "torch_version": torch.__version__,
        "workload": {"npz": str(npz_path), "clients": clients, "rounds": rounds, "lr": LR, "epochs": EPOCHS,
                     "batch_size": BATCH, "seed": seed, "cpus": cpus, "cpus_per_client": 1, "torch_threads": 1},
        "total_s": t_end - T0, "imports_s": T_IMPORTED - T0, "startup_s": first_train,
        "ray_startup_s": first_train - (t_sim - T0), "simulation_s": t_end - t_sim,
        "worker_pids": sorted({f["pid"] for r in per_round for f in r["fits"]}),
        "initial_accuracy": strategy.initial_accuracy,
        "summary": {"mean_round_s": mean("round_s"), "mean_round_s_after_1": mean("round_s", 1),
                    "mean_overhead_s": mean("overhead_s"), "mean_overhead_s_after_1": mean("overhead_s", 1),
                    "mean_slowest_worker_train_s": mean("slowest_worker_train_s"),
                    "final_accuracy": per_round[-1]["accuracy"]},
        "rounds": per_round,
    }


def print_table(result: dict) -> None:
    print(f"\nflwr {result['flwr_version']} (ray {result['ray_version']}, torch {result['torch_version']}), "
          f"{result['workload']['clients']} clients, {result['workload']['cpus']} CPUs")
    print(f"{'round':>5} {'round s':>8} {'slowest worker train s':>23} {'overhead s':>11} {'workers':>8} "
          f"{'accuracy':>9}")
    for r in result["rounds"]:
        print(f"{r['round']:5d} {r['round_s']:8.3f} {r['slowest_worker_train_s']:23.3f} {r['overhead_s']:11.3f} "
              f"{r['workers']:8d} {r['accuracy']:9.4f}")
    s = result["summary"]
    print(f"mean round {s['mean_round_s']:.3f} s (rounds 2..: {s['mean_round_s_after_1'] or float('nan'):.3f} s), "
          f"overhead {s['mean_overhead_s']:.3f} s (rounds 2..: {s['mean_overhead_s_after_1'] or float('nan'):.3f} s)")
    print(f"imports {result['imports_s']:.1f} s, first training after {result['startup_s']:.1f} s "
          f"(Ray and the simulation: {result['ray_startup_s']:.1f} s), total {result['total_s']:.1f} s, "
          f"final accuracy {s['final_accuracy']:.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, required=True, metavar="FILE",
                        help="the client data written by export_partition.py")
    parser.add_argument("--rounds", type=int, default=30, metavar="N", help="federated rounds (default: 30)")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="the JSON file to write")
    parser.add_argument("--cpus", type=int, default=2, metavar="N",
                        help="CPUs given to Ray; each client takes 1, so N clients train at a time (default: 2)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of the initial model and the clients' shuffling (default: 0)")
    args = parser.parse_args(argv)
    result = run(args.npz, args.rounds, args.cpus, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print_table(result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
