"""Local training of one virtual client, identical whichever rank or worker hosts it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fedhpc.config import RunConfig
from fedhpc.models import Layout
from fedhpc.runtime.optim import FlatAdam, FlatSGD
from fedhpc.seeds import SEED_TRAIN, derive_seed


class Abandoned(Exception):
    """The orchestrator closed the round while this client was still training."""


def host_memory_gb() -> float:
    """This host's physical memory in GiB (what a trainer rank or a worker reports)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


class LocalTrainer:
    """Trains a client's shard starting from the global weights (SGD/Adam, optional FedProx term).

    The module's parameters and gradients are bound to two flat buffers
    (:meth:`~fedhpc.models.Layout.bind`), so starting a client from the global
    model and reading its delta back are one copy each.
    """

    def __init__(self, cfg: RunConfig, model: nn.Module, layout: Layout, x: np.ndarray, y: np.ndarray):
        self.cfg, self.model, self.layout = cfg, model, layout
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.params, self.grads = layout.bind(model)
        # one optimizer for every client, reset per client (building one per client
        # cost about 0.1 ms, a visible share with thousands of clients)
        self.opt: FlatSGD | FlatAdam
        if cfg.local.optimizer == "sgd":
            self.opt = FlatSGD(self.params, self.grads, cfg.local.lr, cfg.local.momentum)
        else:
            self.opt = FlatAdam(self.params, self.grads, cfg.local.lr)

    def train(self, indices: np.ndarray, weights: np.ndarray, round_: int, client: int, mu: float,
              should_stop: Callable[[], bool], out: np.ndarray | None = None, epochs: int | None = None,
              after_epoch: Callable[[float], bool] | None = None,
              label_map: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """Return (delta = w_local - w_start, mean training loss of the last epoch).

        The delta is written into ``out`` (a float32 array of the model's size)
        when given, so that a rank training many clients reuses one buffer.
        ``epochs`` overrides ``local.epochs`` (a straggler's partial work on the
        simulated clock); ``after_epoch(seconds)`` is called after every epoch
        with its duration, and returning False ends training there (partial
        work on the wall clock).
        With ``mu`` > 0 FedProx's proximal term mu/2 ||w - w_start||^2 is
        added as its gradient, mu (w - w_start); the loss reported is the data
        loss alone (a sub-model trains on a trainer of its own smaller module:
        :mod:`fedhpc.runtime.submodels`). ``label_map`` (int64, one
        entry per class) replaces every label while training (a label-flipping
        attacker).
        """
        local = self.cfg.local
        if weights.size != self.layout.size:
            raise ValueError(f"flat vector has {weights.size} values, the model has {self.layout.size}")
        flat = self.params.numpy()
        np.copyto(flat, weights)
        anchor = self.params.clone() if mu > 0 else None
        self.opt.reset()  # momentum / Adam moments start from zero for every client
        seed = derive_seed(self.cfg.seed, round_, client, SEED_TRAIN)
        gen = torch.Generator().manual_seed(seed)
        # for layers that draw from the global CPU RNG (nn.Dropout); torch.manual_seed would
        # also seed every accelerator's generator, 40x slower
        torch.default_generator.manual_seed(seed)
        idx = torch.from_numpy(indices)
        relabel = None if label_map is None else torch.from_numpy(label_map)
        loss_fn = nn.CrossEntropyLoss()
        self.model.train()
        for _ in range(local.epochs if epochs is None else epochs):
            t_epoch = time.perf_counter()
            total, count = 0.0, 0
            order = idx[torch.randperm(len(idx), generator=gen)]
            for b in range(0, len(order), local.batch_size):
                if should_stop():
                    raise Abandoned
                batch = order[b : b + local.batch_size]
                self.grads.zero_()
                target = self.y[batch] if relabel is None else relabel[self.y[batch]]
                loss = loss_fn(self.model(self.x[batch]), target)
                loss.backward()
                with torch.no_grad():
                    if anchor is not None:
                        self.grads.add_(self.params - anchor, alpha=mu)
                    self.opt.step()
                total += loss.item() * len(batch)
                count += len(batch)
            if after_epoch is not None and not after_epoch(time.perf_counter() - t_epoch):
                break
        mean_loss = total / max(count, 1)
        return np.subtract(flat, weights, out=out), mean_loss


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 1024) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on (x, y), per target: per sample, or per
    token for a language model (``y`` of (N, T) next tokens, logits of (N, vocab, T))."""
    model.eval()
    correct, loss = 0, 0.0
    per = int(np.prod(y.shape[1:], dtype=np.int64))  # targets per sample
    batch = max(1, batch // per)  # about ``batch`` targets at once: the logits are (batch, vocab, T)
    with torch.no_grad():
        for a in range(0, len(y), batch):
            xb, yb = torch.from_numpy(x[a : a + batch]), torch.from_numpy(y[a : a + batch])
            out = model(xb)
            loss += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
    return correct / max(y.size, 1), loss / max(y.size, 1)
