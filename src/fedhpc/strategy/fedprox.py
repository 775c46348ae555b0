"""``fedprox``: FedProx (Li et al. 2020), FedAvg aggregation with a proximal term on the clients."""

from fedhpc.strategy.fedavg import FedAvg


class FedProx(FedAvg):
    """FedAvg on the server; clients minimise ``loss + mu/2 * ||w - w_global||^2``.

    The proximal term is what makes FedProx differ, and it lives in local
    training: the runtime asks :meth:`client_mu` and passes it to the trainers.
    """

    name = "fedprox"

    def __init__(self, mu: float = 0.01):
        self.mu = self._check("mu", mu, lo=0.0, lo_open=True)

    def client_mu(self) -> float:
        return self.mu
