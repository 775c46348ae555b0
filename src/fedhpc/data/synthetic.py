"""``synthetic``: seeded Gaussian class clusters of any shape, for benchmarks and tests."""

from __future__ import annotations

import math

import numpy as np

from fedhpc.data.dataset import Dataset, holdout_split


def load(cfg) -> Dataset:
    """``data.synthetic.samples`` samples of shape ``data.synthetic.shape`` around one
    random center per class (``data.synthetic.classes``); ``data.test_fraction`` held out.

    The data depend only on those three keys, never on the run seed, so runs
    with different seeds train on the same data.
    """
    s = cfg.synthetic
    dim = math.prod(s.shape)
    rng = np.random.default_rng(777)
    centers = rng.standard_normal((s.classes, dim)).astype(np.float32) * 1.5
    y = rng.integers(0, s.classes, s.samples)
    x = (centers[y] + rng.standard_normal((s.samples, dim))).astype(np.float32).reshape(s.samples, *s.shape)
    return holdout_split("synthetic", x, y.astype(np.int64), s.classes, cfg.test_fraction, 12345)
