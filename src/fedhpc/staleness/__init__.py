"""Staleness weights of asynchronous aggregation (``[async.staleness]``).

>>> from fedhpc.staleness import get_staleness
>>> get_staleness("hinge", a=10, b=4).weight(6)   # 1 / (10 * 2 + 1)

The registry is explicit: one weight per module, listed here by name.
"""

from __future__ import annotations

from fedhpc.registry import build
from fedhpc.staleness.base import Staleness
from fedhpc.staleness.constant import Constant
from fedhpc.staleness.hinge import Hinge
from fedhpc.staleness.polynomial import Polynomial

STALENESS: dict[str, type[Staleness]] = {cls.name: cls for cls in (Constant, Polynomial, Hinge)}


def get_staleness(name: str, **params) -> Staleness:
    """Build the staleness weight registered as ``name`` with its parameters.

    Raises ``ValueError`` naming the weight and the allowed names or parameters.
    """
    return build("staleness", STALENESS, name, params)


__all__ = ["STALENESS", "Staleness", "get_staleness"]
