"""``trimmed-mean``: coordinate-wise trimmed mean of the deltas (Yin et al. 2018)."""

import math

from fedhpc import kernels as K
from fedhpc.strategy.base import Strategy, columnwise


class TrimmedMean(Strategy):
    """Per coordinate, drop the floor(trim * K) smallest and largest of the K deltas and average the rest.

    ``trim`` in [0, 0.5) is the fraction dropped at each end; 0 is the plain
    (unweighted) mean. Unweighted for the same reason as ``median``.
    """

    name = "trimmed-mean"
    decomposable = False

    def __init__(self, trim: float = 0.1):
        self.trim = self._check("trim", trim, lo=0.0, hi=0.5, hi_open=True)

    def tolerates(self, attackers, clients):
        trimmed = math.floor(self.trim * clients)
        if attackers <= trimmed:
            return ""
        return (f"'trimmed-mean' with trim={self.trim:g} drops {trimmed} of {clients} values at each end, fewer "
                f"than the {attackers} attackers; raise trim to at least {attackers / clients:.3g}")

    def _combine(self, results):
        trim = math.floor(self.trim * len(results))
        return columnwise(results, lambda rows: K.trimmed_mean(rows, trim))
