"""Split a dataset's train indices over clients: iid, Dirichlet label skew, k classes per client, natural users.

Every partitioner is seeded and deterministic, duplicates no sample and leaves
no client empty (or raises a ConfigError explaining why it cannot). ``iid``,
``dirichlet`` and ``classes`` use every sample; ``natural`` uses every sample
when there are as many clients as users (see :func:`natural`). A cap on each
client's samples (``data.max_client_samples``) then keeps a seeded subset of
every larger client.
"""

from __future__ import annotations

import heapq
import json
from pathlib import Path

import numpy as np

from fedhpc.errors import ConfigError


def iid(y: np.ndarray, clients: int, rng: np.random.Generator, **_) -> list[np.ndarray]:
    """A random permutation cut into equal parts."""
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


def classes(y: np.ndarray, clients: int, rng: np.random.Generator, classes_per_client: int = 2,
            **_) -> list[np.ndarray]:
    """Each client gets shards of exactly ``classes_per_client`` different classes.

    As in McMahan et al. 2017, every class is cut into shards and each client
    receives ``k = classes_per_client`` shards; here the shards of one class
    always go to different clients, so a client holds exactly k classes (with
    McMahan's sorted shards a shard could straddle two classes). A class gets
    shards in proportion to its size (at least one, so no sample is lost, and
    at most one per client); then each class in random order deals its shards
    to the clients with the most free slots, ties broken at random, which
    always completes and makes the pairing of classes random.
    """
    k = classes_per_client
    labels, counts = np.unique(y, return_counts=True)
    shards = _shards_per_class(counts, clients, k)
    free = np.full(clients, k)
    parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
    for c in rng.permutation(len(labels)):
        takers = np.lexsort((rng.random(clients), -free))[: shards[c]]
        # free slots never differ by more than one between clients, so the takers always have one
        assert free[takers].min() > 0
        idx = rng.permutation(np.flatnonzero(y == labels[c]))
        for client, piece in zip(takers, np.array_split(idx, shards[c])):
            parts[client].append(piece)
        free[takers] -= 1
    return [np.sort(np.concatenate(p)) for p in parts]


def _shards_per_class(counts: np.ndarray, clients: int, k: int) -> np.ndarray:
    """How many shards each class is cut into: ``clients * k`` in all, one to
    ``min(clients, samples)`` per class, spread so that shards are of similar size."""
    total, n_classes = clients * k, len(counts)
    if k > n_classes:
        raise ConfigError(f"partition 'classes': data.classes_per_client={k} is more than the {n_classes} classes "
                          f"of the dataset; lower data.classes_per_client")
    if n_classes > total:
        raise ConfigError(f"partition 'classes': {clients} clients x {k} classes each cover at most {total} of the "
                          f"{n_classes} classes, so some samples would have no client; raise clients.total or "
                          f"data.classes_per_client, or use partition 'dirichlet'")
    cap = np.minimum(counts, clients)  # a class's shards go to different clients and hold a sample each
    if cap.sum() < total:
        raise ConfigError(f"partition 'classes': {clients} clients x {k} classes need {total} (client, class) "
                          f"shards, but the classes are too small to be shared by that many clients (at most "
                          f"{int(cap.sum())}); lower clients.total or data.classes_per_client")
    shards = np.ones(n_classes, dtype=np.int64)
    heap = [(-counts[c] / shards[c], c) for c in range(n_classes) if shards[c] < cap[c]]
    heapq.heapify(heap)
    for _ in range(total - n_classes):
        _, c = heapq.heappop(heap)  # the class whose shards are largest now
        shards[c] += 1
        if shards[c] < cap[c]:
            heapq.heappush(heap, (-counts[c] / shards[c], c))
    return shards


def natural(y: np.ndarray, clients: int, rng: np.random.Generator, groups: np.ndarray | None = None,
            **_) -> list[np.ndarray]:
    """The dataset's own users as clients (LEAF Shakespeare: one per speaking role).

    ``clients.total`` may be at most the number of users: the clients are the
    ``clients.total`` users with the most training samples (ties: the earlier
    user), in the dataset's user order. The samples of the remaining users are
    not used for training (the partition summary counts them as unused); they
    still count in the test split, which is pooled over all users. The seed
    plays no part: the users are the partition.
    """
    if groups is None:
        raise ConfigError("partition 'natural' needs a dataset with users of its own (shakespeare, "
                          "shakespeare-offline); use iid, dirichlet or classes for this one")
    sizes = np.bincount(groups)
    users = int((sizes > 0).sum())
    if clients > users:
        raise ConfigError(f"partition 'natural': clients.total={clients} but the dataset has only {users} users; "
                          f"set clients.total <= {users}")
    chosen = np.sort(np.argsort(-sizes, kind="stable")[:clients])
    order = np.argsort(groups, kind="stable")  # stable: each user's indices stay ascending
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return [order[starts[u] : starts[u + 1]] for u in chosen]


PARTITIONERS = {"iid": iid, "dirichlet": dirichlet, "classes": classes, "natural": natural}


def partition(y: np.ndarray, clients: int, name: str, seed: int, groups: np.ndarray | None = None,
              max_samples: int = 0, **params) -> list[np.ndarray]:
    """Indices of each client's samples (``groups``: each sample's user, for ``natural``); with
    ``max_samples``, a client with more keeps a random subset of that many (seeded, ascending)."""
    if clients > len(y):
        raise ConfigError(f"{clients} clients but only {len(y)} training samples: every client needs one")
    rng = np.random.default_rng(seed)
    parts = PARTITIONERS[name](y, clients, rng, groups=groups, **params)
    used = np.concatenate(parts)
    assert len(parts) == clients and all(len(p) for p in parts) and np.unique(used).size == used.size
    assert used.size == len(y) or name == "natural"
    if max_samples:
        parts = [np.sort(rng.choice(p, max_samples, replace=False)) if len(p) > max_samples else p for p in parts]
    return parts


def summary(data, parts: list[np.ndarray], name: str) -> dict:
    """Samples and classes (label -> count) per client, and with natural users, each client's user.
    A dataset whose targets are sequences (text: a token per position) has no classes to count."""
    # every client's class counts at once (one np.unique per client took seconds for 100,000)
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    counts = None
    if data.y_train.ndim == 1:
        labels = data.y_train[np.concatenate(parts)] if parts else np.zeros(0, dtype=np.int64)
        counts = np.zeros((len(parts), max(int(data.num_classes), int(labels.max(initial=-1)) + 1)), dtype=np.int64)
        np.add.at(counts, (np.repeat(np.arange(len(parts)), sizes), labels), 1)
    clients = []
    for cid, p in enumerate(parts):
        entry: dict[str, object] = {"client": cid, "samples": int(sizes[cid])}
        if counts is not None:
            present = np.flatnonzero(counts[cid])
            entry["classes"] = dict(zip(map(str, present), counts[cid][present].tolist()))
        if name == "natural":
            entry["user"] = data.users[int(data.groups[p[0]])]
        clients.append(entry)
    used = sum(len(p) for p in parts)
    return {"dataset": data.name, "partition": name, "num_classes": data.num_classes,
            "train_samples": int(len(data.y_train)), "test_samples": int(len(data.y_test)),
            "unused_samples": int(len(data.y_train) - used), "clients": clients}


def write_summary(path: Path, data, parts: list[np.ndarray], name: str) -> None:
    """Write :func:`summary` as JSON (the run's ``partition.json``): indented for a reader
    up to 1,000 clients, compact beyond (100,000 clients: about 6 MB)."""
    Path(path).write_text(json.dumps(summary(data, parts, name), indent=1 if len(parts) <= 1000 else None,
                                     separators=None if len(parts) <= 1000 else (",", ":")))
