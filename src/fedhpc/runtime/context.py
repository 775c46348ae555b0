"""What every rank sets up identically from the config: data, partition, model, placement, profiles."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedhpc.config import RunConfig
from fedhpc.data import Dataset, load_dataset
from fedhpc.data.partition import partition
from fedhpc.models import Layout, build_model
from fedhpc.runtime.client import SEED_PARTITION, SEED_PROFILE, derive_seed
from fedhpc.types import ClientProfile


@dataclass
class Context:
    cfg: RunConfig
    data: Dataset
    parts: list[np.ndarray]  # client id -> indices into the train split
    model: nn.Module
    layout: Layout
    trainers: list[int]  # ranks that host clients

    def host_of(self, client: int) -> int:
        """The rank hosting ``client``: fixed for the run, so its state stays in one place."""
        return self.trainers[client % len(self.trainers)]

    def clients_of(self, rank: int) -> list[int]:
        return [c for c in range(self.cfg.clients.total) if self.host_of(c) == rank]

    def fed_dropout(self):
        """The federated-dropout mapper, or None when ``fed_dropout.rate`` is 0."""
        from fedhpc.runtime.feddropout import FedDropout

        if self.cfg.fed_dropout.rate == 0:
            return None
        return FedDropout(self.model, self.layout, self.cfg.fed_dropout.rate, self.cfg.seed)


def build_context(cfg: RunConfig, trainers: list[int]) -> Context:
    torch.set_num_threads(cfg.local.threads)
    data = load_dataset(cfg.data)
    parts = partition(data.y_train, cfg.clients.total, cfg.data.partition, derive_seed(cfg.seed, SEED_PARTITION),
                      groups=data.groups, alpha=cfg.data.alpha, classes_per_client=cfg.data.classes_per_client)
    model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed)
    return Context(cfg, data, parts, model, Layout(model), trainers)


def simulated_profiles(cfg: RunConfig) -> dict[int, ClientProfile]:
    """Per-client heterogeneity drawn from the config (deterministic in the seed)."""
    p = cfg.profiles
    rng = np.random.default_rng(derive_seed(cfg.seed, SEED_PROFILE))
    speeds = np.exp(rng.normal(0.0, p.speed_sigma, cfg.clients.total)) if p.speed_sigma > 0 else np.ones(cfg.clients.total)
    for c in p.slow_clients:
        speeds[c] /= p.slow_factor
    return {c: ClientProfile(client_id=c, speed=float(speeds[c]), bandwidth_mbps=p.bandwidth_mbps,
                             latency_ms=p.latency_ms, dropout_prob=cfg.faults.dropout_prob)
            for c in range(cfg.clients.total)}
