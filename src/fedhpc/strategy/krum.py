"""``krum``: Krum and multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries")."""

import logging

import numpy as np

from fedhpc import kernels as K
from fedhpc.ring import DEFAULT_SCALE_BITS, Ring
from fedhpc.strategy.base import Strategy, blocks, columnwise, weighted_mean

log = logging.getLogger(__name__)


class Krum(Strategy):
    """Keep the update(s) closest to their neighbours, assuming at most ``f`` Byzantine clients.

    With K updates, update i scores the sum of its squared distances to its
    K - f - 2 nearest other updates; the ``m`` lowest scores win (ties go to
    the lower client id) and their deltas are averaged unweighted (``m`` = 1 is
    Krum, more is multi-Krum; at most K - f are kept, since only that many can
    be assumed honest); the f worst scores are :attr:`flagged`. Krum's guarantee needs K > 2f + 2: with fewer updates
    the round falls back to the coordinate median and logs a warning.
    """

    name = "krum"
    decomposable = False

    def __init__(self, f: int = 1, m: int = 1):
        self.f = self._check("f", f, integer=True, lo=0)
        self.m = self._check("m", m, integer=True, lo=1)

    def tolerates(self, attackers, clients):
        return f_bound(self.name, self.f, 2 * self.f + 3, attackers, clients)

    def _combine(self, results):
        n = len(results)
        if n < 2 * self.f + 3:
            return median_instead(log, self.name, results, self.f, 2 * self.f + 3)
        scores = krum_scores(pairwise_sq_dists(results), self.f)
        # rows are in client-id order, so a stable sort breaks score ties by lower id
        order = np.argsort(scores, kind="stable")
        best = np.sort(order[: min(self.m, n - self.f)])
        # the f it scores worst are the ones it takes for Byzantine (m only says how many it averages)
        self.flagged = frozenset(results[i].client_id for i in order[n - self.f:])
        log.debug("krum: kept client(s) %s of %d", [results[i].client_id for i in best], n)
        return weighted_mean([results[i] for i in best], np.ones(best.size), Ring(DEFAULT_SCALE_BITS, best.size))


def f_bound(name: str, f: int, least: int, attackers: int, clients: int) -> str:
    """Why a rule that assumes at most ``f`` attackers and needs ``least`` clients a round cannot
    hold with ``attackers`` of ``clients`` ("" = it can)."""
    if attackers > f:
        return f"'{name}' with f={f} assumes at most {f} attackers, not {attackers}; raise f"
    if clients < least:
        return (f"'{name}' with f={f} needs at least {least} clients a round, not {clients}; raise "
                f"clients.per_round or lower f")
    return ""


def median_instead(logger: logging.Logger, name: str, results, f: int, least: int) -> np.ndarray:
    """The coordinate median of a round with fewer than the ``least`` updates the rule needs for
    ``f``, said in the rule's log."""
    logger.warning("%s: %d update(s) are too few to tolerate f=%d Byzantine clients (need %d); using the coordinate "
                   "median this round", name, len(results), f, least)
    return columnwise(results, K.median)


def pairwise_sq_dists(results) -> np.ndarray:
    """(K, K) squared distances between the results' deltas (double), block by block."""
    n = len(results)
    dists = np.zeros((n, n))
    for _, _, rows in blocks(results):  # squared distances add up over blocks of coordinates
        dists += K.sq_dists(rows)
    return dists


def krum_scores(dists: np.ndarray, f: int) -> np.ndarray:
    """Each update's Krum score: the sum of its squared distances to its K - f - 2 nearest
    others (at least one)."""
    n = len(dists)
    others = dists[~np.eye(n, dtype=bool)].reshape(n, n - 1)  # drop each update's distance to itself
    return np.sort(others, axis=1)[:, : max(n - f - 2, 1)].sum(axis=1)
