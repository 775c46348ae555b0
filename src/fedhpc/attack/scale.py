"""``scale``: model replacement by boosting (Bagdasaryan et al. 2020): the update scaled up."""

import numpy as np

from fedhpc.attack.base import UpdateAttack


class Scale(UpdateAttack):
    """``delta <- scale * delta`` (default 10: roughly what it takes for one client among ten to
    replace the averaged model with its own)."""

    name = "scale"
    default_scale = 10.0

    def corrupt(self, delta, rng):
        np.multiply(delta, np.float32(self.scale), out=delta)
