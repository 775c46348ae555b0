"""``median``: coordinate-wise median of the deltas (Yin et al. 2018)."""

from fedhpc import kernels as K
from fedhpc.strategy.base import Strategy, columnwise, majority


class Median(Strategy):
    """w <- w + median_i(delta_i), per coordinate (mean of the middle two for an even count).

    Unweighted by design: any weighting by self-reported sample counts would
    let a Byzantine client claim a huge count and dominate.
    """

    name = "median"
    decomposable = False

    def tolerates(self, attackers, clients):
        return majority(self.name, attackers, clients)

    def _combine(self, results):
        return columnwise(results, K.median)
