"""Who shares with whom: the complete graph (Bonawitz et al. 2017), or SecAgg+'s sparse
random graph (Bell et al. 2020): a Harary graph over a random order of the clients, in
which each client has ``degree`` neighbours (rounded up to even), half on either side."""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np


def neighbours(clients: Collection[int], degree: int, seed: int) -> dict[int, tuple[int, ...]]:
    """Each client's neighbours (ascending); ``degree`` 0 or at least ``len(clients) - 1``
    is the complete graph. The order is drawn from ``seed`` (the run's, per round), so
    every rank builds the same graph and nobody chooses their neighbours."""
    ids = sorted(set(clients))
    n = len(ids)
    half = math.ceil(degree / 2)
    if degree == 0 or 2 * half >= n - 1:
        return {c: tuple(x for x in ids if x != c) for c in ids}
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    at = {c: i for i, c in enumerate(order)}
    return {c: tuple(sorted(order[(at[c] + d) % n] for d in range(-half, half + 1) if d)) for c in ids}


def share_threshold(fraction: float, holders: int) -> int:
    """How many of the ``holders`` of a client's shares (its neighbours and itself) must
    reveal theirs to recover its secrets: the ``fraction`` of them, at least one."""
    return min(holders, max(1, math.ceil(fraction * holders)))
