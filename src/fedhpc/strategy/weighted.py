"""``weighted``: weighted mean of the deltas, by sample count, training loss or update variance."""

import math

import numpy as np

from fedhpc import kernels as K
from fedhpc.registry import check_choice
from fedhpc.ring import DEFAULT_SCALE_BITS, Ring
from fedhpc.strategy.base import Strategy, weighted_mean

BY = ("samples", "loss", "variance")


class Weighted(Strategy):
    """w <- w + sum_i c_i * delta_i with c_i normalized to 1 and proportional to:

    * ``by="samples"``: n_i, the client's sample count (identical to ``fedavg``);
    * ``by="loss"``: n_i * loss_i. Clients whose local loss is still high are
      those the global model serves worst (under-represented or harder data);
      giving them more weight pulls the model towards them, a simple form of
      the loss-based reweighting of q-FFL (Li et al. 2020, "Fair Resource
      Allocation in Federated Learning") with q = 1. A non-finite or negative
      loss counts as 0, so a client whose training diverged gets no weight;
    * ``by="variance"``: 1 / (var(delta_i) + eps), inverse-variance weighting
      as for independent noisy estimates of one quantity: an update whose
      coordinates spread widely (a tiny or skewed shard, a too-large local
      step) is trusted less. ``eps`` bounds the weight of a near-constant
      update; note that an all-zero update gets the largest weight, so pair
      this rule with update validation when clients may be lazy. This weight
      depends on the whole update, so this rule is not sum-decomposable: the
      round's updates are held until it closes.
    """

    name = "weighted"

    def __init__(self, by: str = "samples", eps: float = 1e-12):
        self.by = check_choice(f"strategy '{self.name}'", "by", by, BY)
        self.eps = self._check("eps", eps, lo=0.0, lo_open=True)
        self.decomposable = self.by != "variance"

    def coefficient(self, num_samples, loss):
        if self.by == "loss":
            return float(num_samples) * (float(loss) if np.isfinite(loss) and loss > 0 else 0.0)
        return float(num_samples)

    def _combine(self, results):
        coefs = 1.0 / (np.array([update_variance(r.dense()) for r in results]) + self.eps)
        return weighted_mean(results, coefs / math.fsum(coefs), Ring(DEFAULT_SCALE_BITS, len(results)))


def update_variance(delta: np.ndarray) -> float:
    """Population variance of a delta's coordinates, from a float64 mean and a double-accumulated norm.

    Centering first (rather than E[x^2] - E[x]^2) avoids cancellation when the
    mean is large against the spread.
    """
    mean = np.mean(delta, dtype=np.float64)
    return K.l2_norm(delta - np.float32(mean)) ** 2 / delta.size
