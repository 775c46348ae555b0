"""Differential privacy: user-level DP-FedAvg with central Gaussian noise (McMahan et al. 2018).

* :func:`clip` bounds a client's update in the client step (L2, ``dp.clip``);
* :func:`gaussian_noise` is what rank 0 adds to the round's mean: std
  ``noise_multiplier * clip / expected clients``, seeded by (run seed, round);
  with ``dp.placement = "client"`` (and secure aggregation) each client adds
  its share instead (:func:`client_noise`);
* :mod:`~fedhpc.privacy.adaptive` moves the clip toward a quantile of the
  update norms (Andrew et al. 2021), within the same budget;
* :class:`Accountant` composes the rounds' subsampled Gaussian mechanisms with
  the ``dp-accounting`` library (RDP and PLD), never with a formula of ours.
"""

from fedhpc.privacy.accountant import Accountant
from fedhpc.privacy.mechanism import client_noise, clip, gaussian_noise, noise_seed

__all__ = ["Accountant", "client_noise", "clip", "gaussian_noise", "noise_seed"]
