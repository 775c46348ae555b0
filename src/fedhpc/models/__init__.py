"""Models by name, and the flat-vector layout every model has.

``model.name`` is a key of :data:`MODELS`, ``"hf:PATH"`` (a Hugging Face
causal language model with LoRA adapters, :mod:`fedhpc.models.hf`) or
``"package.module:factory"``, a user's own factory. Every factory is called as
``factory(input_shape, num_classes, cfg) -> torch.nn.Module`` with the shape of
one sample (e.g. ``(3, 32, 32)`` or ``(80,)``), the number of classes and the
:class:`~fedhpc.config.ModelConfig`; the module maps a batch of samples to
``(batch, num_classes)`` logits. All its parameters must be float32: they are
what the federation averages, as one flat vector (:class:`Layout`; parameters
that do not require a gradient, such as a frozen base model's, are not in it). Buffers
(e.g. BatchNorm running statistics) are not federated and stay at their
initial values on the orchestrator, so prefer GroupNorm/LayerNorm.
"""

from __future__ import annotations

import functools
import hashlib
import importlib

import numpy as np
import torch
from torch import nn

from fedhpc.errors import ConfigError
from fedhpc.models.cnn import cnn_cifar, cnn_medmnist
from fedhpc.models.lstm import lstm_shakespeare
from fedhpc.models.mlp import logreg, mlp

MODELS = {
    "mlp": mlp,
    "logreg": logreg,
    "cnn-cifar": cnn_cifar,
    "cnn-medmnist": cnn_medmnist,
    "lstm-shakespeare": lstm_shakespeare,
}


def build_model(cfg, input_shape, num_classes, seed: int, lora=None) -> nn.Module:
    """The model named by ``cfg.name``, initialised from ``seed`` (same on every rank); an
    ``hf:`` model gets the adapters of ``lora`` (a :class:`~fedhpc.config.LoraConfig`)."""
    if cfg.hf_path:
        from fedhpc.models.hf import load_causal_lm

        torch.manual_seed(seed)  # the adapters' initialisation
        return load_causal_lm(cfg.hf_path, lora, num_classes)
    factory = _user_factory(cfg.name) if ":" in cfg.name else MODELS.get(cfg.name)
    if factory is None:
        raise ConfigError(f"config key 'model.name' is '{cfg.name}'; available models: {', '.join(MODELS)}, "
                          f"or 'package.module:factory' for your own")
    torch.manual_seed(seed)
    try:
        model = factory(tuple(input_shape), num_classes, cfg)
    except Exception as exc:  # a user's factory: whatever it raises is a config problem to name
        raise ConfigError(f"model.name '{cfg.name}': calling it as factory(input_shape, num_classes, cfg) "
                          f"failed with {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model '{cfg.name}' returned a {type(model).__name__}, not a torch.nn.Module")
    wrong = [name for name, p in model.named_parameters() if p.dtype != torch.float32]
    if wrong or not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"model '{cfg.name}' must have float32 parameters (the federation averages them as "
                          f"float32); {'these are not: ' + ', '.join(wrong) if wrong else 'it has none to train'}")
    return model


def _user_factory(name: str):
    """The callable named ``package.module:factory``, importable on every rank."""
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model.name '{name}': cannot import module '{module_name}' ({exc}); it must be "
                          f"importable on every rank (installed, or on PYTHONPATH)") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"model.name '{name}': module '{module_name}' has no callable '{attr}'; expected "
                          f"def {attr}(input_shape, num_classes, cfg) -> torch.nn.Module")
    return factory


def _trained(module: nn.Module):
    """(name, parameter) of the parameters that are trained, hence federated, in module order."""
    return ((name, p) for name, p in module.named_parameters() if p.requires_grad)


def frozen_digest(module: nn.Module) -> str:
    """SHA-256 over the names, shapes and bytes of the parameters that are not trained, in order
    ("" when all are): the identity of a frozen base, so a checkpoint of adapters for one base
    does not resume on another."""
    frozen = [(name, p) for name, p in module.named_parameters() if not p.requires_grad]
    if not frozen:
        return ""
    h = hashlib.sha256()
    for name, p in frozen:
        h.update(f"{name}:{tuple(p.shape)}\n".encode())
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


class Layout:
    """Names, shapes and offsets that map a module's trained parameters to one flat float32 vector."""

    def __init__(self, module: nn.Module):
        self.names, self.shapes, self.offsets = [], [], [0]
        for name, p in _trained(module):
            self.names.append(name)
            self.shapes.append(tuple(p.shape))
            self.offsets.append(self.offsets[-1] + p.numel())
        self.size = self.offsets[-1]
        self._module = module

    @functools.cached_property
    def base(self) -> str:
        """The digest of what the flat vector is fine-tuned on ("" = nothing frozen), computed when
        first asked (by rank 0's checkpoints: hashing a large base takes seconds)."""
        return frozen_digest(self._module)

    def flatten(self, module: nn.Module) -> np.ndarray:
        """A new flat float32 copy of the module's parameters."""
        out = np.empty(self.size, dtype=np.float32)
        for (_, p), a, b in zip(_trained(module), self.offsets, self.offsets[1:]):
            out[a:b] = p.detach().reshape(-1).numpy()
        return out

    def bind(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Make the module's parameters and their gradients views of two flat
        float32 tensors, in this layout's order, and return (params, grads).

        Loading a model into the module, reading it back, zeroing the
        gradients or adding a term to all of them is then one pass over one
        buffer instead of a Python loop over tensors: with thousands of
        virtual clients per rank, those loops were a third of the per-client
        overhead. The gradients stay views as long as they are zeroed in place
        (``grads.zero_()``, never ``zero_grad(set_to_none=True)``), because
        autograd accumulates into an existing gradient.
        """
        params = torch.empty(self.size, dtype=torch.float32)
        grads = torch.zeros(self.size, dtype=torch.float32)
        with torch.no_grad():
            for (_, p), a, b in zip(_trained(module), self.offsets, self.offsets[1:]):
                params[a:b] = p.reshape(-1)
                p.data = params[a:b].view_as(p)
                p.grad = grads[a:b].view_as(p)
        return params, grads

    def load(self, module: nn.Module, flat: np.ndarray) -> None:
        """Copy a flat vector into the module's parameters in place."""
        if flat.size != self.size:
            raise ValueError(f"flat vector has {flat.size} values, the model has {self.size}")
        with torch.no_grad():
            for (_, p), a, b in zip(_trained(module), self.offsets, self.offsets[1:]):
                p.copy_(torch.from_numpy(flat[a:b]).view_as(p))
