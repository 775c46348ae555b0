"""Datasets and partitioners, by name.

A dataset is a :class:`Dataset` with a train and a test split (see
``data.name``); a partitioner (:mod:`fedhpc.data.partition`) splits the train
indices over clients. Each loader lives in its own module and is registered in
:data:`DATASETS`; it takes the :class:`~fedhpc.config.DataConfig` and raises
:class:`~fedhpc.errors.ConfigError` naming the file, what was expected and
where to get the data when something is missing or malformed.
"""

from __future__ import annotations

from fedhpc.data import cifar10, digits, medmnist, shakespeare, synthetic, text
from fedhpc.data.dataset import Dataset
from fedhpc.errors import ConfigError

DATASETS = {
    "digits": digits.load,
    "synthetic": synthetic.load,
    "cifar10": cifar10.load,
    "shakespeare": shakespeare.load,
    "shakespeare-offline": shakespeare.load_offline,
    "medmnist": medmnist.load,
    "text": text.load,
}

__all__ = ["DATASETS", "Dataset", "load_dataset"]


def load_dataset(cfg) -> Dataset:
    """Load the dataset named by ``cfg.name`` (a :class:`~fedhpc.config.DataConfig`)."""
    try:
        loader = DATASETS[cfg.name]
    except KeyError:
        raise ConfigError(f"config key 'data.name' is '{cfg.name}'; available datasets: "
                          f"{', '.join(DATASETS)}") from None
    return loader(cfg)
