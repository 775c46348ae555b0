"""``random``: uniform selection without replacement (FedAvg's client sampling)."""

from fedhpc.selection.base import Selector


class RandomSelector(Selector):
    """Choose k of the available clients uniformly at random, ignoring profiles and history.

    History is still kept (by :meth:`Selector.update`) so that run records and
    a later switch to ``adaptive`` see it; nothing is ever excluded.
    """

    name = "random"

    def _select(self, round, pool, n, profiles, history, rng):
        # positions, then ids: the same draw as choosing from the list, without converting it
        chosen = [pool[i] for i in rng.choice(len(pool), size=n, replace=False)] if n else []
        return chosen, [f"round {round}: chose {n} of {len(pool)} available client(s) uniformly at random"]
