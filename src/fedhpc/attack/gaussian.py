"""``gaussian``: send noise instead of an update (the Gaussian attack of Blanchard et al. 2017)."""

from fedhpc.attack.base import UpdateAttack


class Gaussian(UpdateAttack):
    """``delta <- N(0, scale^2)`` per coordinate (default std 1), drawn from the attack's seeded stream."""

    name = "gaussian"
    default_scale = 1.0

    def corrupt(self, delta, rng):
        delta[:] = rng.standard_normal(delta.size, dtype=delta.dtype) * delta.dtype.type(self.scale)
