"""Datasets and partitioners, by name.

A dataset is a :class:`Dataset` of float32 features and int64 labels with a
train and a test split; a partitioner splits the train indices over clients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedhpc.errors import ConfigError


@dataclass
class Dataset:
    """Arrays of one dataset; ``x`` is (N, ...) float32, ``y`` is (N,) int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _split(name, x, y, num_classes, test_fraction, seed) -> Dataset:
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    te, tr = order[:n_test], order[n_test:]
    return Dataset(name, x[tr], y[tr], x[te], y[te], num_classes)


def load_digits(cfg) -> Dataset:
    """sklearn's embedded 8x8 digits (1797 images, 10 classes): no download."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.data / 16.0).astype(np.float32)
    return _split("digits", x, d.target.astype(np.int64), 10, cfg.test_fraction, 12345)


def load_synthetic(cfg) -> Dataset:
    """Gaussian class clusters in 32 dimensions (2000 samples, 10 classes), seeded."""
    rng = np.random.default_rng(777)
    centers = rng.standard_normal((10, 32)).astype(np.float32) * 1.5
    y = rng.integers(0, 10, 2000)
    x = (centers[y] + rng.standard_normal((2000, 32))).astype(np.float32)
    return _split("synthetic", x, y.astype(np.int64), 10, cfg.test_fraction, 12345)


DATASETS = {"digits": load_digits, "synthetic": load_synthetic}


def load_dataset(cfg) -> Dataset:
    """Load the dataset named by ``cfg.name`` (a :class:`~fedhpc.config.DataConfig`)."""
    try:
        loader = DATASETS[cfg.name]
    except KeyError:
        raise ConfigError(f"config key 'data.name' is '{cfg.name}'; available datasets: {', '.join(DATASETS)}") from None
    return loader(cfg)
