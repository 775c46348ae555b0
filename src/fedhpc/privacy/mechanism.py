"""The Gaussian mechanism of DP-FedAvg: clip each client's update, add noise to the mean."""

from __future__ import annotations

import secrets

import numpy as np

from fedhpc import kernels as K
from fedhpc.seeds import SEED_DP, derive_seed

# a clipped update's norm lands a hair under the bound, never above it through float32 rounding
_MARGIN = 1.0 - 2.0**-20


def clip(delta: np.ndarray, bound: float) -> float:
    """Scale ``delta`` in place so that its L2 norm is at most ``bound``; return its norm before.
    Raises ValueError for NaN or Inf values (no scaling bounds them: the client fails)."""
    norm = K.l2_norm(delta)
    if not np.isfinite(norm):
        raise ValueError("the update holds NaN or Inf values: it cannot be clipped")
    if norm > bound:
        np.multiply(delta, np.float32(bound / norm * _MARGIN), out=delta)
    return norm


def gaussian_noise(seed: int, round_: int, n: int, std: float) -> np.ndarray:
    """``n`` float32 values of N(0, std^2), the same for the same (noise seed, round). The seed
    must be secret (:func:`noise_seed`): whoever knows it can draw the noise and remove it."""
    rng = np.random.default_rng(derive_seed(seed, round_, SEED_DP))
    return (rng.standard_normal(n) * std).astype(np.float32)


def client_noise(seed: int | None, round_: int, client: int, n: int, std: float) -> np.ndarray:
    """One client's share of the noise (``dp.placement = "client"``): ``n`` float32 values of
    N(0, std^2), from (noise seed, round, client) when the noise is reproducible, else from
    the OS (``seed`` None): a client's share must be unknown to rank 0, or removing it from
    the client's update would leave it noiseless."""
    rng = np.random.default_rng(None if seed is None else derive_seed(seed, round_, client, SEED_DP))
    return (rng.standard_normal(n) * std).astype(np.float32)


def noise_seed(secret: bool, run_seed: int) -> int:
    """The seed of a run's noise: a fresh secret (63 random bits from the OS), or with
    ``secret`` False the run seed, reproducible and therefore no protection against anyone
    who has the config (experiments only)."""
    return secrets.randbits(63) | 1 if secret else run_seed
