"""The staleness weight of asynchronous aggregation: how much an update counts once the
global model has moved on since the client started from it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from fedhpc.registry import check_number


class Staleness(ABC):
    """``s(tau)``: the factor on an update that started ``tau`` server steps ago, in (0, 1]
    with ``s(0) = 1`` (Xie et al. 2019, "Asynchronous Federated Optimization", section 5.2).
    Subclasses set ``name`` (the registry key) and take their parameters as keyword
    arguments of ``__init__``, validated there."""

    name: ClassVar[str]

    @abstractmethod
    def weight(self, tau: int) -> float:
        """The factor on an update of staleness ``tau`` (>= 0)."""

    def _check(self, param: str, value: Any, **rule) -> Any:
        return check_number(f"staleness '{self.name}'", param, value, **rule)
