"""What keeps one hostile or broken client from wrecking the global model, and a run from going on wrecked.

:class:`NormGuard` refuses an update whose L2 norm is out of all proportion
with the honest ones: above ``guard.norm_multiple`` times the median norm of
the updates accepted in the last ``guard.norm_window`` rounds (in the first
round, of the round's own updates: a minority of attackers cannot move a
median), or above the absolute ``guard.norm_limit``. Its state is the
per-round median, which every metrics line carries (``update_norm_median``),
so a resumed run rebuilds it from the checkpoint's metrics and stays exact.

:func:`stop_reason` tells the round loop to stop, keeping the last good
checkpoint, when the global model is no longer finite or no client has
contributed for ``guard.idle_rounds`` rounds in a row.
"""

from __future__ import annotations

import json
import logging
from collections import deque

import numpy as np

from fedhpc import kernels as K
from fedhpc.config import GuardConfig
from fedhpc.types import ClientFailure, RoundOutcome

log = logging.getLogger("fedhpc.guard")

#: Exit status of a run stopped by the guard (the model diverged or nobody contributed).
EXIT_STOPPED = 4


class NormGuard:
    def __init__(self, cfg: GuardConfig):
        self.cfg = cfg
        self.medians: deque[float] = deque(maxlen=max(cfg.norm_window, 1))

    def restore(self, metrics_lines: list[str]) -> None:
        """Rebuild the recent medians from the metrics lines of a checkpoint (only theirs: a
        checkpoint refused after this was called may have been tried first)."""
        self.medians.clear()
        for line in metrics_lines:
            median = json.loads(line).get("update_norm_median")
            if median is not None:
                self.medians.append(median)

    def bound(self, norms: list[float]) -> tuple[float, str]:
        """The largest L2 norm accepted this round, and how it was set."""
        cfg = self.cfg
        bound, how = np.inf, "no bound"
        if cfg.norm_multiple and (self.medians or norms):
            recent = list(self.medians) if self.medians else norms
            median = float(np.median(recent))
            bound = cfg.norm_multiple * median
            source = f"the last {len(self.medians)} rounds" if self.medians else "this round"
            how = f"{cfg.norm_multiple:g} x the median update norm of {source} ({median:.4g})"
        if cfg.norm_limit and cfg.norm_limit < bound:
            bound, how = cfg.norm_limit, "guard.norm_limit"
        return bound, how

    def verdict(self, norm: float, arrived: list[float], expected: int) -> bool | None:
        """Whether :meth:`screen` will accept an update of L2 norm ``norm`` this round, or None
        while that still depends on updates to come. ``arrived``: the norms of the round's
        results so far (this one's included); ``expected``: how many clients were selected.

        With a history of medians (or no relative bound) the bound is known. In the first
        round it is a multiple of the median of the round's own norms, which the ones to come
        can only move within limits: the median is at least that of ``arrived`` with zeros
        for the missing, and at most that with infinities, so an update under the least
        possible bound is in and one over the greatest is out, whatever comes."""
        if not np.isfinite(norm):
            return False
        if not self.cfg.norm_multiple or self.medians:
            return bool(norm <= self.bound([])[0])
        missing = max(expected - len(arrived), 0)
        least, _ = self.bound(arrived + [0.0] * missing)
        if norm <= least:
            return True
        greatest, _ = self.bound(arrived + [np.inf] * missing)
        return False if norm > greatest else None

    def screen(self, outcome: RoundOutcome) -> tuple[RoundOutcome, float | None, list[float]]:
        """``outcome`` without the updates out of bounds (they become failures with
        reason ``norm``), the median norm of those accepted (None if none), and every
        result's norm."""
        norms = [res.norm if res.norm is not None else K.l2_norm(res.dense()) for res in outcome.results]
        bound, how = self.bound(norms)
        kept, refused = [], []
        for res, norm in zip(outcome.results, norms):
            if np.isfinite(norm) and norm <= bound:
                kept.append((res, norm))
                continue
            detail = f"update L2 norm {norm:.4g} is above {bound:.4g} ({how})"
            log.warning("round %d: client %d's update refused: %s", outcome.round, res.client_id, detail)
            refused.append(ClientFailure(res.client_id, "norm", detail))
        median = float(np.median([n for _, n in kept])) if kept else None
        if median is not None:
            self.medians.append(median)
        failures = sorted(outcome.failures + refused, key=lambda f: f.client_id)
        return RoundOutcome(outcome.round, [res for res, _ in kept], failures), median, norms


def stop_reason(weights: np.ndarray, metrics_lines: list[str], cfg: GuardConfig) -> str | None:
    """Why the run must stop after a round, or None: a non-finite global model, or the last
    ``guard.idle_rounds`` metrics lines (0 = never) without a result. Read from the lines, the
    count is the same for a resumed run as for an uninterrupted one."""
    if not np.isfinite(K.l2_norm(weights)):
        return "the global model is no longer finite (NaN or infinite values)"
    recent = metrics_lines[-cfg.idle_rounds:] if cfg.idle_rounds else []
    if len(recent) == cfg.idle_rounds and recent and not any(json.loads(s)["clients_reported"] for s in recent):
        return f"no client contributed an update for {cfg.idle_rounds} rounds in a row"
    return None
