"""``digits``: sklearn's embedded 8x8 digits, the default that needs no download."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from fedhpc.data.dataset import Dataset, holdout_split


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """(1797 x 64 pixel values 0..16, labels) as ``sklearn.datasets.load_digits`` gives them.

    Importing scikit-learn costs about 0.9 s per rank, a tenth of a small
    job's wall time, for a 1797-line CSV: read the file scikit-learn ships
    directly, and fall back to its loader if the file ever moves.
    """
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        csv = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            table = np.loadtxt(csv, delimiter=",")
            return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data, d.target.astype(np.int64)


def load(cfg) -> Dataset:
    """1797 images of 64 features in [0, 1], 10 classes; ``data.test_fraction`` held out."""
    pixels, labels = _digits()
    x = (pixels / 16.0).astype(np.float32)
    return holdout_split("digits", x, labels, 10, cfg.test_fraction, 12345)
