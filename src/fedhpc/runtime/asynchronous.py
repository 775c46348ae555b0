"""Asynchronous aggregation at rank 0: which task's result is the next event, and what a
server step makes of the updates it applies.

In ``async.mode = "fedasync"`` (Xie et al. 2019) and ``"fedbuff"`` (Nguyen et al.
2022) ``concurrency`` clients train at once, each from the newest global model. A
dispatched task is a :class:`Ticket`: its id (the Update's round field, the seed of
everything the client draws), its client, the model version it started from and its
start and completion times on the run's clock. When a task completes, its client's
slot goes to the next client (:mod:`fedhpc.selection` picks among the idle ones) on the
model of that instant, and the server takes the update into its buffer, down-weighted by
its staleness (the server steps since its version, :mod:`fedhpc.staleness`), or refuses
it beyond ``async.max_staleness``. A full buffer (one update for FedAsync) is a server
step: :func:`step_delta` is its aggregate.

On the simulated clock a task's completion time is known when it is dispatched
(:func:`task_seconds`, from the client's profile: the formula a client's own stamp
uses). The :class:`Timeline` orders the events by (completion time, client id)
whatever order the ranks' results come in, so rank 0 processes the next event as soon
as that one task's result is there while every other task trains: the run is the same
to the bit for any number of ranks. On the wall clock the next event is the result
that came first.

This module imports no MPI; tests drive it in-process.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from fedhpc.clock import client_round_seconds
from fedhpc.ring import Accumulator, Ring
from fedhpc.staleness import Staleness
from fedhpc.strategy.base import fold_result
from fedhpc.types import ClientProfile, ClientResult

T = TypeVar("T")


@dataclass(frozen=True)
class Ticket:
    """One dispatched task: ``client`` trains from model ``version``, from clock time
    ``start_s``, completing at ``finish_s`` (simulated clock; ``inf`` on the wall clock,
    where nobody knows before it comes)."""

    id: int
    client: int
    version: int
    start_s: float
    finish_s: float = math.inf


def task_seconds(profile: ClientProfile, samples: int, epochs: int, cost_per_sample_s: float, model_bytes: int,
                 update_bytes: int) -> float:
    """Simulated seconds of one client's task: training ``samples`` for ``epochs`` and the
    model down and the update (``update_bytes``: its codec's wire size) up, as
    :func:`~fedhpc.clock.client_round_seconds` charges a synchronous round."""
    return client_round_seconds(profile, samples * epochs * cost_per_sample_s, model_bytes, update_bytes)


class Timeline(Generic[T]):
    """The tasks out and the results in, and which one is the next event.

    ``live``: the wall clock (events in arrival order); otherwise the simulated clock
    (events by completion time, then client id). A result is whatever the caller keeps
    of an arrival (rank 0: the Update's bytes).
    """

    def __init__(self, live: bool):
        self.live = live
        self.out: dict[int, Ticket] = {}  # dispatched, not yet an event
        self.arrived: dict[int, T] = {}  # their results that came, in arrival order
        self.busy: dict[int, int] = {}  # client -> its ticket out

    def dispatch(self, ticket: Ticket) -> None:
        """A task is out (its client has no other)."""
        if ticket.client in self.busy:
            raise ValueError(f"client {ticket.client} already has task {self.busy[ticket.client]} out")
        if ticket.id in self.out:
            raise ValueError(f"ticket {ticket.id} is already out")
        self.out[ticket.id] = ticket
        self.busy[ticket.client] = ticket.id

    def arrive(self, ticket_id: int, client: int, result: T) -> str | None:
        """File a task's result; return why it is refused (unknown ticket, another client's, a second one)."""
        ticket = self.out.get(ticket_id)
        if ticket is None:
            return f"is for task {ticket_id}, which is not out"
        if ticket.client != client:
            return f"claims client {client} for task {ticket_id}, which is client {ticket.client}'s"
        if ticket_id in self.arrived:
            return f"is a second one for task {ticket_id}"
        self.arrived[ticket_id] = result
        return None

    def blocking(self) -> Ticket | None:
        """The task whose result the next event needs, when it has not come (None: the next
        event is ready, or nothing is out; the wall clock never waits for a particular one)."""
        if self.live or not self.out:
            return None
        first = min(self.out.values(), key=lambda t: (t.finish_s, t.client))
        return None if first.id in self.arrived else first

    def next(self) -> tuple[Ticket, T] | None:
        """Take the next event, or None while it has not come."""
        if self.live:
            if not self.arrived:
                return None
            tid = next(iter(self.arrived))
        else:
            if not self.out:
                return None
            tid = min(self.out.values(), key=lambda t: (t.finish_s, t.client)).id
            if tid not in self.arrived:
                return None
        ticket = self.out.pop(tid)
        del self.busy[ticket.client]
        return ticket, self.arrived.pop(tid)


@dataclass
class Taken:
    """An update a server step takes: its result, its staleness and its strategy coefficient."""

    result: ClientResult
    staleness: int
    coef: float


def step_delta(taken: Iterable[Taken], n: int, weigh: Staleness, step_size: float, ring: Ring) -> np.ndarray | None:
    """A server step's aggregate, ``step_size * sum_i c_i s(tau_i) delta_i / sum_i c_i``
    (``c_i``: the strategy's coefficient, ``s``: the staleness weight), summed exactly in
    ``ring`` so that it is the same for any order; None when no update counts. The
    denominator holds no staleness weight: stale updates shrink the step instead of being
    renormalized back to a full one (FedBuff's (1/K) sum_i s(tau_i) delta_i, weighted by
    samples; with one update, FedAsync's w + alpha s(tau) delta)."""
    acc = Accumulator(ring, n)
    total = []
    for t in taken:
        if t.coef > 0:
            fold_result(acc, t.result, t.coef * weigh.weight(t.staleness) * step_size)
            total.append(t.coef)
    return acc.mean(math.fsum(total)) if total else None


def staleness_summary(taus: list[int]) -> dict:
    """What a metrics line says of the staleness of the updates a step applied."""
    if not taus:
        return {"staleness_mean": None, "staleness_max": None, "staleness": {}}
    values, counts = np.unique(np.asarray(taus), return_counts=True)
    return {"staleness_mean": float(np.mean(taus)), "staleness_max": int(values[-1]),
            "staleness": {str(int(v)): int(c) for v, c in zip(values, counts)}}

