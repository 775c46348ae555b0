"""The :class:`Dataset` every loader returns, and helpers the loaders share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedhpc.errors import ConfigError


@dataclass
class Dataset:
    """Arrays of one dataset with a train and a test split.

    ``x`` is (N, ...) float32 (images as N x C x H x W) or uint8 (text as
    vocabulary indices); ``y`` is (N,) int64 in ``[0, num_classes)``. Datasets
    with users of their own (LEAF Shakespeare's speaking roles) also give, per
    train sample, the index of its user in ``groups`` and the user names in
    ``users``; the ``natural`` partitioner reads them.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    groups: np.ndarray | None = None
    users: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def holdout_split(name: str, x: np.ndarray, y: np.ndarray, num_classes: int, test_fraction: float,
                  seed: int) -> Dataset:
    """A seeded train/test split for datasets that come without a test split."""
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    te, tr = order[:n_test], order[n_test:]
    return Dataset(name, x[tr], y[tr], x[te], y[te], num_classes)


def data_root(cfg, what: str, where: str) -> Path:
    """``data.root`` as a path (``~`` expanded) that exists; else a ConfigError
    saying ``what`` was expected there and ``where`` to get it."""
    if not cfg.root:
        raise ConfigError(f"config key 'data.root' is empty; dataset '{cfg.name}' reads {what} from it. {where}")
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise ConfigError(f"data.root '{root}' does not exist; dataset '{cfg.name}' expects {what} there. {where}")
    return root


def standardize_images(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N x C x H x W images -> float32, each channel scaled to zero mean and
    unit variance by the train split's statistics (the same on every rank)."""
    mean, std = np.empty(train.shape[1]), np.empty(train.shape[1])
    for c in range(train.shape[1]):
        # exact moments from a 256-bin histogram: no float64 copy of the whole split
        hist = np.bincount(train[:, c].ravel(), minlength=256)
        values = np.arange(256, dtype=np.float64)
        mean[c] = (hist * values).sum() / hist.sum()
        std[c] = max(np.sqrt((hist * (values - mean[c]) ** 2).sum() / hist.sum()), 1e-6)

    def scale(x: np.ndarray) -> np.ndarray:
        out = x.astype(np.float32)
        out -= mean.astype(np.float32)[None, :, None, None]
        out /= std.astype(np.float32)[None, :, None, None]
        return out

    return scale(train), scale(test)
