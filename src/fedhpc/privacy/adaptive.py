"""Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive Clipping").

The clip follows a target quantile of the clients' update norms: each round
every client says whether its norm was at most the round's clip (one bit),
rank 0 releases the noisy fraction of such clients over the fixed denominator
and moves the clip geometrically toward the quantile,

    C <- C * exp(-lr * (b - quantile)),
    b = (sum over the clients of (bit - 1/2) + N(0, count_std^2)) / expected clients + 1/2.

The bits are a second Gaussian query on the same clients. Centred (bit - 1/2),
one client more or less moves their sum by at most 1/2 whatever its bit, and
the sum does not reveal how many clients there were (the uncentred sum would,
with Poisson sampling: it is the centred one plus half that number). So the
pair (vector sum with noise multiplier z_delta, bit sum with std count_std) is
one Gaussian mechanism on the concatenated query with multiplier z, where
``z**-2 = z_delta**-2 + (2 * count_std)**-2`` (their Theorem 1). The run is
therefore accounted as DP-FedAvg with the configured ``dp.noise_multiplier``
= z, and the vector's own noise is the smaller :func:`vector_noise_multiplier`.
"""

from __future__ import annotations

import math

import numpy as np

from fedhpc.seeds import SEED_DP_COUNT, derive_seed


def count_stddev(configured: float, expected_clients: int) -> float:
    """The std of the noise on the clipped-count sum: ``configured``, or with 0 the paper's
    recommendation, expected clients / 20."""
    return configured if configured > 0 else expected_clients / 20


def vector_noise_multiplier(total: float, count_std: float) -> float:
    """The vector sum's noise multiplier z_delta such that it and the count's noise together
    cost what one Gaussian mechanism of multiplier ``total`` costs. Raises ValueError
    when the count's noise alone would not leave room (2 * count_std <= total)."""
    if total == 0:
        return 0.0
    if 2 * count_std <= total:
        raise ValueError(f"the clipped-count noise std {count_std:g} must be above noise_multiplier / 2 = "
                         f"{total / 2:g}")
    return (total**-2 - (2 * count_std) ** -2) ** -0.5


def count_noise(seed: int, round_: int, std: float) -> float:
    """One draw of N(0, std^2) for round ``round_``'s clipped-count sum, from the run's secret noise seed."""
    return float(np.random.default_rng(derive_seed(seed, round_, SEED_DP_COUNT)).standard_normal() * std)


def unclipped_fraction(unclipped: int, reported: int, noise: float, expected_clients: int) -> float:
    """The released, noisy fraction of clients whose norm was at most the clip: ``unclipped``
    of the ``reported`` clients, centred, plus the count's ``noise``, over the fixed denominator."""
    return (unclipped - reported / 2 + noise) / expected_clients + 0.5


def next_clip(clip: float, unclipped: float, quantile: float, lr: float) -> float:
    """The next round's clip from this round's and the noisy fraction ``unclipped`` of
    clients whose norm was at most it (geometric update: the clip stays positive)."""
    return clip * math.exp(-lr * (unclipped - quantile))
