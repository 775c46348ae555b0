"""``mlp`` and ``logreg``: fully connected models for flat (or flattened) inputs."""

from __future__ import annotations

import math

from torch import nn


def mlp(input_shape, num_classes, cfg) -> nn.Module:
    """Flatten, then Linear + ReLU for each size in ``model.hidden``, then Linear to the classes."""
    sizes = [math.prod(input_shape), *cfg.hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], num_classes))
    return nn.Sequential(*layers)


def logreg(input_shape, num_classes, cfg) -> nn.Module:
    """Multinomial logistic regression."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))
