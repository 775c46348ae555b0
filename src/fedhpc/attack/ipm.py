"""``ipm``: inner-product manipulation (Xie et al. 2020, "Fall of Empires")."""

import numpy as np

from fedhpc.attack.base import OmniscientAttack


class InnerProduct(OmniscientAttack):
    """Every attacker sends ``-scale * mean`` of the honest updates (default scale 0.5: small enough
    to pass distance-based defenses, and the aggregate's inner product with the true mean turns
    negative once the attackers' share outweighs it)."""

    name = "ipm"
    default_scale = 0.5

    def forge(self, mean, std, clients, attackers):
        return (-self.scale * mean).astype(np.float32)
