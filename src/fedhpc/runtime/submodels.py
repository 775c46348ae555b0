"""Sub-models: each client trains a narrower network, built for real (``[submodels]``).

* ``random`` (Caldas et al. 2018's federated dropout; ``fed_dropout.rate`` is its
  rate): each client drops a random ``rate`` of every hidden layer's units, drawn
  from (seed, round, client);
* ``budget``: rank 0 gives each selected client the widest of ``submodels.widths``
  it can afford (:func:`choose_width`): the first ``width`` fraction of every
  hidden layer's units (``nested``, HeteroFL / FjORD's ordered sub-models), or
  that many drawn at random.

Either way the client trains the smaller module :func:`fedhpc.models.submodel.build`
makes (fewer FLOPs, parameters and activations), only its slice of the model
travels, and the sum divides each coordinate by the weight of the clients that
trained it (the ring's coverage). Rank 0, the folders and the clients derive
every client's slice from (round, client, width) alone: nothing but the width is
sent. Imports no MPI.
"""

from __future__ import annotations

import functools

import numpy as np
from torch import nn

from fedhpc.clock import client_round_seconds
from fedhpc.config import RunConfig
from fedhpc.models import Layout
from fedhpc.models import submodel as S
from fedhpc.seeds import SEED_FEDDROP, derive_seed
from fedhpc.types import ClientHistory, ClientProfile

FULL = 1.0


class Submodels:
    """Maps between the full flat model and a client's sub-model of some width."""

    @classmethod
    def for_run(cls, cfg: RunConfig, module: nn.Module, layout: Layout,
                input_shape: tuple[int, ...] | None = None) -> Submodels | None:
        """The sub-models of a run (None with ``submodels.mode = "none"``); ``input_shape`` (one
        sample's) is needed for their FLOPs."""
        mode = cfg.submodel_mode
        if mode == "none":
            return None
        return cls(module, layout, S.slicable(module, cfg.model.name, cfg.submodel_key), cfg.seed,
                   nested=mode == "budget" and cfg.submodels.nested, input_shape=input_shape)

    def __init__(self, module: nn.Module, layout: Layout, pairs: list[tuple[str, str]], seed: int, nested: bool,
                 input_shape: tuple[int, ...] | None = None):
        self.module, self.layout, self.pairs, self.seed, self.nested = module, layout, pairs, seed, nested
        self.units = S.units(module, pairs)
        self.input_shape = input_shape

    def keep(self, round_: int, client: int, width: float) -> dict[str, np.ndarray]:
        """The hidden units of each pair that client ``client`` keeps in ``round_`` at ``width``."""
        if self.nested:
            return S.nested(self.pairs, self.units, width)
        rng = np.random.default_rng(derive_seed(self.seed, round_, client, SEED_FEDDROP))
        return {a: np.sort(rng.choice(u, size=S.kept_units(width, u), replace=False))
                for (a, _), u in zip(self.pairs, self.units)}

    def kept(self, round_: int, client: int, width: float) -> np.ndarray | None:
        """Ascending flat indices of the coordinates the client trains (None: all, at full width)."""
        if width >= FULL:
            return None
        if self.nested:
            return self._nested_kept(width)
        return S.indices(self.layout, self.pairs, self.keep(round_, client, width))

    @functools.lru_cache(maxsize=16)  # noqa: B019 (one mapper a rank, a handful of widths)
    def _nested_kept(self, width: float) -> np.ndarray:
        return S.indices(self.layout, self.pairs, S.nested(self.pairs, self.units, width))

    def build(self, round_: int, client: int, width: float) -> nn.Module:
        """The client's smaller module (its weights are loaded from the flat vector when it trains)."""
        return S.build(self.module, self.pairs, self.keep(round_, client, width))

    def shape(self, width: float) -> tuple[int, ...]:
        """Each pair's kept unit count at ``width``: modules of one shape are interchangeable."""
        return tuple(S.kept_units(width, u) for u in self.units)

    @functools.lru_cache(maxsize=16)  # noqa: B019
    def flops_ratio(self, width: float) -> float:
        """The sub-model's forward multiply-adds over the full model's (what its compute costs)."""
        if width >= FULL or self.input_shape is None:
            return 1.0
        return S.flops(self.build(0, 0, width), self.input_shape) / S.flops(self.module, self.input_shape)

    @functools.lru_cache(maxsize=16)  # noqa: B019
    def train_bytes(self, width: float, batch: int) -> int:
        """What training the sub-model of ``width`` holds, roughly: 16 bytes a parameter (its
        value, gradient, optimizer state and delta) and 8 a layer output for each sample of a
        batch (kept for the backward pass, and its gradient)."""
        module = self.module if width >= FULL else self.build(0, 0, width)
        acts = S.activations(module, self.input_shape) if self.input_shape is not None else 0
        return 16 * self.size(width) + 8 * batch * acts

    @functools.lru_cache(maxsize=16)  # noqa: B019
    def size(self, width: float) -> int:
        """The sub-model's parameters at ``width``."""
        return self.layout.size if width >= FULL else Layout(self.build(0, 0, width)).size


def choose_width(subs: Submodels, widths: list[float], profile: ClientProfile, history: ClientHistory,
                 compute_s: float, up_bytes_per_value: float, deadline_s: float, margin: float,
                 batch: int = 0) -> tuple[float, str]:
    """The widest of ``widths`` whose predicted round fits ``(1 - margin) * deadline_s`` and
    whose training fits the client's memory, and why.

    The prediction is the simulated clock's own formula (:func:`client_round_seconds`) with
    the sub-model's compute (``compute_s``, the full model's at the reference speed, times
    its FLOPs ratio) and its slice's bytes down (float32) and up (``up_bytes_per_value``, the
    codec's); the memory is :meth:`Submodels.train_bytes` at ``batch`` against the profile's
    ``memory_gb`` (when known). A client that missed its last round (``consecutive_misses``)
    is given one width narrower than that allows. Without a deadline every client trains the
    full model; when nothing fits, the narrowest."""
    if deadline_s <= 0:
        return FULL, "no deadline: the full model"
    budget = (1 - margin) * deadline_s
    memory = profile.memory_gb * 2**30

    def seconds(w: float) -> float:
        return client_round_seconds(profile, compute_s * subs.flops_ratio(w), 4 * subs.size(w),
                                    int(up_bytes_per_value * subs.size(w)))

    ranked = sorted(set(widths), reverse=True)
    fits = [w for w in ranked if seconds(w) <= budget and not (memory and subs.train_bytes(w, batch) > memory)]
    if not fits:
        return ranked[-1], f"nothing fits {budget:.3g}s and {profile.memory_gb:.3g} GB: the narrowest"
    best = fits[0]
    if history.consecutive_misses and best != ranked[-1]:
        narrower = ranked[ranked.index(best) + 1]
        return narrower, f"{best:g} fits ({seconds(best):.3g}s <= {budget:.3g}s) but it missed its last round"
    return best, f"predicted {seconds(best):.3g}s <= {budget:.3g}s"
