"""``fedyogi``: the FedYogi server optimizer of Reddi et al. 2021, "Adaptive Federated Optimization"."""

import numpy as np

from fedhpc import kernels as K
from fedhpc.strategy.fedadam import FedAdam


class FedYogi(FedAdam):
    """FedAdam with Yogi's second moment, ``v <- v - (1 - beta2) * d^2 * sign(v - d^2)``.

    v then moves towards d^2 by an amount that does not depend on v itself, so
    it grows as fast as Adam's when gradients get larger but shrinks more
    slowly, which keeps the effective step from blowing up on sparse or
    heterogeneous updates (Zaheer et al. 2018).
    """

    name = "fedyogi"

    def _update_v(self, d2):
        K.axpy(self.v, np.sign(self.v - d2) * d2, -(1.0 - self.beta2))
