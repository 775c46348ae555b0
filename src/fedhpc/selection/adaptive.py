"""``adaptive``: resource- and history-aware selection with straggler exclusion and a fairness floor."""

from __future__ import annotations

import math

from fedhpc.clock import client_round_seconds
from fedhpc.selection.base import Selector
from fedhpc.types import ClientHistory, ClientProfile

_NEW = ClientHistory()  # read-only stand-in for a client without history; never stored


class AdaptiveSelector(Selector):
    """Prefer clients expected to finish fast, reliably and usefully, without starving anyone.

    Per round with n = min(k, available) slots:

    1. **Exclusion.** A client that missed ``miss_limit`` rounds in a row (late
       or failed) is not selected for the next ``exclusion_rounds`` rounds
       (``ClientHistory.excluded_until``). Its miss streak only resets when it
       reports (which also ends an exclusion early, see step 4), so a client
       back from exclusion that misses once more is excluded again at once.
    2. **Fairness floor.** An eligible client not selected for
       ``fairness_rounds`` rounds (rounds count from 0, so a never-selected
       client has waited ``round`` rounds) is forced in, longest wait first
       (then best score), in up to ``fairness_share`` of the slots (at least
       one slot while ``fairness_share`` > 0; the others wait a round more).
    3. **Score.** Of the remaining slots, floor(``explore`` * n) go to a random
       pick among the eligible clients the score did not choose, so new and
       rarely chosen clients get measured; the rest go to the highest scores
       (ties to the lower id).
    4. **Fill.** If exclusions leave fewer eligible clients than slots, the
       best-scored excluded clients fill the round, so it still has n.

    The score of a client is the product of

    * time: ``fastest / seconds``, where ``seconds`` is its EMA of measured
      completion time once known, else the profile estimate
      :func:`fedhpc.clock.client_round_seconds` of ``reference_cost``,
      ``down_bytes`` and ``up_bytes`` (the same time model as the simulated clock), and ``fastest`` the smallest ``seconds`` among the available clients;
    * reliability: ``(reported + 1) / (selected + 1)``, optimistic for new clients;
    * quality: ``0.5 + 0.5 * ema_quality`` (0.75 while unknown);
    * load: ``1 / (1 + load_weight * selected / round)``, the share of past
      rounds it trained in, which spreads the work (host time on shared
      allocations) beyond what the fairness floor guarantees.

    ``down_bytes``, ``up_bytes`` and ``reference_cost`` are not config parameters: the
    runtime, which knows the model and the clock, supplies them through
    :meth:`~fedhpc.selection.base.Selector.set_costs` (a hook every selector
    has, so the runtime need not know which one it built) after building the
    selector and again after a resume. Until then they are 0 bytes and 1
    second, so the estimate ranks by speed and latency alone. The
    profile's ``dropout_prob`` is deliberately not used: it is the simulator's
    ground truth, and the selector must learn reliability from history as it
    would on real hosts.
    """

    name = "adaptive"

    def __init__(
        self,
        miss_limit: int = 2,
        exclusion_rounds: int = 3,
        fairness_rounds: int = 5,
        fairness_share: float = 0.5,
        explore: float = 0.1,
        load_weight: float = 2.0,
        ema_alpha: float = 0.3,
        trust: float = 0.0,
    ):
        super().__init__(ema_alpha, trust)
        self.miss_limit = self._check("miss_limit", miss_limit, integer=True, lo=1)
        self.exclusion_rounds = self._check("exclusion_rounds", exclusion_rounds, integer=True, lo=0)
        self.fairness_rounds = self._check("fairness_rounds", fairness_rounds, integer=True, lo=1)
        self.fairness_share = self._check("fairness_share", fairness_share, lo=0.0, hi=1.0)
        self.explore = self._check("explore", explore, lo=0.0, hi=1.0)
        self.load_weight = self._check("load_weight", load_weight, lo=0.0)
        self.down_bytes = self.up_bytes = 0
        self.reference_cost = 1.0

    def set_costs(self, down_bytes: int, up_bytes: int, reference_cost: float) -> None:
        """Set the cost model of :meth:`estimate_seconds` (see :meth:`Selector.set_costs`)."""
        self.down_bytes = self._check("down_bytes", down_bytes, integer=True, lo=0)
        self.up_bytes = self._check("up_bytes", up_bytes, integer=True, lo=0)
        self.reference_cost = self._check("reference_cost", reference_cost, lo=0.0)

    def _select(self, round, pool, n, profiles, history, rng):
        hist = {c: history.get(c, _NEW) for c in pool}
        excluded = [c for c in pool if hist[c].excluded_until > round]
        eligible = [c for c in pool if hist[c].excluded_until <= round]
        log = [
            f"excluded {c}: missed {hist[c].consecutive_misses} rounds in a row, until round {hist[c].excluded_until}"
            for c in excluded
        ]
        scores, seconds = self._scores(round, pool, profiles, hist)

        def waited(c: int) -> int:
            return round - hist[c].last_selected - 1

        # longest wait first; among equal waits (say, all never selected) the better score
        starving = sorted(
            (c for c in eligible if waited(c) >= self.fairness_rounds), key=lambda c: (-waited(c), -scores[c], c)
        )
        forced = starving[: min(n, max(1, math.floor(self.fairness_share * n))) if self.fairness_share > 0 else 0]
        for c in forced:
            why = "never selected" if hist[c].last_selected < 0 else "not selected"
            log.append(f"forced {c}: {why} for {waited(c)} rounds")

        by_rank = sorted(set(eligible) - set(forced), key=lambda c: (-scores[c], c))
        free = n - len(forced)
        n_explore = min(math.floor(self.explore * n), free)
        best = by_rank[: free - n_explore]
        others = by_rank[len(best) :]
        explored = []
        if n_explore and others:
            explored = rng.choice(others, size=min(n_explore, len(others)), replace=False).tolist()
        if best:
            log.append("by score: " + ", ".join(f"{c} ({scores[c]:.3g}, ~{seconds[c]:.3g} s)" for c in best))
        if explored:
            log.append(f"explored {', '.join(map(str, sorted(explored)))}: random pick among the rest, to measure them")

        chosen = forced + best + explored
        filled = sorted(excluded, key=lambda c: (-scores[c], c))[: n - len(chosen)]
        if filled:
            log.append(
                f"filled {', '.join(map(str, filled))} from the excluded clients by score: "
                f"only {len(eligible)} eligible for {n} slots"
            )
        chosen += filled
        log.insert(
            0,
            f"round {round}: chose {n} of {len(pool)} available: {len(best)} by score, {len(forced)} forced, "
            f"{len(explored)} explored, {len(filled)} filled, {len(excluded)} excluded",
        )
        return chosen, log

    def _scores(self, round, pool, profiles, hist) -> tuple[dict[int, float], dict[int, float]]:
        """Score (higher is better) and expected seconds of each client in ``pool``."""
        seconds = {}
        for c in pool:
            measured = hist[c].ema_seconds
            seconds[c] = measured if measured is not None else self.estimate_seconds(profiles.get(c, ClientProfile(c)))
        fastest = min(seconds.values(), default=0.0)
        scores = {}
        for c in pool:
            h = hist[c]
            # seconds are floored so that an all-zero cost model ranks every client equal instead of dividing by 0
            time = max(fastest, 1e-9) / max(seconds[c], 1e-9)
            reliability = (h.reported + 1) / (h.selected + 1)
            quality = 0.5 + 0.5 * (0.5 if h.ema_quality is None else h.ema_quality)
            load = 1.0 / (1.0 + self.load_weight * (h.selected / round if round > 0 else 0.0))
            scores[c] = time * reliability * quality * load
        return scores, seconds

    def estimate_seconds(self, profile: ClientProfile) -> float:
        """Expected completion time of a round on a client never measured, from its profile."""
        return client_round_seconds(profile, self.reference_cost, self.down_bytes, self.up_bytes)

    def _exclusion_end(self, h, round):
        if h.consecutive_misses >= self.miss_limit:
            return round + 1 + self.exclusion_rounds
        return h.excluded_until
