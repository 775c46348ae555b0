"""``constant``: every update counts fully, however stale."""

from fedhpc.staleness.base import Staleness


class Constant(Staleness):
    """s(tau) = 1."""

    name = "constant"

    def weight(self, tau: int) -> float:
        return 1.0
