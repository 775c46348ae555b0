"""``cifar10``: the official "CIFAR-10 python version" directory.

``data.root`` is the extracted ``cifar-10-batches-py`` directory (or the
directory that contains it) with ``data_batch_1`` .. ``data_batch_5`` and
``test_batch``: pickled dicts whose ``data`` is a uint8 N x 3072 array (1024
red, 1024 green, 1024 blue values of a 32x32 image, row-major) and whose
``labels`` is a list of N ints in [0, 10). Images are returned as float32
N x 3 x 32 x 32, each channel standardized by the train split's statistics.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from fedhpc.data.dataset import Dataset, data_root, standardize_images
from fedhpc.errors import ConfigError

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
SUBDIR = "cifar-10-batches-py"  # the name the official archive extracts to
WHERE = ("Download the python version from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it; "
         "data.root is the cifar-10-batches-py directory.")
EXPECTED = "a pickled dict with 'data' (uint8, N x 3072) and 'labels' (N ints in [0, 10))"


def load(cfg) -> Dataset:
    """Read the five train batches and the test batch under ``data.root``."""
    root = data_root(cfg, "the CIFAR-10 python batches (data_batch_1..5, test_batch)", WHERE)
    if not (root / TEST_FILE).exists() and (root / SUBDIR).is_dir():
        root = root / SUBDIR
    parts = [read_batch(root / name) for name in TRAIN_FILES]
    x_train = np.concatenate([x for x, _ in parts])
    y_train = np.concatenate([y for _, y in parts])
    x_test, y_test = read_batch(root / TEST_FILE)
    x_train, x_test = standardize_images(x_train, x_test)
    return Dataset("cifar10", x_train, y_train, x_test, y_test, 10)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as (uint8 N x 3 x 32 x 32 images, int64 labels)."""
    if not path.is_file():
        raise ConfigError(f"CIFAR-10 file '{path}' is missing: expected {EXPECTED}. {WHERE}")
    try:
        with open(path, "rb") as f:
            # the official batches are Python 2 pickles: their keys come back as bytes
            raw = pickle.load(f, encoding="bytes")
    except Exception as exc:  # any unpickling failure means the same thing: not a batch file
        raise ConfigError(f"CIFAR-10 file '{path}' cannot be unpickled ({type(exc).__name__}: {exc}): "
                          f"expected {EXPECTED}. {WHERE}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"CIFAR-10 file '{path}' holds a {type(raw).__name__}: expected {EXPECTED}. {WHERE}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
    if "data" not in batch or "labels" not in batch:
        raise ConfigError(f"CIFAR-10 file '{path}' has keys {sorted(batch)}: expected {EXPECTED}. {WHERE}")
    x, y = np.asarray(batch["data"]), np.asarray(batch["labels"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise ConfigError(f"CIFAR-10 file '{path}': 'data' is {x.dtype} {x.shape}, expected uint8 N x 3072. {WHERE}")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or (y.size and (y.min() < 0 or y.max() > 9)):
        raise ConfigError(f"CIFAR-10 file '{path}': 'labels' must be {len(x)} ints in [0, 10), "
                          f"got {y.dtype} {y.shape}. {WHERE}")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)
