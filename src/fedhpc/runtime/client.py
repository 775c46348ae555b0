"""Local training of one virtual client, identical whichever rank hosts it."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from fedhpc.config import RunConfig
from fedhpc.models import Layout


class Abandoned(Exception):
    """The orchestrator closed the round while this client was still training."""


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends only on ``parts`` (run seed, round, client, purpose)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


# distinct purposes, so that streams drawn for different things never coincide
SEED_TRAIN, SEED_DROPOUT, SEED_CODEC, SEED_SELECT, SEED_PROFILE, SEED_PARTITION, SEED_FEDDROP, SEED_EVAL = range(1, 9)


class LocalTrainer:
    """Trains a client's shard starting from the global weights (SGD/Adam, optional FedProx term)."""

    def __init__(self, cfg: RunConfig, model: nn.Module, layout: Layout, x: np.ndarray, y: np.ndarray):
        self.cfg, self.model, self.layout = cfg, model, layout
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)

    def train(self, indices: np.ndarray, weights: np.ndarray, round_: int, client: int, mu: float,
              should_stop: Callable[[], bool], mask: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """Return (delta = w_local - w_start, mean training loss of the last epoch).

        With a federated-dropout ``mask`` (0/1 over the flat model) the client
        trains the sub-model: masked coordinates start at zero and are zeroed
        again after every step, which is exactly the smaller network without
        those units, whatever the activation.
        """
        local = self.cfg.local
        start = weights if mask is None else weights * mask
        self.layout.load(self.model, start)
        params = list(self.model.parameters())
        masks = None if mask is None else [torch.from_numpy(mask[a:b]).view_as(p) for p, a, b in
                                           zip(params, self.layout.offsets, self.layout.offsets[1:])]
        anchor = [p.detach().clone() for p in params] if mu > 0 else None
        if local.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=local.lr, momentum=local.momentum)
        else:
            opt = torch.optim.Adam(params, lr=local.lr)
        seed = derive_seed(self.cfg.seed, round_, client, SEED_TRAIN)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # for layers that draw from the global RNG (nn.Dropout)
        idx = torch.from_numpy(indices)
        loss_fn = nn.CrossEntropyLoss()
        self.model.train()
        for _ in range(local.epochs):
            total, count = 0.0, 0
            order = idx[torch.randperm(len(idx), generator=gen)]
            for b in range(0, len(order), local.batch_size):
                if should_stop():
                    raise Abandoned
                batch = order[b : b + local.batch_size]
                opt.zero_grad()
                loss = loss_fn(self.model(self.x[batch]), self.y[batch])
                if anchor is not None:
                    loss = loss + 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
                loss.backward()
                opt.step()
                if masks is not None:
                    with torch.no_grad():
                        for p, m in zip(params, masks):
                            p.mul_(m)
                total += loss.item() * len(batch)
                count += len(batch)
        mean_loss = total / max(count, 1)
        return self.layout.flatten(self.model) - start, mean_loss


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 1024) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on (x, y)."""
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for a in range(0, len(y), batch):
            xb, yb = torch.from_numpy(x[a : a + batch]), torch.from_numpy(y[a : a + batch])
            out = model(xb)
            loss += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
    return correct / max(len(y), 1), loss / max(len(y), 1)


def wall_sleep(seconds: float, should_stop: Callable[[], bool]) -> None:
    """Sleep (to emulate a slow host in wall-clock mode) but wake up if the round closes."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if should_stop():
            raise Abandoned
        time.sleep(min(0.01, max(0.0, end - time.monotonic())))
