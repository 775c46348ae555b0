"""The privacy accountant: rounds of Poisson-subsampled Gaussian mechanisms, composed by ``dp-accounting``."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence


class Accountant:
    """Epsilon at ``delta`` after rounds with the sampling rates given, each round a
    ``PoissonSampledDpEvent(rate, GaussianDpEvent(noise_multiplier))``.

    A pure function of the rates (rounds of the same rate are one self-composed
    event, in ascending rate order), so a resumed run, which knows its past
    rates from its metrics, reports the same epsilon to the bit.
    """

    def __init__(self, noise_multiplier: float, delta: float):
        import dp_accounting  # noqa: F401  (imported on first use: it takes a second or two)

        # the RDP accountant warns through absl for every order whose series does not converge and
        # that it leaves out of the bound (harmless, documented): once a round, on every computation
        logging.getLogger("absl").setLevel(logging.ERROR)
        self.noise_multiplier, self.delta = noise_multiplier, delta
        self.rates: list[float] = []

    def _event(self, rates: Sequence[float]):
        import dp_accounting

        gauss = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        return dp_accounting.ComposedDpEvent([
            dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, gauss), count)
            for q, count in sorted(Counter(rates).items())])

    def epsilon(self, rates: Sequence[float] | None = None, pld: bool = False) -> float:
        """Epsilon at ``delta`` after ``rates`` (default: the rounds so far): RDP (an upper
        bound, fast enough for every round), or with ``pld`` the tighter privacy-loss
        distribution (about half a second a call)."""
        from dp_accounting import pld as pld_lib
        from dp_accounting import rdp

        rates = self.rates if rates is None else rates
        if not rates:
            return 0.0
        accountant = pld_lib.PLDAccountant() if pld else rdp.RdpAccountant()
        accountant.compose(self._event(rates))
        return float(accountant.get_epsilon(self.delta))
