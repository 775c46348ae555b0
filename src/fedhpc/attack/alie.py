"""``alie``: "A little is enough" (Baruch et al. 2019), the omniscient attack that hides in the spread."""

import math
from statistics import NormalDist

import numpy as np

from fedhpc.attack.base import OmniscientAttack


class ALittleIsEnough(OmniscientAttack):
    """Every attacker sends ``mean - z * std`` of the honest updates, per coordinate.

    With n clients of which m attack, ``s = floor(n / 2 + 1) - m`` honest clients
    must be won over, and ``z = Phi^-1((n - s) / n)`` is the largest shift that
    keeps the forgery closer to the mean than that many honest updates (the
    paper's z_max); ``scale`` > 0 sets z instead.
    """

    name = "alie"
    default_scale = 0.0  # 0: the paper's z_max for the round's n and m

    def forge(self, mean, std, clients, attackers):
        z = self.scale or z_max(clients, attackers)
        return (mean - z * std).astype(np.float32)


def z_max(clients: int, attackers: int) -> float:
    """Baruch et al.'s z_max for ``clients`` reporting of which ``attackers`` attack (capped where
    the attackers are so many that any shift passes: (n - s) / n >= 1)."""
    s = math.floor(clients / 2 + 1) - attackers
    return NormalDist().inv_cdf(min((clients - s) / clients, 1 - 1e-6))
