"""Sub-models built for real: the same network with fewer hidden units, smaller tensors.

A *hidden unit* is an output unit of a Linear or Conv2d layer that the next
parametrised layer, of the same kind, takes as an input (Linear -> Linear,
Conv2d -> Conv2d): dropping it removes a row of the first layer and a column of
the second. An LSTM's hidden units feed the Linear after it (LSTM -> Linear):
dropping one removes its rows in each of the four gates of every layer, its
column in every recurrent (and next layer's input) weight, and its column in the
Linear; the same units in every layer of the LSTM. :func:`hidden_pairs` finds
those pairs in a model whose layers are registered in forward order (fedhpc's
``mlp``, CNNs and ``lstm-shakespeare``); a user's model declares them instead,
as an attribute ``fedhpc_hidden = [("layer", "next_layer"), ...]``, and a model
with neither is refused by :func:`slicable`.

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
    model's own ``fedhpc_hidden`` declaration, else consecutive Linear->Linear,
    Conv2d->Conv2d and LSTM->Linear layers of matching width in registration order."""
    declared = getattr(module, "fedhpc_hidden", None)
    if declared is not None:
        return [(str(a), str(b)) for a, b in declared]
    layers = [(name, m) for name, m in module.named_modules()
              if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1) or _plain_lstm(m)]
    return [(name, next_name) for (name, m), (next_name, nxt) in zip(layers, layers[1:]) if _pair(m, nxt)]


def _plain_lstm(m: nn.Module) -> bool:
    """An LSTM whose hidden units can be sliced: one direction, no projection."""
    return isinstance(m, nn.LSTM) and not m.bidirectional and m.proj_size == 0


def _pair(m: nn.Module, nxt: nn.Module | None) -> bool:
    """Whether ``nxt`` takes exactly ``m``'s hidden units as its inputs, as a pair sub-models slice."""
    if isinstance(m, nn.Linear) and type(nxt) is nn.Linear:
        return m.out_features == nxt.in_features
    if isinstance(m, nn.Conv2d) and type(nxt) is nn.Conv2d:
        return bool(m.groups == nxt.groups == 1 and m.out_channels == nxt.in_channels)
    return bool(_plain_lstm(m) and isinstance(nxt, nn.Linear) and m.hidden_size == nxt.in_features)


def slicable(module: nn.Module, model_name: str, key: str) -> list[tuple[str, str]]:
    """The hidden pairs of a model that sub-models may slice, or a ConfigError naming ``key``:
    other recurrent layers than a plain LSTM, or a user's model (``package.module:factory``)
    that does not declare its pairs, cannot be sliced by guessing."""
    if any(isinstance(m, nn.RNNBase) and not _plain_lstm(m) for m in module.modules()):
        raise ConfigError(f"config key '{key}': model '{model_name}' has recurrent layers other than a "
                          f"one-directional LSTM without projection, which sub-models do not slice")
    if ":" in model_name and getattr(module, "fedhpc_hidden", None) is None:
        raise ConfigError(f"config key '{key}': model '{model_name}' does not declare which layers share hidden "
                          f"units; give it an attribute fedhpc_hidden = [('layer', 'next_layer'), ...] (Linear -> "
                          f"Linear, Conv2d -> Conv2d or LSTM -> Linear, in forward order)")
    modules = dict(module.named_modules())
    pairs = hidden_pairs(module)
    for a, b in pairs:
        if not _pair(modules.get(a, nn.Identity()), modules.get(b)):
            raise ConfigError(f"config key '{key}': model '{model_name}' declares hidden pair ({a!r}, {b!r}), "
                              f"which is not two Linear, two ungrouped Conv2d or an LSTM and a Linear layer of "
                              f"matching width")
    if not pairs:
        raise ConfigError(f"config key '{key}': model '{model_name}' has no hidden layers to slice")
    return pairs


def _units(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, nn.LSTM):
        return layer.hidden_size
    assert isinstance(layer, nn.Conv2d), f"{type(layer).__name__} has no hidden units to slice"
    return layer.out_channels


def units(module: nn.Module, pairs: list[tuple[str, str]]) -> list[int]:
    """The hidden units of each pair."""
    modules = dict(module.named_modules())
    return [_units(modules[a]) for a, _ in pairs]


def kept_units(width: float, units: int) -> int:
    """How many of a layer's ``units`` a sub-model of ``width`` keeps: ``ceil(width * units)``, at least one."""
    return max(1, math.ceil(width * units))


def nested(pairs: list[tuple[str, str]], counts: list[int], width: float) -> dict[str, np.ndarray]:
    """The ordered sub-model of ``width``: the first ``ceil(width * units)`` units of every pair
    (at least one), so every narrower sub-model is inside every wider one."""
    return {a: np.arange(kept_units(width, u)) for (a, _), u in zip(pairs, counts)}


def _gate_rows(units: np.ndarray, hidden: int) -> np.ndarray:
    """An LSTM's rows of ``units`` in each of its four gate blocks (i, f, g, o), in order."""
    return np.concatenate([g * hidden + units for g in range(4)])


def _slices(param: str, shape: tuple[int, ...], out_keep: np.ndarray | None, in_keep: np.ndarray | None
            ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(rows, columns) a sub-model keeps of one parameter (None: all) of a layer that keeps the
    output units ``out_keep`` and the input units ``in_keep``. An LSTM's parameters are named
    ``weight_ih_l<k>``, ``weight_hh_l<k>``, ``bias_ih_l<k>``, ``bias_hh_l<k>``."""
    if param.startswith(("weight_ih_l", "weight_hh_l", "bias_ih_l", "bias_hh_l")):
        assert out_keep is not None, f"LSTM parameter {param} of a layer that keeps all its units"
        rows = _gate_rows(out_keep, shape[0] // 4)
        recurrent = param.startswith("weight_hh_l") or (param.startswith("weight_ih_l") and param != "weight_ih_l0")
        return rows, (out_keep if recurrent else None)
    return out_keep, (in_keep if len(shape) >= 2 else None)


def indices(layout, pairs: list[tuple[str, str]], keep: Keep) -> np.ndarray:
    """Ascending uint32 positions in the full flat vector of what the sub-model of ``keep``
    holds, in its own flat order."""
    keep_in = {b: keep[a] for a, b in pairs}
    parts = []
    for name, shape, start in zip(layout.names, layout.shapes, layout.offsets):
        layer, _, param = name.rpartition(".")
        grid = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
        rows, cols = _slices(param, shape, keep.get(layer), keep_in.get(layer))
        if rows is not None:
            grid = grid[rows]
        if cols is not None:
            grid = grid[:, cols]
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
            old = modules[name]
            new = _resized(old, len(keep[name]) if name in keep else None,
                           len(keep_in[name]) if name in keep_in else None)
            for param, value in old.named_parameters(recurse=False):
                rows, cols = _slices(param, tuple(value.shape), keep.get(name), keep_in.get(name))
                v = value if rows is None else value[torch.as_tensor(rows)]
                v = v if cols is None else v[:, torch.as_tensor(cols)]
                getattr(new, param).copy_(v)
            parent, _, child = name.rpartition(".")
            setattr(modules[parent] if parent else sub, child, new)
    return sub


def _resized(old: nn.Module, out: int | None, inp: int | None) -> nn.Module:
    """A fresh layer like ``old`` with ``out`` output and ``inp`` input units (None: as it was);
    its parameters are registered in the same order under the same names."""
    if isinstance(old, nn.Linear):
        return nn.Linear(inp or old.in_features, out or old.out_features, bias=old.bias is not None)
    if isinstance(old, nn.LSTM):
        assert inp is None, "an LSTM's input units are not sliced"
        return nn.LSTM(old.input_size, out or old.hidden_size, old.num_layers, old.bias, old.batch_first,
                       old.dropout)
    assert isinstance(old, nn.Conv2d)
    new = copy.deepcopy(old)  # kernel, stride, padding and the rest as they were
    new.out_channels, new.in_channels = out or old.out_channels, inp or old.in_channels
    new.weight = nn.Parameter(torch.empty(new.out_channels, new.in_channels, *old.kernel_size))
    if old.bias is not None:
        new.bias = nn.Parameter(torch.empty(new.out_channels))
    return new


def flops(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one sample's forward pass through the Linear, Conv2d and LSTM layers
    (what sub-models shrink; a backward pass costs about twice as much again)."""
    return _count(module, input_shape)[0]


def activations(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Output values of the Linear, Conv2d and LSTM layers for one sample (what training keeps
    for the backward pass, besides the parameters)."""
    return _count(module, input_shape)[1]


def _count(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    macs = values = 0

    def count(layer, _inputs, output):
        nonlocal macs, values
        if isinstance(layer, nn.LSTM):  # output: (out, (h, c)); per step and layer, four gates
            steps = output[0].shape[1] if layer.batch_first else output[0].shape[0]
            h = layer.hidden_size
            for k in range(layer.num_layers):
                macs += steps * 4 * h * ((layer.input_size if k == 0 else h) + h)
            values += steps * layer.num_layers * 6 * h  # the gates, the cell and the output
            return
        values += output[0].numel()
        if isinstance(layer, nn.Linear):
            macs += layer.in_features * layer.out_features
        else:
            macs += output[0].numel() * layer.in_channels * math.prod(layer.kernel_size) // layer.groups

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.LSTM))]
    try:
        with torch.no_grad():
            module(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return macs, values
