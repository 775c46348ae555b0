"""Split a dataset's train indices over clients: iid, Dirichlet label skew, k classes per client.

Every partitioner is seeded and deterministic, loses and duplicates no sample,
and leaves no client empty (or raises a ConfigError explaining why it cannot).
"""

from __future__ import annotations

import numpy as np

from fedhpc.errors import ConfigError


def iid(y: np.ndarray, clients: int, rng: np.random.Generator, **_) -> list[np.ndarray]:
    return [np.sort(p) for p in np.array_split(rng.permutation(len(y)), clients)]


def dirichlet(y: np.ndarray, clients: int, rng: np.random.Generator, alpha: float = 0.5, **_) -> list[np.ndarray]:
    """Per class, proportions over clients drawn from Dirichlet(alpha) (Hsu et al. 2019)."""
    parts: list[list[int]] = [[] for _ in range(clients)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        cuts = (np.cumsum(rng.dirichlet(np.full(clients, alpha))) * len(idx)).astype(int)[:-1]
        for i, chunk in enumerate(np.split(idx, cuts)):
            parts[i].extend(chunk.tolist())
    # an empty client takes one sample from the largest one, so every client can train
    for i in range(clients):
        if not parts[i]:
            donor = max(range(clients), key=lambda j: len(parts[j]))
            parts[i].append(parts[donor].pop())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def classes(y: np.ndarray, clients: int, rng: np.random.Generator, classes_per_client: int = 2, **_) -> list[np.ndarray]:
    """Shards as in McMahan et al. 2017: sort by label, cut into clients*k shards,
    deal k shards to each client, so each holds (about) k classes."""
    shards = clients * classes_per_client
    if shards > len(y):
        raise ConfigError(f"partition 'classes' needs clients*classes_per_client={shards} shards but has only {len(y)} samples")
    order = np.argsort(y, kind="stable")
    pieces = np.array_split(order, shards)
    deal = rng.permutation(shards)
    return [np.sort(np.concatenate([pieces[s] for s in deal[i::clients]])) for i in range(clients)]


PARTITIONERS = {"iid": iid, "dirichlet": dirichlet, "classes": classes}


def partition(y: np.ndarray, clients: int, name: str, seed: int, **params) -> list[np.ndarray]:
    """Indices of each client's samples."""
    if clients > len(y):
        raise ConfigError(f"{clients} clients but only {len(y)} training samples: every client needs one")
    parts = PARTITIONERS[name](y, clients, np.random.default_rng(seed), **params)
    assert sum(len(p) for p in parts) == len(y)
    return parts
