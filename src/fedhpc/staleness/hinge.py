"""``hinge``: full weight up to b steps of staleness, then 1 / (a (tau - b) + 1)."""

from fedhpc.staleness.base import Staleness


class Hinge(Staleness):
    """s(tau) = 1 for tau <= b, else 1 / (a (tau - b) + 1); a > 0, b >= 0 (Xie et al. use a = 10, b = 4)."""

    name = "hinge"

    def __init__(self, a: float = 10.0, b: int = 4):
        self.a = self._check("a", a, lo=0, lo_open=True, hi=1e6)
        self.b = self._check("b", b, integer=True, lo=0)

    def weight(self, tau: int) -> float:
        return 1.0 if tau <= self.b else 1.0 / (self.a * (tau - self.b) + 1.0)
