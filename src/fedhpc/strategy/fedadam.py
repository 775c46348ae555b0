"""``fedadam``: the FedAdam server optimizer of Reddi et al. 2021, "Adaptive Federated Optimization"."""

import numpy as np

from fedhpc import kernels as K
from fedhpc.strategy.base import StateDict, Strategy


class FedAdam(Strategy):
    """Adam on the server, with the sample-weighted mean delta as pseudo-gradient.

    Algorithm 2 of the paper, per round with pseudo-gradient d::

        m <- beta1 * m + (1 - beta1) * d
        v <- beta2 * v + (1 - beta2) * d^2
        w <- w + server_lr * m / (sqrt(v) + tau)

    with m = 0 and v = tau^2 at the start (the paper's v_{-1} >= tau^2) and,
    as in the paper, no bias correction. m and v are float32 vectors created
    on the first aggregation (their length is the model's) and are the
    checkpointed state, with the step count.
    """

    name = "fedadam"

    def __init__(self, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3):
        self.server_lr = self._check("server_lr", server_lr, lo=0.0, lo_open=True)
        self.beta1 = self._check("beta1", beta1, lo=0.0, hi=1.0, hi_open=True)
        self.beta2 = self._check("beta2", beta2, lo=0.0, hi=1.0, hi_open=True)
        self.tau = self._check("tau", tau, lo=0.0, lo_open=True)
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None
        self.steps = 0

    def step(self, weights, delta):
        if self.m is None:
            self.m = np.zeros_like(weights)
            self.v = np.full_like(weights, self.tau**2)
        elif self.m.size != weights.size:
            raise ValueError(
                f"strategy '{self.name}': optimizer state has {self.m.size} values, the model has {weights.size}"
            )
        self.m *= self.beta1
        K.axpy(self.m, delta, 1.0 - self.beta1)
        self._update_v(delta * delta)
        self.steps += 1
        out = weights.copy()
        K.axpy(out, self.m / (np.sqrt(self.v) + np.float32(self.tau)), self.server_lr)
        return out

    def _update_v(self, d2: np.ndarray) -> None:
        """Second-moment update from the squared pseudo-gradient (Adam: an EMA)."""
        self.v *= self.beta2
        K.axpy(self.v, d2, 1.0 - self.beta2)

    def state_dict(self) -> StateDict:
        """``steps`` and, once the first round has been aggregated, copies of ``m`` and ``v``."""
        state: StateDict = {"steps": self.steps}
        if self.m is not None and self.v is not None:
            state.update(m=self.m.copy(), v=self.v.copy())
        return state

    def load_state_dict(self, state: StateDict) -> None:
        keys = set(state)
        if keys not in ({"steps"}, {"steps", "m", "v"}):
            raise ValueError(f"strategy '{self.name}': state must hold steps, or steps, m and v; got {sorted(keys)}")
        if "m" in state:
            m, v = K.as_f32(state["m"]).copy(), K.as_f32(state["v"]).copy()
            if m.size != v.size:
                raise ValueError(f"strategy '{self.name}': state m has {m.size} values but v has {v.size}")
            self.m, self.v = m, v
        else:
            self.m = self.v = None
        self.steps = int(state["steps"])
