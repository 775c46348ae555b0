"""``polynomial``: a stale update counts as (tau + 1)^-a (FedBuff's default is a = 0.5)."""

from fedhpc.staleness.base import Staleness


class Polynomial(Staleness):
    """s(tau) = (tau + 1)^(-a), a > 0."""

    name = "polynomial"

    def __init__(self, a: float = 0.5):
        self.a = self._check("a", a, lo=0, lo_open=True, hi=100)

    def weight(self, tau: int) -> float:
        return float((tau + 1) ** -self.a)
