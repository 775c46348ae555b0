"""``digits``: sklearn's embedded 8x8 digits, the default that needs no download."""

from __future__ import annotations

import numpy as np

from fedhpc.data.dataset import Dataset, holdout_split


def load(cfg) -> Dataset:
    """1797 images of 64 features in [0, 1], 10 classes; ``data.test_fraction`` held out."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    return holdout_split("digits", x, d.target.astype(np.int64), 10, cfg.test_fraction, 12345)
