"""Structured federated dropout (Caldas et al. 2018): each client trains a sub-model
without a random fraction of the hidden units of its Linear and Conv layers and
sends only the kept slices; the orchestrator maps them back.

The kept units are a function of (seed, round, client), so the orchestrator
derives the same sub-model without it being sent. A hidden unit is an output
unit of a Linear/Conv2d layer whose *next* parametrised layer is of the same
kind and consumes it as an input (Linear -> Linear, Conv2d -> Conv2d); the last
layer's outputs (the classes) are never dropped.
"""

from __future__ import annotations

import math

import numpy as np
from torch import nn

from fedhpc.config import RunConfig
from fedhpc.models import Layout
from fedhpc.seeds import SEED_FEDDROP, derive_seed


def droppable(module: nn.Module) -> list[tuple[str, str]]:
    """(layer, next layer) module names whose shared hidden units can be dropped."""
    layers = [(name, m) for name, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    pairs = []
    for (name, m), (next_name, nxt) in zip(layers, layers[1:]):
        if type(m) is type(nxt):
            units = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            needs = nxt.in_features if isinstance(nxt, nn.Linear) else nxt.in_channels
            if units == needs:
                pairs.append((name, next_name))
    return pairs


class FedDropout:
    """Maps between the full flat model and a client's sub-model of kept units."""

    @classmethod
    def for_run(cls, cfg: RunConfig, module: nn.Module, layout: Layout) -> FedDropout | None:
        """The mapper of a run's ``fed_dropout.rate``, or None when it is 0."""
        return cls(module, layout, cfg.fed_dropout.rate, cfg.seed) if cfg.fed_dropout.rate else None

    def __init__(self, module: nn.Module, layout: Layout, rate: float, seed: int):
        self.layout, self.rate, self.seed = layout, rate, seed
        self.pairs = droppable(module)
        modules = dict(module.named_modules())
        self.units = [modules[a].weight.shape[0] for a, _ in self.pairs]

    def kept(self, round_: int, client: int) -> np.ndarray:
        """Ascending flat indices of the coordinates client ``client`` trains in ``round_``."""
        rng = np.random.default_rng(derive_seed(self.seed, round_, client, SEED_FEDDROP))
        keep_out: dict[str, np.ndarray] = {}  # layer -> kept output units
        keep_in: dict[str, np.ndarray] = {}  # layer -> kept input units
        for (a, b), units in zip(self.pairs, self.units):
            k = max(1, math.ceil((1 - self.rate) * units))
            sel = np.sort(rng.choice(units, size=k, replace=False))
            keep_out[a] = keep_in[b] = sel
        parts = []
        for name, shape, start in zip(self.layout.names, self.layout.shapes, self.layout.offsets):
            layer = name.rsplit(".", 1)[0]
            grid = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
            if layer in keep_out:
                grid = grid[keep_out[layer]]
            if layer in keep_in and len(shape) >= 2:
                grid = grid[:, keep_in[layer]]
            parts.append(start + grid.reshape(-1))
        return np.concatenate(parts).astype(np.uint32)

    def mask(self, kept: np.ndarray) -> np.ndarray:
        """A 0/1 float32 vector over the full model with ones at ``kept``."""
        m = np.zeros(self.layout.size, dtype=np.float32)
        m[kept] = 1.0
        return m
