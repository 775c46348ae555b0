"""The attack interface: what a Byzantine client does to the round, for measuring defenses.

Three kinds, by where the attack acts:

* :class:`UpdateAttack` changes the attacker's own trained update in the
  client step, after any DP clip and before encoding (an attacker controls what
  it sends; the rest of the system sees an ordinary Update, validated as any);
* :class:`DataAttack` poisons the attacker's training data (its labels);
* :class:`OmniscientAttack` ("a little is enough", inner-product
  manipulation) assumes, as its paper does, an adversary that knows the
  round's honest updates. It runs on rank 0 after the round is collected and
  before the guard and the strategy see it, replacing the attackers' updates
  with one forged from the honest ones; so its result does not depend on the
  number of ranks or on the arrival order.

:class:`AttackPlan` says who attacks and from which round.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from fedhpc import kernels as K
from fedhpc.registry import check_number
from fedhpc.seeds import SEED_ATTACK, derive_seed
from fedhpc.strategy.base import blocks
from fedhpc.types import ClientResult, RoundOutcome


class Attack(ABC):
    """A Byzantine behaviour; ``scale`` is its one strength parameter (0 = the attack's default)."""

    name: ClassVar[str]
    default_scale: ClassVar[float]

    def __init__(self, scale: float = 0.0):
        self.scale = check_number(f"attack '{self.name}'", "scale", scale, lo=0.0) or self.default_scale


class UpdateAttack(Attack):
    @abstractmethod
    def corrupt(self, delta: np.ndarray, rng: np.random.Generator) -> None:
        """Change the attacker's trained ``delta`` (float32) in place; ``rng`` is seeded by (run, round, client)."""


class DataAttack(Attack):
    @abstractmethod
    def label_map(self, num_classes: int) -> np.ndarray:
        """The label each true label is replaced with while the attacker trains (int64, one per class)."""


class OmniscientAttack(Attack):
    @abstractmethod
    def forge(self, mean: np.ndarray, std: np.ndarray, clients: int, attackers: int) -> np.ndarray:
        """The update every attacker of the round sends (float32), from the per-coordinate ``mean``
        and ``std`` (float64) of the honest updates; ``clients`` reported, ``attackers`` of them attack."""


@dataclasses.dataclass(frozen=True)
class AttackPlan:
    """Who attacks (``clients``, ascending ids), how, and from which round (0-based ``start``)."""

    attack: Attack
    clients: frozenset[int]
    start: int

    @staticmethod
    def choose(total: int, fraction: float, explicit: list[int], seed: int) -> frozenset[int]:
        """The attackers: ``explicit``, or ``round(fraction * total)`` clients drawn with the run
        seed (the same whatever the number of ranks)."""
        if explicit:
            return frozenset(explicit)
        count = round(fraction * total)
        return frozenset(np.random.default_rng(derive_seed(seed, SEED_ATTACK)).permutation(total)[:count].tolist())

    def attacks(self, round_: int, client: int) -> bool:
        return round_ >= self.start and client in self.clients

    def rng(self, seed: int, round_: int, client: int) -> np.random.Generator:
        return np.random.default_rng(derive_seed(seed, round_, client, SEED_ATTACK))

    def forge_round(self, outcome: RoundOutcome) -> RoundOutcome:
        """The round with its attackers' updates replaced by the omniscient attack's forgery
        (unchanged when the attack is not omniscient, or no attacker or no honest client reported)."""
        if not isinstance(self.attack, OmniscientAttack):
            return outcome
        bad = {r.client_id for r in outcome.results if self.attacks(outcome.round, r.client_id)}
        honest = sorted((r for r in outcome.results if r.client_id not in bad), key=lambda r: r.client_id)
        if not bad or not honest:
            return outcome
        mean, std = honest_moments(honest)
        forged = np.ascontiguousarray(self.attack.forge(mean, std, len(outcome.results), len(bad)), np.float32)
        norm = K.l2_norm(forged)
        results = [dataclasses.replace(r, delta=forged, frame=None, kept=None, norm=norm) if r.client_id in bad else r
                   for r in outcome.results]
        return dataclasses.replace(outcome, results=results)


def honest_moments(results: list[ClientResult]) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate mean and (population) standard deviation of the results' deltas, in float64,
    block by block (a result kept compressed is decoded one block at a time)."""
    n = results[0].size
    mean, std = np.empty(n), np.empty(n)
    for lo, hi, rows in blocks(results):
        block = rows.astype(np.float64)
        mean[lo:hi] = block.mean(axis=0)
        std[lo:hi] = block.std(axis=0)
    return mean, std
