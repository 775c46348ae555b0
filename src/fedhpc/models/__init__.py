"""Models by name, and the flat-vector layout every model has."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fedhpc.errors import ConfigError


def mlp(input_shape, num_classes, cfg) -> nn.Module:
    """Two-layer perceptron: flatten, Linear(hidden), ReLU, Linear(classes)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), cfg.hidden), nn.ReLU(),
                         nn.Linear(cfg.hidden, num_classes))


def logreg(input_shape, num_classes, cfg) -> nn.Module:
    """Multinomial logistic regression."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


MODELS = {"mlp": mlp, "logreg": logreg}


def build_model(cfg, input_shape, num_classes, seed: int) -> nn.Module:
    """The model named by ``cfg.name``, initialised from ``seed`` (same on every rank)."""
    try:
        factory = MODELS[cfg.name]
    except KeyError:
        raise ConfigError(f"config key 'model.name' is '{cfg.name}'; available models: {', '.join(MODELS)}") from None
    torch.manual_seed(seed)
    return factory(input_shape, num_classes, cfg)


class Layout:
    """Names, shapes and offsets that map a module's parameters to one flat float32 vector."""

    def __init__(self, module: nn.Module):
        self.names, self.shapes, self.offsets = [], [], [0]
        for name, p in module.named_parameters():
            self.names.append(name)
            self.shapes.append(tuple(p.shape))
            self.offsets.append(self.offsets[-1] + p.numel())
        self.size = self.offsets[-1]

    def flatten(self, module: nn.Module) -> np.ndarray:
        """A new flat float32 copy of the module's parameters."""
        out = np.empty(self.size, dtype=np.float32)
        for (_, p), a, b in zip(module.named_parameters(), self.offsets, self.offsets[1:]):
            out[a:b] = p.detach().reshape(-1).numpy()
        return out

    def load(self, module: nn.Module, flat: np.ndarray) -> None:
        """Copy a flat vector into the module's parameters in place."""
        if flat.size != self.size:
            raise ValueError(f"flat vector has {flat.size} values, the model has {self.size}")
        with torch.no_grad():
            for (_, p), a, b in zip(module.named_parameters(), self.offsets, self.offsets[1:]):
                p.copy_(torch.from_numpy(flat[a:b]).view_as(p))
