"""``poisson``: each available client independently, with probability k / available."""

import numpy as np

from fedhpc.selection.base import Selector


class PoissonSelector(Selector):
    """Poisson sampling: every available client is in the round with probability
    ``k / len(available)``, independently of the others, so the round has ``k`` clients on
    average and any number from 0 to all. It is what differential privacy's accountant
    assumes (``PoissonSampledDpEvent``); like ``random`` it keeps the history and excludes
    nobody."""

    name = "poisson"
    exact = False

    def _select(self, round, pool, n, profiles, history, rng):
        q = n / len(pool) if pool else 0.0
        chosen = np.asarray(pool, dtype=np.int64)[rng.random(len(pool)) < q].tolist()
        return chosen, [f"round {round}: sampled {len(chosen)} of {len(pool)} available client(s), each with "
                        f"probability {q:.4g}"]
