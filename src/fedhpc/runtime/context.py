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
from fedhpc.seeds import SEED_PARTITION, SEED_PROFILE, derive_seed
from fedhpc.types import ClientProfile


@dataclass
class Context:
    cfg: RunConfig
    data: Dataset
    parts: list[np.ndarray]  # client id -> indices into the train split
    model: nn.Module
    layout: Layout
    mpi_trainers: list[int]  # ranks that host and train the MPI clients
    gateway: int | None = None  # the gateway rank, whose clients are external workers

    @property
    def trainers(self) -> list[int]:
        """Every rank that takes part in rounds (closing, accounting, checkpoints)."""
        return self.mpi_trainers + ([self.gateway] if self.gateway is not None else [])

    @property
    def remote_clients(self) -> list[int]:
        """Client ids played by gateway workers: they follow the MPI-hosted ones."""
        if self.gateway is None:
            return []
        total = self.cfg.clients.total
        return list(range(total, total + self.cfg.gateway.clients))

    @property
    def all_clients(self) -> list[int]:
        return list(range(self.cfg.clients.total)) + self.remote_clients

    def host_of(self, client: int) -> int:
        """The rank hosting ``client``: fixed for the run, so its state stays in one place
        (-1 for an id beyond the MPI clients in a run without a gateway: nobody hosts it)."""
        if client >= self.cfg.clients.total:
            return -1 if self.gateway is None else self.gateway
        return self.mpi_trainers[client % len(self.mpi_trainers)]

    def clients_of(self, rank: int) -> list[int]:
        return [c for c in self.all_clients if self.host_of(c) == rank]


def build_context(cfg: RunConfig, mpi_trainers: list[int], gateway: int | None = None) -> Context:
    torch.set_num_threads(cfg.local.threads)
    data = load_dataset(cfg.data)
    parts = partition(data.y_train, cfg.clients.total, cfg.data.partition, derive_seed(cfg.seed, SEED_PARTITION),
                      groups=data.groups, alpha=cfg.data.alpha, classes_per_client=cfg.data.classes_per_client)
    model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed)
    return Context(cfg, data, parts, model, Layout(model), mpi_trainers, gateway)


def simulated_profiles(cfg: RunConfig, remote_clients: list[int] | tuple[int, ...] = ()) -> dict[int, ClientProfile]:
    """Per-client heterogeneity drawn from the config (deterministic in the seed).

    ``remote_clients`` (played by gateway workers) get the reference speed
    and the configured link: what the simulated clock charges them, and what
    rank 0 assumes of them until their workers report measurements.
    """
    p = cfg.profiles
    rng = np.random.default_rng(derive_seed(cfg.seed, SEED_PROFILE))
    speeds = np.exp(rng.normal(0.0, p.speed_sigma, cfg.clients.total)) if p.speed_sigma > 0 else np.ones(cfg.clients.total)
    for c in p.slow_clients:
        speeds[c] /= p.slow_factor
    profiles = {c: ClientProfile(client_id=c, speed=float(speeds[c]), bandwidth_mbps=p.bandwidth_mbps,
                                 latency_ms=p.latency_ms, dropout_prob=cfg.faults.dropout_prob)
                for c in range(cfg.clients.total)}
    for c in remote_clients:
        profiles[c] = ClientProfile(client_id=c, bandwidth_mbps=p.bandwidth_mbps, latency_ms=p.latency_ms,
                                    dropout_prob=cfg.faults.dropout_prob, remote=True)
    return profiles
