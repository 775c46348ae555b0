"""The strategy interface: how the server turns one round's updates into new weights.

Like Flower, a strategy receives the round's results *and* failures as data
(:class:`~fedhpc.types.RoundOutcome`); like APPFL, *when* a round closes
(deadline, fastest k) is the runtime's business, not the strategy's. Weights and
deltas are flat float32 vectors; the heavy arithmetic runs in the kernels of
:mod:`fedhpc.kernels`.

Two kinds of rules:

* **sum-decomposable** (``decomposable``): the aggregate is the mean of the
  deltas weighted by a per-client :meth:`Strategy.coefficient` that depends
  on that client alone (FedAvg, FedProx, weighted by samples or loss, the
  aggregate of FedAdam/FedYogi, with federated dropout's coverage). Such a
  sum lives in the exact integer ring of :mod:`fedhpc.ring`, so the runtime
  folds each update in as it arrives, on the rank that hosts it, and only
  calls :meth:`Strategy.step` with the mean;
* **the others** (median, trimmed mean, Krum, weighted by update variance)
  need every update of the round at once and are given them in
  :meth:`Strategy.aggregate`.
"""

from __future__ import annotations

from abc import ABC
import math
from typing import Any, ClassVar

import numpy as np

from fedhpc import kernels as K
from fedhpc.registry import check_number
from fedhpc.ring import DEFAULT_SCALE_BITS, Accumulator, Ring
from fedhpc.types import ClientResult, RoundOutcome

StateDict = dict[str, "np.ndarray | float | int"]


class Strategy(ABC):
    """Aggregation rule of the server.

    Subclasses set ``name`` (the registry key) and take their parameters as
    keyword arguments of ``__init__`` (validated there, ``ValueError`` naming
    the parameter). A sum-decomposable rule may override :meth:`coefficient`;
    one that is not sets ``decomposable = False`` and implements
    :meth:`_combine`; a server optimizer overrides :meth:`step` and the state
    methods.
    """

    name: ClassVar[str]
    decomposable: bool = True
    #: the clients the last :meth:`aggregate` set aside or clipped (what counts against their trust)
    flagged: frozenset[int] = frozenset()

    def coefficient(self, num_samples: int, loss: float) -> float:
        """The client's weight in the mean before normalization (>= 0; 0 = it does not
        count): its sample count, as in FedAvg."""
        return float(num_samples)

    def aggregate(self, weights: np.ndarray, outcome: RoundOutcome, ring: Ring | None = None,
                  norm: float | None = None) -> np.ndarray:
        """Return the new global weights (a new float32 array) after one round.

        ``weights`` is the current flat global model; ``outcome`` holds the
        round's validated results and its failures. The result does not depend
        on the order of the results. A sum-decomposable rule folds them into
        ``ring`` (default: :data:`~fedhpc.ring.DEFAULT_SCALE_BITS`) with the
        coefficients divided by ``norm`` (default: their sum), as the runtime
        does on its ranks. With no results the weights come back unchanged (as
        a copy) and server state does not advance. Raises ``ValueError`` for a
        delta of the wrong dtype or length, or for a client reported twice
        (both are bugs in the caller, not in a client), and
        :class:`~fedhpc.ring.FoldError` for a delta the ring cannot hold.
        """
        w = K.as_f32(weights)
        self.flagged = frozenset()
        results = sorted(outcome.results, key=lambda r: r.client_id)
        if not results:
            return w.copy()
        for prev, r in zip(results, results[1:]):
            if prev.client_id == r.client_id:
                raise ValueError(f"strategy '{self.name}': client {r.client_id} has two results in round {outcome.round}")
        for r in results:
            d = r.delta
            if r.frame is not None and d is None and r.frame.n == w.size:
                continue
            if not (isinstance(d, np.ndarray) and d.dtype == np.float32 and d.shape == w.shape and d.flags.c_contiguous):
                raise ValueError(
                    f"strategy '{self.name}': delta of client {r.client_id} must be a C-contiguous float32 vector "
                    f"of {w.size} values, got {getattr(d, 'dtype', type(d).__name__)} {getattr(d, 'shape', '')}"
                )
        if not self.decomposable:
            return self.step(w, self._combine(results))
        coefs = np.array([self.coefficient(r.num_samples, r.loss) for r in results])
        ring = ring or Ring(DEFAULT_SCALE_BITS, len(results))
        return self.step(w, weighted_mean(results, coefs / (norm or math.fsum(coefs) or 1.0), ring))

    def _combine(self, results: list[ClientResult]) -> np.ndarray:
        """The round's aggregate delta (new float32 array) from results sorted by client id
        (at least one); rules that are not sum-decomposable implement it."""
        raise NotImplementedError(f"strategy '{self.name}' is sum-decomposable: it aggregates in the ring")

    def step(self, weights: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """The new weights from the round's aggregate delta, which it may overwrite (the
        runtime hands over a buffer of its own: no third model-sized array at rank 0);
        plain strategies use a server learning rate of 1."""
        return np.add(weights, delta, out=delta)

    def tolerates(self, attackers: int, clients: int) -> str:
        """Why this rule cannot be trusted with ``attackers`` Byzantine clients among the
        ``clients`` of a round ("" = it can, or it makes no such claim: the averaging rules)."""
        return ""

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


def fold_result(acc: Accumulator, result: ClientResult, coef: float) -> None:
    """Fold one result into ``acc`` (only where it trained, under federated dropout)."""
    if result.kept is None:
        acc.fold(result.dense(), coef)
    else:
        acc.fold(np.ascontiguousarray(result.dense()[result.kept]), coef, result.kept)


def weighted_mean(results: list[ClientResult], coefs: np.ndarray, ring: Ring) -> np.ndarray:
    """``sum_i coefs[i] * delta_i / sum_i coefs[i]`` computed in ``ring``: exact, so the
    result does not depend on the order of the results.

    Results that trained only part of the model (federated dropout, ``kept``)
    count only where they trained: a coordinate is divided by its coverage, the
    coefficients of the clients that trained it. A result with coefficient 0
    does not count; if none counts the mean is zero (the round leaves the
    model where it was).
    """
    coefs = np.asarray(coefs, dtype=np.float64)
    n = results[0].size
    acc = Accumulator(ring, n, coverage=any(r.kept is not None for r in results))
    used = []
    for r, c in zip(results, coefs):
        if c > 0:
            fold_result(acc, r, float(c))
            used.append(float(c))
    return acc.mean(math.fsum(used)) if used else np.zeros(n, dtype=np.float32)


#: Coordinates per block of the rules that need every update: a (K, BLOCK) float32 stack at a time.
BLOCK = 1 << 16


def blocks(results: list[ClientResult], block: int = BLOCK):
    """Yield ``(lo, hi, rows)`` over the model: ``rows`` the C-contiguous (K, hi - lo) float32
    stack of the results' values ``[lo, hi)``, decoded from their frames block by block, so
    the robust rules hold the frames and one block per client, never K dense updates."""
    n = results[0].size
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        rows = np.empty((len(results), hi - lo), dtype=np.float32)
        for i, r in enumerate(results):
            rows[i] = r.row(lo, hi)
        yield lo, hi, rows


def sq_dists_to(results: list[ClientResult], point: np.ndarray) -> np.ndarray:
    """(K,) squared distances (double) of the results' deltas to ``point``, block by block."""
    out = np.zeros(len(results))
    for lo, hi, rows in blocks(results):
        out += K.sq_dists_to(rows, point[lo:hi])
    return out


def combination(results: list[ClientResult], coefs: np.ndarray) -> np.ndarray:
    """``sum_i coefs[i] * delta_i`` (float32), each block summed in float64 over the results in order."""
    coefs = np.asarray(coefs, dtype=np.float64)
    out = np.empty(results[0].size, dtype=np.float32)
    for lo, hi, rows in blocks(results):
        acc = np.zeros(hi - lo)
        for c, row in zip(coefs, rows):  # row by row: the same bits on any BLAS and CPU (a matmul's order is not)
            acc += c * row.astype(np.float64)
        out[lo:hi] = acc
    return out


def majority(name: str, attackers: int, clients: int) -> str:
    """The rule of a 1/2 breakdown point: why ``attackers`` of ``clients`` are too many ("" = fine)."""
    if 2 * attackers < clients:
        return ""
    return (f"'{name}' holds while the attackers are fewer than half of a round's clients; {attackers} of "
            f"{clients} are not")


def columnwise(results: list[ClientResult], reduce) -> np.ndarray:
    """``reduce(rows)`` of every block of coordinates (see :func:`blocks`), as one vector."""
    parts = [(lo, hi, reduce(rows)) for lo, hi, rows in blocks(results)]
    out = np.empty(parts[-1][1], dtype=np.float32)
    for lo, hi, part in parts:
        out[lo:hi] = part
    return out
