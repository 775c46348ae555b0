"""The Gaussian mechanism of DP-FedAvg: clip each client's update, add noise to the mean."""

from __future__ import annotations

import numpy as np

from fedhpc import kernels as K
from fedhpc.seeds import SEED_DP, derive_seed

# a clipped update's norm lands a hair under the bound, never above it through float32 rounding
_MARGIN = 1.0 - 2.0**-20


def clip(delta: np.ndarray, bound: float) -> float:
    """Scale ``delta`` in place so that its L2 norm is at most ``bound``; return its norm before."""
    norm = K.l2_norm(delta)
    if norm > bound:
        np.multiply(delta, np.float32(bound / norm * _MARGIN), out=delta)
    return norm


def gaussian_noise(seed: int, round_: int, n: int, std: float) -> np.ndarray:
    """``n`` float32 values of N(0, std^2), the same for the same (run seed, round)."""
    rng = np.random.default_rng(derive_seed(seed, round_, SEED_DP))
    return (rng.standard_normal(n) * std).astype(np.float32)
