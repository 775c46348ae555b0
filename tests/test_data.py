"""Partitioners: seeded, lossless, no empty client, and the skew they promise."""

import numpy as np
import pytest

from fedhpc.config import DataConfig
from fedhpc.data import load_dataset
from fedhpc.data.partition import partition
from fedhpc.errors import ConfigError

Y = load_dataset(DataConfig()).y_train


@pytest.mark.parametrize("name", ["iid", "dirichlet", "classes"])
@pytest.mark.parametrize("clients", [1, 7, 20, 100])
def test_every_sample_exactly_once_and_no_empty_client(name, clients):
    parts = partition(Y, clients, name, seed=3, alpha=0.1, classes_per_client=2)
    assert len(parts) == clients and all(len(p) for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(Y)))
    again = partition(Y, clients, name, seed=3, alpha=0.1, classes_per_client=2)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_classes_gives_each_client_about_k_classes():
    parts = partition(Y, 20, "classes", seed=0, classes_per_client=2)
    counts = [len(np.unique(Y[p])) for p in parts]
    assert max(counts) <= 4 and np.mean(counts) <= 3


def test_dirichlet_skew_grows_as_alpha_shrinks():
    def skew(alpha):
        parts = partition(Y, 10, "dirichlet", seed=0, alpha=alpha)
        return np.mean([np.bincount(Y[p], minlength=10).max() / len(p) for p in parts])
    assert skew(0.05) > skew(100.0) + 0.3


def test_impossible_partition_is_a_clear_error():
    with pytest.raises(ConfigError, match="only"):
        partition(Y[:5], 10, "iid", seed=0)
