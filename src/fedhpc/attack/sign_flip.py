"""``sign-flip``: send the trained update reversed and scaled (Damaskinos et al. 2018's reversed gradient)."""

import numpy as np

from fedhpc.attack.base import UpdateAttack


class SignFlip(UpdateAttack):
    """``delta <- -scale * delta`` (default scale 1: the honest step, backwards)."""

    name = "sign-flip"
    default_scale = 1.0

    def corrupt(self, delta, rng):
        np.multiply(delta, np.float32(-self.scale), out=delta)
