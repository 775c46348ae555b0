"""``centered-clipping``: centered clipping (Karimireddy et al. 2021, "Learning from History for
Byzantine Robust Optimization")."""

import numpy as np

from fedhpc.strategy.base import StateDict, Strategy, combination, majority, sq_dists_to


class CenteredClipping(Strategy):
    """Clip every delta to radius ``tau`` around a center, and move the center by their mean.

    The center v starts from the previous round's aggregate (zero in the
    first round: the paper's momentum is the server's history), then
    ``iterations`` times: v <- v + mean_i (delta_i - v) * min(1, tau / ||delta_i - v||).
    A Byzantine delta moves v by at most tau / K whatever its size; the
    deltas farther than tau from the result are :attr:`flagged`.
    Unweighted; the center is server state, kept in checkpoints. Its breakdown
    point is 1/2 (the paper's convergence bound asks for a smaller fraction).
    """

    name = "centered-clipping"
    decomposable = False

    def __init__(self, tau: float = 1.0, iterations: int = 1):
        self.tau = self._check("tau", tau, lo=0.0, lo_open=True)
        self.iterations = self._check("iterations", iterations, integer=True, lo=1)
        self.center: np.ndarray | None = None

    def tolerates(self, attackers, clients):
        return majority(self.name, attackers, clients)

    def _combine(self, results):
        k, n = len(results), results[0].size
        v = self.center.copy() if self.center is not None and self.center.size == n else np.zeros(n, np.float32)
        for _ in range(self.iterations):
            dist = np.sqrt(sq_dists_to(results, v))
            c = np.minimum(1.0, self.tau / np.maximum(dist, np.finfo(np.float64).tiny)) / k
            v = (combination(results, c) + (1.0 - c.sum()) * v.astype(np.float64)).astype(np.float32)
        self.center = v.copy()
        # flagged: the deltas it would still clip around the result (not those clipped on the way
        # from a first-round center of zero, where every large honest delta is)
        far = np.sqrt(sq_dists_to(results, v)) > self.tau
        self.flagged = frozenset(r.client_id for r, f in zip(results, far) if f)
        return v

    def state_dict(self) -> StateDict:
        return {} if self.center is None else {"center": self.center.copy()}

    def load_state_dict(self, state: StateDict) -> None:
        extra = sorted(set(state) - {"center"})
        if extra:
            raise ValueError(f"strategy '{self.name}' keeps only 'center', got keys {extra}")
        center = state.get("center")
        self.center = None if center is None else np.array(center, dtype=np.float32)
