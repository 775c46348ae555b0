"""``bulyan``: Bulyan (El Mhamdi et al. 2018, "The Hidden Vulnerability of Distributed Learning in Byzantium")."""

import logging

import numpy as np

from fedhpc import kernels as K
from fedhpc.strategy.base import Strategy, columnwise
from fedhpc.strategy.krum import f_bound, krum_scores, median_instead, pairwise_sq_dists

log = logging.getLogger(__name__)


class Bulyan(Strategy):
    """Krum to select, then a trimmed mean around the median, assuming at most ``f`` Byzantine clients.

    With K updates: pick theta = K - 2f of them by Krum, one at a time (each
    pick leaves the set; ties go to the lower client id); then, per coordinate,
    average the beta = theta - 2f picked values nearest their median
    (:func:`fedhpc.kernels.closest_mean`). Unweighted; the 2f not picked are
    :attr:`flagged`. Bulyan's guarantee needs
    K >= 4f + 3: with fewer updates the round falls back to the coordinate
    median and logs a warning.
    """

    name = "bulyan"
    decomposable = False

    def __init__(self, f: int = 1):
        self.f = self._check("f", f, integer=True, lo=0)

    def tolerates(self, attackers, clients):
        return f_bound(self.name, self.f, 4 * self.f + 3, attackers, clients)

    def _combine(self, results):
        n, f = len(results), self.f
        if n < 4 * f + 3:
            return median_instead(log, self.name, results, f, 4 * f + 3)
        dists = pairwise_sq_dists(results)
        left, picked = list(range(n)), []
        for _ in range(n - 2 * f):
            sub = dists[np.ix_(left, left)]
            picked.append(left.pop(int(np.argmin(krum_scores(sub, f)))))  # argmin: the first, lowest id
        picked.sort()
        self.flagged = frozenset(results[i].client_id for i in left)
        log.debug("bulyan: selected client(s) %s of %d", [results[i].client_id for i in picked], n)
        chosen = [results[i] for i in picked]
        return columnwise(chosen, lambda rows: K.closest_mean(rows, len(picked) - 2 * f))
