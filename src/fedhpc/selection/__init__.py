"""Client selection: which clients train in a round.

>>> from fedhpc.selection import get_selector
>>> selector = get_selector("adaptive", miss_limit=3)
>>> selector.set_costs(down_bytes=weights.nbytes, up_bytes=update_bytes, reference_cost=2.0)   # any selector; after a resume too
>>> chosen, log = selector.select(round, available, k, profiles, history, rng)
>>> ...                                          # the round runs
>>> selector.update(outcome, history, round)     # history: id -> ClientHistory (a dict, or the runtime's ClientTable)

The registry is explicit: one selector per module, listed here by name.
"""

from __future__ import annotations

from fedhpc.registry import build
from fedhpc.selection.adaptive import AdaptiveSelector
from fedhpc.selection.base import Selector
from fedhpc.selection.poisson import PoissonSelector
from fedhpc.selection.random import RandomSelector

SELECTORS: dict[str, type[Selector]] = {cls.name: cls for cls in (RandomSelector, AdaptiveSelector, PoissonSelector)}


def get_selector(name: str, **params) -> Selector:
    """Build the selector registered as ``name`` with its parameters.

    Raises ``ValueError`` naming the selector and the allowed names or parameters.
    """
    return build("selector", SELECTORS, name, params)


__all__ = ["SELECTORS", "Selector", "get_selector"]
