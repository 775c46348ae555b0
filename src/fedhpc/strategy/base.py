"""The strategy interface: how the server turns one round's updates into new weights.

Like Flower, a strategy receives the round's results *and* failures as data
(:class:`~fedhpc.types.RoundOutcome`); like APPFL, *when* a round closes
(deadline, fastest k) is the runtime's business, not the strategy's. Weights and
deltas are flat float32 vectors; the heavy arithmetic runs in the kernels of
:mod:`fedhpc.kernels`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from fedhpc import kernels as K
from fedhpc.registry import check_number
from fedhpc.types import ClientResult, RoundOutcome

StateDict = dict[str, "np.ndarray | float | int"]


class Strategy(ABC):
    """Aggregation rule of the server.

    Subclasses set ``name`` (the registry key), take their parameters as keyword
    arguments of ``__init__`` (validated there, ``ValueError`` naming the
    parameter) and implement :meth:`_combine`; a server optimizer also overrides
    :meth:`_step` and the state methods.
    """

    name: ClassVar[str]

    def aggregate(self, weights: np.ndarray, outcome: RoundOutcome) -> np.ndarray:
        """Return the new global weights (a new float32 array) after one round.

        ``weights`` is the current flat global model; ``outcome`` holds the
        round's validated results and its failures. Results are combined in
        ascending ``client_id`` order whatever their arrival order, so the model
        is bitwise reproducible. With no results the weights come back
        unchanged (as a copy) and server state does not advance. Raises
        ``ValueError`` for a delta of the wrong dtype or length, or for a client
        reported twice (both are bugs in the caller, not in a client).
        """
        w = K.as_f32(weights)
        results = sorted(outcome.results, key=lambda r: r.client_id)
        if not results:
            return w.copy()
        for prev, r in zip(results, results[1:]):
            if prev.client_id == r.client_id:
                raise ValueError(f"strategy '{self.name}': client {r.client_id} has two results in round {outcome.round}")
        for r in results:
            d = r.delta
            if not (isinstance(d, np.ndarray) and d.dtype == np.float32 and d.shape == w.shape and d.flags.c_contiguous):
                raise ValueError(
                    f"strategy '{self.name}': delta of client {r.client_id} must be a C-contiguous float32 vector "
                    f"of {w.size} values, got {getattr(d, 'dtype', type(d).__name__)} {getattr(d, 'shape', '')}"
                )
        return self._step(w, self._combine(results))

    @abstractmethod
    def _combine(self, results: list[ClientResult]) -> np.ndarray:
        """The round's aggregate delta (new float32 array) from results sorted by client id (at least one)."""

    def _step(self, weights: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Apply the aggregate delta; plain strategies use a server learning rate of 1."""
        return weights + delta

    def client_mu(self) -> float:
        """The FedProx proximal coefficient clients add to their local loss (0 = none)."""
        return 0.0

    def state_dict(self) -> StateDict:
        """Server-side state for a checkpoint; empty for stateless rules."""
        return {}

    def load_state_dict(self, state: StateDict) -> None:
        """Restore what :meth:`state_dict` returned (exact round trip)."""
        if state:
            raise ValueError(f"strategy '{self.name}' keeps no server state, got keys {sorted(state)}")

    def _check(self, param: str, value: Any, **rule) -> Any:
        """Validate a constructor parameter (see :func:`fedhpc.registry.check_number`)."""
        return check_number(f"strategy '{self.name}'", param, value, **rule)


def sample_counts(results: list[ClientResult]) -> np.ndarray:
    """The clients' sample counts as float64 (the FedAvg weights before normalization)."""
    return np.array([r.num_samples for r in results], dtype=np.float64)


def weighted_mean(results: list[ClientResult], coefs: np.ndarray) -> np.ndarray:
    """Sum of ``coefs[i] * results[i].delta`` with the coefficients normalized to 1.

    The coefficients are normalized in float64 and the sum is accumulated in
    float32 by ``K.axpy`` in the order given. Results that trained only part of
    the model (federated dropout, ``kept``) count only where they trained. Coefficients must be >= 0; if
    they sum to zero (say every client reported 0 samples) the mean is
    unweighted rather than undefined, so such a round still moves the model.
    """
    coefs = np.asarray(coefs, dtype=np.float64)
    total = coefs.sum()
    coefs = coefs / total if np.isfinite(total) and total > 0 else np.full(coefs.size, 1.0 / coefs.size)
    acc = np.zeros_like(results[0].delta)
    for r, c in zip(results, coefs):
        K.axpy(acc, r.delta, float(c))
    if all(r.kept is None for r in results):
        return acc
    # federated dropout: a coordinate is the mean over the clients that trained it
    coverage = np.zeros_like(acc)
    for r, c in zip(results, coefs):
        if r.kept is None:
            coverage += np.float32(c)
        else:
            K.sparse_axpy(coverage, r.kept, np.ones(r.kept.size, np.float32), float(c))
    np.divide(acc, coverage, out=acc, where=coverage > 0)
    return acc


def stack(results: list[ClientResult]) -> np.ndarray:
    """The deltas as a C-contiguous (K, n) float32 array, one row per result, for the robust kernels."""
    return np.stack([r.delta for r in results])
