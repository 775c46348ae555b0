"""Registration: every trainer rank profiles its host, rank 0 probes each link.

The measurements feed the adaptive selector (on the wall clock they replace the
configured speeds and bandwidths) and are logged so a user can see how
heterogeneous the allocation really is.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from mpi4py import MPI
from torch import nn

from fedhpc.runtime.context import Context
from fedhpc.runtime.transport import Tag, gather_object, wait_with_deadline
from fedhpc.runtime.training import host_memory_gb

PROBE_BYTES = 1 << 20
PINGS = 5


def host_profile(ctx: Context, batches: int = 5) -> dict:
    """Measure this host: training samples/s of the run's model on its input shape, and memory."""
    model = ctx.model
    bs = ctx.cfg.local.batch_size
    x = torch.from_numpy(ctx.data.x_train[:bs])  # real samples: right dtype and shape for any model
    y = torch.from_numpy(ctx.data.y_train[:bs])

    def step():  # forward and backward; the weights are left alone
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()

    step()  # warm-up: first-call allocations are not throughput
    t0 = time.perf_counter()
    for _ in range(batches):
        step()
    seconds = time.perf_counter() - t0
    return {"samples_per_s": batches * bs / max(seconds, 1e-9), "memory_gb": host_memory_gb(),
            "host": MPI.Get_processor_name()}


def register(comm: MPI.Comm, ctx: Context) -> dict[int, dict] | None:
    """Collective: returns {rank: profile with link latency_ms and bandwidth_mbps} on rank 0.
    Every exchange has a deadline: a rank stopped at start-up fails the job, never hangs it."""
    timeout = ctx.cfg.stragglers.timeout_s
    profile = host_profile(ctx) if comm.rank != 0 else {}
    small = np.zeros(1, dtype=np.uint8)
    big = np.zeros(PROBE_BYTES, dtype=np.uint8)
    links = {}

    def send(buf: np.ndarray, dest: int) -> None:
        wait_with_deadline([comm.Isend(buf, dest=dest, tag=Tag.PROBE)], timeout, f"rank {dest} to take the link probe")

    def recv(buf: np.ndarray, source: int) -> None:
        wait_with_deadline([comm.Irecv(buf, source=source, tag=Tag.PROBE)], timeout,
                           f"rank {source} to answer the link probe")

    for rank in range(1, comm.size):
        if comm.rank == 0:
            rtt = float("inf")
            for _ in range(PINGS):
                t0 = time.perf_counter()
                send(small, rank)
                recv(small, rank)
                rtt = min(rtt, time.perf_counter() - t0)
            t0 = time.perf_counter()
            send(big, rank)
            recv(small, rank)
            seconds = max(time.perf_counter() - t0 - rtt, 1e-9)
            links[rank] = {"latency_ms": rtt / 2 * 1e3, "bandwidth_mbps": PROBE_BYTES * 8 / seconds / 1e6}
        elif comm.rank == rank:
            for _ in range(PINGS):
                recv(small, 0)
                send(small, 0)
            recv(big, 0)
            send(small, 0)
    gathered = gather_object(comm, profile, timeout, "every rank's host profile")
    if gathered is None:  # not rank 0
        return None
    return {rank: {**gathered[rank], **links[rank]} for rank in range(1, comm.size)}
