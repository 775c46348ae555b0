"""``label-flip``: train on flipped labels (Tolpegin et al. 2020; Fang et al. 2020)."""

import numpy as np

from fedhpc.attack.base import DataAttack


class LabelFlip(DataAttack):
    """Label ``y`` becomes ``C - 1 - y`` for C classes while the attacker trains; the update it
    sends is an honest step on poisoned data. ``scale`` plays no part."""

    name = "label-flip"
    default_scale = 1.0

    def label_map(self, num_classes):
        return np.arange(num_classes - 1, -1, -1, dtype=np.int64)
