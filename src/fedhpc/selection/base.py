"""The selector interface: which clients train in a round, and what each round teaches about them.

A selector is a small object built from its parameters; everything it learns
lives in the :class:`~fedhpc.types.ClientHistory` records that the runtime owns,
passes in and checkpoints. Selection is therefore a pure function of (round,
available clients, k, profiles, history, rng state), and a resumed run selects
exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, MutableMapping
from typing import Any, ClassVar

import numpy as np

from fedhpc.registry import check_number
from fedhpc.types import ClientHistory, ClientProfile, ClientResult, RoundOutcome

#: Failure reasons that mean "too slow" rather than "broken"; they count as ``late``.
LATE_REASONS = frozenset({"late", "timeout"})
#: Failure reasons that mean a defense refused the update; they count against the client's trust.
REFUSED_REASONS = frozenset({"norm"})
_TRUST_LOG = 10  # distrusted clients named in the selection log, at most


class Selector(ABC):
    """Choose the round's clients; keep their history up to date.

    Subclasses set ``name`` (the registry key), take their parameters as
    keyword arguments of ``__init__`` (validated, ``ValueError`` naming the
    parameter) and implement :meth:`_select`. ``ema_alpha`` is the weight of
    the newest observation in the moving averages of completion time and
    update quality. ``trust`` in (0, 1/2) leaves out of the pool every client
    whose :func:`reputation` is below it, as long as enough others remain (a
    client never judged is not left out).
    """

    name: ClassVar[str]
    exact: ClassVar[bool] = True  # chooses exactly min(k, available); False: a random number (Poisson sampling)

    def __init__(self, ema_alpha: float = 0.3, trust: float = 0.0):
        self.ema_alpha = self._check("ema_alpha", ema_alpha, lo=0.0, hi=1.0, lo_open=True)
        # below 1/2: a client is left out only once the defenses flagged more of its updates than they kept
        self.trust = self._check("trust", trust, lo=0.0, hi=0.5, hi_open=True)

    def select(
        self,
        round: int,
        available: list[int],
        k: int,
        profiles: Mapping[int, ClientProfile],
        history: Mapping[int, ClientHistory],
        rng: np.random.Generator,
    ) -> tuple[list[int], list[str]]:
        """Return (chosen client ids ascending, log lines explaining the choice).

        Exactly ``min(k, len(available))`` distinct clients are chosen (by a selector
        that is not :attr:`exact`, that many on average). A client
        missing from ``profiles`` or ``history`` is treated as a new client with
        default profile; neither mapping is modified. ``rng`` is the only source
        of randomness.
        """
        k = check_number(f"selector '{self.name}'", "k", k, integer=True, lo=0)
        ids = np.unique(np.asarray(available, dtype=np.int64))  # NumPy: 100,000 ids a round
        if ids.size != len(available):
            raise ValueError(f"selector '{self.name}': available clients contain duplicates: {sorted(available)}")
        pool = ids.tolist()
        n = min(k, len(pool))
        pool, log = self._trusted(round, pool, n, history)
        chosen, why = self._select(round, pool, n, profiles, history, rng)
        log += why
        at = np.searchsorted(ids, chosen)
        assert (len(set(chosen)) == len(chosen) and (len(chosen) == n or not self.exact)
                and np.array_equal(ids[np.minimum(at, ids.size - 1)], chosen)), "selector broke its contract"
        return sorted(chosen), log

    def _trusted(self, round: int, pool: list[int], n: int,
                 history: Mapping[int, ClientHistory]) -> tuple[list[int], list[str]]:
        """The pool without the clients whose reputation is below ``trust`` (the least trusted
        readmitted, best first, if fewer than ``n`` would remain), and a log line naming them."""
        if not self.trust:
            return pool, []
        rep = {c: reputation(history[c]) for c in pool if c in history and history[c].kept + history[c].flagged}
        out = sorted((c for c, v in rep.items() if v < self.trust), key=lambda c: (-rep[c], c))
        back = out[: max(0, n - (len(pool) - len(out)))]
        out = out[len(back):]
        if not out:
            return pool, []
        named = ", ".join(f"{c} ({rep[c]:.2f}: kept {history[c].kept}, flagged {history[c].flagged})"
                          for c in out[:_TRUST_LOG])
        more = f" and {len(out) - _TRUST_LOG} more" if len(out) > _TRUST_LOG else ""
        left = set(out)
        return [c for c in pool if c not in left], [f"round {round}: not selecting {len(out)} client(s) whose "
                                                    f"reputation is below {self.trust:g}: {named}{more}"]

    @abstractmethod
    def _select(
        self,
        round: int,
        pool: list[int],
        n: int,
        profiles: Mapping[int, ClientProfile],
        history: Mapping[int, ClientHistory],
        rng: np.random.Generator,
    ) -> tuple[list[int], list[str]]:
        """Choose exactly ``n`` distinct ids of ``pool`` (ascending, unique, n <= len(pool))."""

    def set_costs(self, down_bytes: int, up_bytes: int, reference_cost: float) -> None:  # noqa: B027 (a hook)
        """Tell the selector what a round costs a client, once the runtime knows the model.

        ``down_bytes`` and ``up_bytes``: the two messages of a client's round
        over its link, the global model down and its encoded update up (see
        :mod:`fedhpc.clock`). ``reference_cost``: clock
        seconds of one round of local training on the reference host
        (``ClientProfile.speed`` = 1.0). Selectors that do not model time
        ignore it, so the runtime can call it whatever selector it built.
        """

    def update(self, outcome: RoundOutcome, history: MutableMapping[int, ClientHistory], round: int,
               flagged: frozenset[int] = frozenset()) -> None:
        """Fold one finished round into ``history`` (in place; new clients get an entry).

        Every client selected in the round must appear in ``outcome``: in
        ``results`` if its update was aggregated, in ``failures`` otherwise
        (late, dropped out, corrupt, ...). A client listed in both (a stale
        update drained next to its valid one) counts as having reported.
        Reporting resets ``consecutive_misses`` and ends any exclusion; a
        failure increments it, and ``late``/``timeout`` count as ``late``,
        other reasons as ``failed``. Reporters also update ``ema_seconds``
        and, from their loss, ``ema_quality`` and ``last_loss``. A reporter
        counts as ``kept`` unless the strategy ``flagged`` it (set it aside
        or clipped it); one the guard refused counts as ``flagged``.
        """
        round = int(round)  # a NumPy integer would leak into the checkpointed history
        reported = {r.client_id: r for r in outcome.results}
        missed = {f.client_id: f for f in outcome.failures if f.client_id not in reported}
        quality = _round_quality(outcome.results, history)
        for cid in sorted(reported.keys() | missed.keys()):
            h = history.setdefault(cid, ClientHistory())
            h.selected += 1
            h.last_selected = round
            if cid in reported:
                r = reported[cid]
                h.reported += 1
                h.consecutive_misses = 0
                h.excluded_until = -1  # it just made the round: whatever excluded it is over
                h.ema_seconds = self._ema(h.ema_seconds, r.seconds)
                if cid in flagged:
                    h.flagged += 1
                else:
                    h.kept += 1
                if cid in quality:
                    h.ema_quality = self._ema(h.ema_quality, quality[cid])
                if math.isfinite(r.loss):  # a diverged loss is no reference for the next fall
                    h.last_loss = r.loss
            else:
                if missed[cid].reason in LATE_REASONS:
                    h.late += 1
                else:
                    h.failed += 1
                if missed[cid].reason in REFUSED_REASONS:
                    h.flagged += 1
                h.consecutive_misses += 1
                h.excluded_until = self._exclusion_end(h, round)

    def _exclusion_end(self, h: ClientHistory, round: int) -> int:
        """New ``excluded_until`` of a client that just missed ``round``; the base never excludes."""
        return h.excluded_until

    def _ema(self, old: float | None, new: float) -> float:
        return new if old is None else self.ema_alpha * new + (1.0 - self.ema_alpha) * old

    def _check(self, param: str, value: Any, **rule) -> Any:
        """Validate a constructor parameter (see :func:`fedhpc.registry.check_number`)."""
        return check_number(f"selector '{self.name}'", param, value, **rule)


def reputation(h: ClientHistory) -> float:
    """A client's trust: the mean of the Beta(1 + kept, 1 + flagged) reputation (Josang and
    Ismail 2002), 1/2 for a client never judged, toward 0 as the defenses keep setting it aside."""
    return (1 + h.kept) / (2 + h.kept + h.flagged)


def _round_quality(results: list[ClientResult], history: Mapping[int, ClientHistory]) -> dict[int, float]:
    """Quality in [0, 1] of this round's reporters that can be judged.

    A client's loss fall is (last loss - loss) / last loss, clipped at 0, from
    its previous report; quality is its fall over the round's largest fall, so
    1 = the loss fell most. A non-finite loss (training diverged) scores 0.
    A first report has no reference and gets no score yet.
    """
    falls = {}
    for r in results:
        last = history[r.client_id].last_loss if r.client_id in history else None
        if not math.isfinite(r.loss):
            falls[r.client_id] = 0.0
        elif last is not None and last > 0:
            falls[r.client_id] = max(0.0, (last - r.loss) / last)
    best = max(falls.values(), default=0.0)
    return {cid: fall / best if best > 0 else 0.0 for cid, fall in falls.items()}
