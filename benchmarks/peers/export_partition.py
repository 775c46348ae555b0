#!/usr/bin/env python
"""Write fedhpc's digits split to an .npz, so that a peer framework trains on exactly the same client data.

The split is the one ``fedhpc run`` builds for the peer-comparison workload
(``data.name = "digits"``, ``data.partition = "classes"``,
``data.classes_per_client = 2``, ``data.test_fraction = 0.2``): the config is
built with fedhpc's own loader and the dataset and partition come from the
same calls as in ``fedhpc.runtime.context.build_context``, so a change there
shows up here. Run it with the project's venv::

    .venv/bin/python benchmarks/peers/export_partition.py --out runs/peers/digits-classes2.npz

The archive holds ``x_test``, ``y_test`` (the held-out test split),
``x_0``, ``y_0`` .. ``x_{N-1}``, ``y_{N-1}`` (client i's training samples,
float32 features in [0, 1] and int64 labels) and ``num_clients``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from fedhpc.config import load_config
from fedhpc.data import load_dataset
from fedhpc.data.partition import partition
from fedhpc.seeds import SEED_PARTITION, derive_seed


def export(out: Path, clients: int, seed: int) -> list[np.ndarray]:
    """Write the split of ``clients`` clients under run seed ``seed`` to ``out``; return each client's labels."""
    cfg = load_config(overrides=[
        "data.name=digits", "data.partition=classes", "data.classes_per_client=2", "data.test_fraction=0.2",
        f"clients.total={clients}", f"clients.per_round={clients}", f"seed={seed}",
    ])
    data = load_dataset(cfg.data)
    parts = partition(data.y_train, cfg.clients.total, cfg.data.partition, derive_seed(cfg.seed, SEED_PARTITION),
                      groups=data.groups, alpha=cfg.data.alpha, classes_per_client=cfg.data.classes_per_client)
    arrays = {"x_test": data.x_test, "y_test": data.y_test, "num_clients": np.int64(clients)}
    for i, idx in enumerate(parts):
        arrays[f"x_{i}"], arrays[f"y_{i}"] = data.x_train[idx], data.y_train[idx]
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return [data.y_train[idx] for idx in parts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="the .npz file to write")
    parser.add_argument("--clients", type=int, default=20, metavar="N", help="number of clients (default: 20)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="fedhpc's run seed (default: 0)")
    args = parser.parse_args(argv)
    labels = export(args.out, args.clients, args.seed)
    for i, y in enumerate(labels):
        classes = ", ".join(f"{c}: {n}" for c, n in zip(*np.unique(y, return_counts=True)))
        print(f"client {i:2d}: {len(y):3d} samples (class: count {classes})")
    print(f"wrote {args.out}: {sum(map(len, labels))} train samples over {len(labels)} clients")
    return 0


if __name__ == "__main__":
    sys.exit(main())
