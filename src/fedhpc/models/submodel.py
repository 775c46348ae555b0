"""Sub-models built for real: the same network with fewer hidden units, smaller tensors.

A *hidden unit* is an output unit of a Linear or Conv2d layer that the next
parametrised layer, of the same kind, takes as an input (Linear -> Linear,
Conv2d -> Conv2d): dropping it removes a row of the first layer and a column of
the second. :func:`hidden_pairs` finds those pairs in a model whose layers are
registered in forward order (fedhpc's ``mlp`` and CNNs); a user's model declares
them instead, as an attribute ``fedhpc_hidden = [("layer", "next_layer"), ...]``,
and a model with neither is refused by :func:`slicable`.

Given the units each pair keeps (:func:`nested` keeps the first ``width``
fraction, HeteroFL's and FjORD's ordered sub-models), :func:`build` returns a new
module whose layers are smaller copies holding the kept slices, so a client
trains a network with fewer FLOPs, parameters and activations, not a masked
full-size one. Its flat vector (:class:`~fedhpc.models.Layout`) is the full
model's at :func:`indices`, in the same order: only that slice travels.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fedhpc.errors import ConfigError

Keep = Mapping[str, np.ndarray]  # first layer of a pair -> the ascending hidden units it keeps


def hidden_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(layer, next layer) module names whose shared hidden units a sub-model may drop: the
    model's own ``fedhpc_hidden`` declaration, else consecutive Linear->Linear and
    Conv2d->Conv2d layers of matching width in registration order."""
    declared = getattr(module, "fedhpc_hidden", None)
    if declared is not None:
        return [(str(a), str(b)) for a, b in declared]
    layers = [(name, m) for name, m in module.named_modules()
              if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)]
    pairs = []
    for (name, m), (next_name, nxt) in zip(layers, layers[1:]):
        if type(m) is type(nxt) and _units(m) == (nxt.in_features if isinstance(nxt, nn.Linear) else nxt.in_channels):
            pairs.append((name, next_name))
    return pairs


def slicable(module: nn.Module, model_name: str, key: str) -> list[tuple[str, str]]:
    """The hidden pairs of a model that sub-models may slice, or a ConfigError naming ``key``:
    a model with recurrent layers, or a user's model (``package.module:factory``) that
    does not declare its pairs, cannot be sliced by guessing."""
    if any(isinstance(m, nn.RNNBase) for m in module.modules()):
        raise ConfigError(f"config key '{key}': model '{model_name}' has recurrent layers, whose hidden size "
                          f"sub-models do not slice yet; use an mlp or CNN")
    if ":" in model_name and getattr(module, "fedhpc_hidden", None) is None:
        raise ConfigError(f"config key '{key}': model '{model_name}' does not declare which layers share hidden "
                          f"units; give it an attribute fedhpc_hidden = [('layer', 'next_layer'), ...] (Linear -> "
                          f"Linear or Conv2d -> Conv2d, in forward order)")
    modules = dict(module.named_modules())
    pairs = hidden_pairs(module)
    for a, b in pairs:
        first, second = modules.get(a), modules.get(b)
        if not (isinstance(first, (nn.Linear, nn.Conv2d)) and type(first) is type(second)
                and getattr(first, "groups", 1) == getattr(second, "groups", 1) == 1):
            raise ConfigError(f"config key '{key}': model '{model_name}' declares hidden pair ({a!r}, {b!r}), "
                              f"which is not two Linear or two ungrouped Conv2d layers")
    if not pairs:
        raise ConfigError(f"config key '{key}': model '{model_name}' has no hidden layers to slice")
    return pairs


def _units(layer: nn.Linear | nn.Conv2d) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def units(module: nn.Module, pairs: list[tuple[str, str]]) -> list[int]:
    """The hidden units of each pair."""
    modules = dict(module.named_modules())
    out = []
    for a, _ in pairs:
        layer = modules[a]
        assert isinstance(layer, (nn.Linear, nn.Conv2d))
        out.append(_units(layer))
    return out


def nested(pairs: list[tuple[str, str]], counts: list[int], width: float) -> dict[str, np.ndarray]:
    """The ordered sub-model of ``width``: the first ``ceil(width * units)`` units of every pair
    (at least one), so every narrower sub-model is inside every wider one."""
    return {a: np.arange(max(1, math.ceil(width * u))) for (a, _), u in zip(pairs, counts)}


def indices(layout, pairs: list[tuple[str, str]], keep: Keep) -> np.ndarray:
    """Ascending uint32 positions in the full flat vector of what the sub-model of ``keep``
    holds, in its own flat order."""
    keep_in = {b: keep[a] for a, b in pairs}
    parts = []
    for name, shape, start in zip(layout.names, layout.shapes, layout.offsets):
        layer = name.rsplit(".", 1)[0]
        grid = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
        if layer in keep:
            grid = grid[keep[layer]]
        if layer in keep_in and len(shape) >= 2:
            grid = grid[:, keep_in[layer]]
        parts.append(start + grid.reshape(-1))
    return np.concatenate(parts).astype(np.uint32)


def build(module: nn.Module, pairs: list[tuple[str, str]], keep: Keep) -> nn.Module:
    """A copy of ``module`` whose paired layers are smaller: each keeps its ``keep`` output
    units and the input units the pair before it keeps, with those slices of its weights.
    Everything else is copied as it is."""
    sub = copy.deepcopy(module)
    keep_in = {b: keep[a] for a, b in pairs}
    modules = dict(sub.named_modules())
    with torch.no_grad():
        for name in {*keep, *keep_in}:
            layer = modules[name]
            assert isinstance(layer, (nn.Linear, nn.Conv2d)), f"{name} is not a Linear or Conv2d layer"
            w = layer.weight
            if name in keep:
                rows = torch.as_tensor(keep[name])
                w = w[rows]
                if layer.bias is not None:
                    layer.bias = nn.Parameter(layer.bias[rows].clone())
            if name in keep_in:
                w = w[:, torch.as_tensor(keep_in[name])]
            # a new Parameter under the same name keeps its place in the parameter order
            layer.weight = nn.Parameter(w.clone())
            if isinstance(layer, nn.Linear):
                layer.out_features, layer.in_features = w.shape[0], w.shape[1]
            else:
                layer.out_channels, layer.in_channels = w.shape[0], w.shape[1]
    return sub


def flops(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one sample's forward pass through the Linear and Conv2d layers (what
    sub-models shrink; a backward pass costs about twice as much again)."""
    return _count(module, input_shape)[0]


def activations(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Output values of the Linear and Conv2d layers for one sample (what training keeps for
    the backward pass, besides the parameters)."""
    return _count(module, input_shape)[1]


def _count(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    macs = values = 0

    def count(layer, _inputs, output):
        nonlocal macs, values
        values += output[0].numel()
        if isinstance(layer, nn.Linear):
            macs += layer.in_features * layer.out_features
        else:
            macs += output[0].numel() * layer.in_channels * math.prod(layer.kernel_size) // layer.groups

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            module(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return macs, values
