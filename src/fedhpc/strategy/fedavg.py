"""``fedavg``: FedAvg (McMahan et al. 2017), the sample-weighted mean of the deltas."""

from fedhpc.strategy.base import Strategy


class FedAvg(Strategy):
    """w <- w + sum_i (n_i / sum_j n_j) * delta_i, with n_i the client's sample count."""

    name = "fedavg"
