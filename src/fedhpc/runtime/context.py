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
from fedhpc.table import ClientTable
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
        """The clients ``rank`` hosts (those :meth:`host_of` gives it), computed without
        asking for each of 100,000 clients."""
        if rank == self.gateway:
            return self.remote_clients
        if rank not in self.mpi_trainers:
            return []
        return list(range(self.mpi_trainers.index(rank), self.cfg.clients.total, len(self.mpi_trainers)))


def build_context(cfg: RunConfig, mpi_trainers: list[int], gateway: int | None = None) -> Context:
    torch.set_num_threads(cfg.local.threads)
    data = load_dataset(cfg.data_source())
    parts = partition(data.y_train, cfg.clients.total, cfg.data.partition, derive_seed(cfg.seed, SEED_PARTITION),
                      groups=data.groups, max_samples=cfg.data.max_client_samples, alpha=cfg.data.alpha,
                      classes_per_client=cfg.data.classes_per_client)
    model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed, cfg.lora)
    return Context(cfg, data, parts, model, Layout(model), mpi_trainers, gateway)


def simulated_profiles(cfg: RunConfig, remote_clients: list[int] | tuple[int, ...] = ()) -> ClientTable[ClientProfile]:
    """Per-client heterogeneity drawn from the config (deterministic in the seed), as
    a table of every client id up to the last of ``remote_clients``.

    ``remote_clients`` (played by gateway workers) get the reference speed
    and the configured link: what the simulated clock charges them, and what
    rank 0 assumes of them until their workers report measurements.
    """
    p, total = cfg.profiles, cfg.clients.total
    rng = np.random.default_rng(derive_seed(cfg.seed, SEED_PROFILE))
    speeds = np.exp(rng.normal(0.0, p.speed_sigma, total)) if p.speed_sigma > 0 else np.ones(total)
    for c in p.slow_clients:
        speeds[c] /= p.slow_factor
    table = ClientTable(ClientProfile, max([total, *(c + 1 for c in remote_clients)]))
    cols = table.columns
    cols["speed"][:total] = speeds
    cols["bandwidth_mbps"][:], cols["latency_ms"][:] = p.bandwidth_mbps, p.latency_ms
    cols["dropout_prob"][:] = cfg.faults.dropout_prob
    cols["remote"][list(remote_clients)] = True
    return table
