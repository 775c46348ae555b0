"""Differential privacy: user-level DP-FedAvg with central Gaussian noise (McMahan et al. 2018).

* :func:`clip` bounds a client's update in the client step (L2, ``dp.clip``);
* :func:`gaussian_noise` is what rank 0 adds to the round's mean: std
  ``noise_multiplier * clip / expected clients``, seeded by (run seed, round);
* :mod:`~fedhpc.privacy.adaptive` moves the clip toward a quantile of the
  update norms (Andrew et al. 2021), within the same budget;
* :class:`Accountant` composes the rounds' subsampled Gaussian mechanisms with
  the ``dp-accounting`` library (RDP and PLD), never with a formula of ours.
"""

from fedhpc.privacy.accountant import Accountant
from fedhpc.privacy.mechanism import clip, gaussian_noise, noise_seed

__all__ = ["Accountant", "clip", "gaussian_noise", "noise_seed"]
