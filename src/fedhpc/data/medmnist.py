"""``medmnist``: one 2D MedMNIST subset's ``.npz`` file (pathmnist, bloodmnist, organamnist, ...).

``data.root`` is the ``.npz`` file itself, e.g. ``~/.medmnist/pathmnist.npz``.
It holds ``train_images``/``train_labels``, ``val_*`` and ``test_*``; images
are uint8 N x H x W (grey, returned as 1 channel) or N x H x W x 3 (RGB,
returned as 3 channels), labels are N x 1 class indices (flattened). Images
are returned as float32 N x C x H x W, each channel standardized by the train
split's statistics. Clients train on the train split and the orchestrator
evaluates on the test split; the validation split is not used (federated
training has no central tuning step). Multi-label (chestmnist) and 3D subsets
are refused with a ConfigError.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from fedhpc.data.dataset import Dataset, data_root, standardize_images
from fedhpc.errors import ConfigError

WHERE = ("Get a 2D subset's .npz from https://medmnist.com (Zenodo record of MedMNIST v2), or with "
         "`pip install medmnist` and "
         "`python -c \"import medmnist; medmnist.PathMNIST(split='train', download=True)\"`, "
         "which saves ~/.medmnist/pathmnist.npz; data.root is that file.")


def load(cfg) -> Dataset:
    """Read the train and test splits of the ``.npz`` file at ``data.root``."""
    path = data_root(cfg, "a MedMNIST .npz file", WHERE)
    if path.is_dir():
        raise ConfigError(f"data.root '{path}' is a directory; dataset 'medmnist' needs the .npz file of one subset "
                          f"(e.g. {path / 'pathmnist.npz'}). {WHERE}")
    try:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"MedMNIST file '{path}' is not a readable .npz archive ({exc}). {WHERE}") from None
    x_train, y_train = _split(path, arrays, "train")
    x_test, y_test = _split(path, arrays, "test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ConfigError(f"MedMNIST file '{path}': train images are {x_train.shape[1:]} but test images are "
                          f"{x_test.shape[1:]} (channels, height, width). {WHERE}")
    num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    x_train, x_test = standardize_images(x_train, x_test)
    return Dataset(f"medmnist:{path.stem}", x_train, y_train, x_test, y_test, num_classes)


def _split(path: Path, arrays: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N x C x H x W images, int64 labels) of one split, validated."""
    keys = (f"{split}_images", f"{split}_labels")
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ConfigError(f"MedMNIST file '{path}' lacks {', '.join(missing)} (it has: {', '.join(sorted(arrays))}); "
                          f"expected train_images, train_labels, val_*, test_* of a MedMNIST subset. {WHERE}")
    x, y = arrays[keys[0]], arrays[keys[1]]
    if x.dtype != np.uint8:
        raise ConfigError(f"MedMNIST file '{path}': {keys[0]} is {x.dtype}, expected uint8 pixels. {WHERE}")
    if x.ndim == 3:
        x = x[:, None]  # grey: one channel
    elif x.ndim == 4 and x.shape[3] == 3:
        x = x.transpose(0, 3, 1, 2)  # RGB: channels first, as torch convolutions want
    else:
        raise ConfigError(f"MedMNIST file '{path}': {keys[0]} has shape {x.shape}; expected N x H x W (grey) or "
                          f"N x H x W x 3 (RGB) images of a 2D subset (3D subsets such as organmnist3d are not "
                          f"supported). {WHERE}")
    if y.ndim == 2 and y.shape[1] != 1:
        raise ConfigError(f"MedMNIST file '{path}': {keys[1]} has shape {y.shape}, i.e. {y.shape[1]} labels per "
                          f"image; multi-label subsets (chestmnist) are not supported, use a single-label subset")
    y = y.reshape(-1)
    if len(y) != len(x) or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise ConfigError(f"MedMNIST file '{path}': {keys[1]} must hold {len(x)} non-negative class indices "
                          f"(N x 1), got {arrays[keys[1]].dtype} {arrays[keys[1]].shape}. {WHERE}")
    if len(x) == 0:
        raise ConfigError(f"MedMNIST file '{path}': {keys[0]} is empty. {WHERE}")
    return np.ascontiguousarray(x), y.astype(np.int64)
