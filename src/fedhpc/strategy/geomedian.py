"""``geomedian``: the geometric median of the updates (RFA, Pillutla et al. 2022), by smoothed Weiszfeld."""

import numpy as np

from fedhpc.strategy.base import Strategy, combination, majority, sq_dists_to


class GeometricMedian(Strategy):
    """The point minimizing the sum of Euclidean distances to the deltas.

    Smoothed Weiszfeld iterations from the mean: each weights every delta by
    1 / max(nu, its distance to the current point) and takes the weighted mean;
    they stop after ``iterations`` or once the point moves by less than ``tol``
    times its norm. Unweighted by sample counts (a Byzantine client could claim
    any count); its breakdown point is 1/2.
    """

    name = "geomedian"
    decomposable = False

    def __init__(self, iterations: int = 8, nu: float = 1e-6, tol: float = 1e-5):
        self.iterations = self._check("iterations", iterations, integer=True, lo=1)
        self.nu = self._check("nu", nu, lo=0.0, lo_open=True)
        self.tol = self._check("tol", tol, lo=0.0)

    def tolerates(self, attackers, clients):
        return majority(self.name, attackers, clients)

    def _combine(self, results):
        k = len(results)
        z = combination(results, np.full(k, 1.0 / k))
        for _ in range(self.iterations):
            w = 1.0 / np.maximum(np.sqrt(sq_dists_to(results, z)), self.nu)
            nxt = combination(results, w / w.sum())
            moved = float(np.linalg.norm((nxt - z).astype(np.float64)))
            z = nxt
            if moved <= self.tol * float(np.linalg.norm(z.astype(np.float64))):
                break
        return z
