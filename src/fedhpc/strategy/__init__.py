"""Aggregation strategies: how the server turns a round's updates into new global weights.

>>> from fedhpc.strategy import get_strategy
>>> strategy = get_strategy("trimmed-mean", trim=0.2)
>>> weights = strategy.aggregate(weights, outcome)   # outcome: fedhpc.types.RoundOutcome

The registry is explicit: one strategy per module, listed here by name.
"""

from __future__ import annotations

from fedhpc.registry import build
from fedhpc.strategy.base import Strategy
from fedhpc.strategy.bulyan import Bulyan
from fedhpc.strategy.centered_clipping import CenteredClipping
from fedhpc.strategy.fedadam import FedAdam
from fedhpc.strategy.fedavg import FedAvg
from fedhpc.strategy.fedprox import FedProx
from fedhpc.strategy.fedyogi import FedYogi
from fedhpc.strategy.geomedian import GeometricMedian
from fedhpc.strategy.krum import Krum
from fedhpc.strategy.median import Median
from fedhpc.strategy.trimmed_mean import TrimmedMean
from fedhpc.strategy.weighted import Weighted

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedAvg, FedProx, Weighted, FedAdam, FedYogi, Median, TrimmedMean, Krum, Bulyan,
                              GeometricMedian, CenteredClipping)
}


def get_strategy(name: str, **params) -> Strategy:
    """Build the strategy registered as ``name`` with its parameters.

    Raises ``ValueError`` naming the strategy and the allowed names or parameters.
    """
    return build("strategy", STRATEGIES, name, params)


__all__ = ["STRATEGIES", "Strategy", "get_strategy"]
