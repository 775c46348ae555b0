"""Byzantine attacks, to measure what a fraction of bad clients does to a run and which defense holds.

>>> from fedhpc.attack import get_attack
>>> attack = get_attack("sign-flip", scale=4.0)

The registry is explicit: one attack per module, listed here by name (see
:mod:`fedhpc.attack.base` for the three kinds and where each acts).
"""

from __future__ import annotations

from fedhpc.attack.alie import ALittleIsEnough
from fedhpc.attack.base import Attack, AttackPlan, DataAttack, OmniscientAttack, UpdateAttack
from fedhpc.attack.gaussian import Gaussian
from fedhpc.attack.ipm import InnerProduct
from fedhpc.attack.label_flip import LabelFlip
from fedhpc.attack.scale import Scale
from fedhpc.attack.sign_flip import SignFlip
from fedhpc.registry import build

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls for cls in (SignFlip, Scale, Gaussian, LabelFlip, ALittleIsEnough, InnerProduct)
}


def get_attack(kind: str, scale: float = 0.0) -> Attack:
    """Build the attack registered as ``kind``; raises ``ValueError`` naming the allowed kinds."""
    return build("attack", ATTACKS, kind, {"scale": scale})


__all__ = ["ATTACKS", "Attack", "AttackPlan", "DataAttack", "OmniscientAttack", "UpdateAttack", "get_attack"]
