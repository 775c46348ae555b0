"""A trainer rank: hosts virtual clients, trains the ones assigned each round, sends their Updates."""

from __future__ import annotations

import functools
import logging
import time
from collections import deque

import numpy as np
from mpi4py import MPI

from fedhpc.clock import make_clock
from fedhpc.runtime.context import Context, simulated_profiles
from fedhpc.runtime.fold import coefficient_scale
from fedhpc.runtime.messages import Done, RoundTask, SecAggNeighbours, SecAggRouted, Serve, Train, Unmask
from fedhpc.runtime.rank import HostRank
from fedhpc.runtime.state import ClientStates
from fedhpc.runtime.step import ClientStep, ClientTask
from fedhpc.runtime.training import Abandoned
from fedhpc.runtime.transport import Tag, isend_chunked
from fedhpc.secagg import PublicKeys, Reveal, SealedShare, SecAggClient, SecAggError
from fedhpc.update import Status, failure_update

log = logging.getLogger("fedhpc.trainer")


class TrainerRank(HostRank):
    """Trains its share of the clients (``Context.host_of``) with one :class:`ClientStep`."""

    def __init__(self, comm: MPI.Comm, ctx: Context, job_id: int, hosts: MPI.Comm, states: ClientStates):
        super().__init__(comm, ctx, job_id, hosts, states)
        cfg = ctx.cfg
        self.profiles = simulated_profiles(cfg)
        self.sessions: dict[int, SecAggClient] = {}  # secure aggregation: each client's side of the round
        self.secagg_errors: dict[int, str] = {}  # why one that shared cannot go on
        self.step = ClientStep(cfg, job_id, ctx.model, ctx.layout, ctx.data.x_train, ctx.data.y_train, cfg.codec,
                               make_clock(cfg.clock), states, coefficient_scale(ctx.parts))

    def train_round(self, task: RoundTask) -> None:
        start = time.monotonic()  # the model just arrived: the round's origin for partial work
        r, sent, pending = task.round, 0, []
        spills, loads = self.states.spills, self.states.loads
        in_flight: list[tuple[list[MPI.Request], np.ndarray]] = []  # Updates sent whole, and their frames
        self.step.begin_round()
        if self.comm.rank in self.ctx.cfg.faults.crash_ranks:
            raise RuntimeError(f"injected fault: trainer rank {self.comm.rank} crashes in round {r}")
        for cid in task.clients_of(self.comm.rank):
            self.forward_signal()
            # the frames rank 0 has decided on, or received whole, are free for this client's Update
            self.take_verdicts()
            in_flight = [(reqs, frame) for reqs, frame in in_flight if not self._let_go(reqs, frame)]
            if self.round_closed():
                break
            secure = self.sessions.get(cid) if self.ctx.cfg.secagg.enabled else None
            if self.ctx.cfg.secagg.enabled and cid not in self.sharers:
                continue  # it did not share: rank 0 has already counted it out
            if cid in self.secagg_errors:
                buf = failure_update(Status.ERROR, self.job_id, r, cid, self.secagg_errors[cid])
            else:
                try:
                    buf = self.step.run(ClientTask(r, cid, task.mu, task.clip, task.widths.get(cid, 1.0)),
                                        self.weights, self.ctx.parts[cid],
                                        self.profiles[cid], self.round_closed, start, secure)
                except Abandoned:
                    break
            reqs = self.deliver(buf, functools.partial(self.step.frames.release, buf))
            pending += reqs
            sent += bool(reqs)
            if self.folder is None:
                in_flight.append((reqs, buf))
        self.finish_round(Done(r, sent, train_s=self.step.train_s, state_bytes=self.states.ram_bytes,
                               state_spills=self.states.spills - spills, state_loads=self.states.loads - loads),
                          pending)

    def serve(self, cmd: Serve) -> None:
        """Train the tasks in the order they came, each from its model version; keep only the
        versions queued tasks need and the newest (rank 0 sends a version once per rank)."""
        tasks: deque[Train] = deque()
        models: dict[int, np.ndarray] = {}
        in_flight: list[tuple[list[MPI.Request], np.ndarray]] = []
        sent, pause = 0, None
        spills, loads = self.states.spills, self.states.loads
        self.step.begin_round()
        if self.comm.rank in self.ctx.cfg.faults.crash_ranks:
            raise RuntimeError(f"injected fault: trainer rank {self.comm.rank} crashes at server step {cmd.round}")

        def stopping() -> bool:
            """Whether rank 0 said to abandon the tasks (polled between a slow host's naps and batches)."""
            nonlocal pause
            pause = self.take_tasks(tasks, models) or pause
            return pause is not None and pause.abandon

        while True:
            self.forward_signal()
            pause = self.take_tasks(tasks, models) or pause
            in_flight = [(reqs, frame) for reqs, frame in in_flight if not self._let_go(reqs, frame)]
            if tasks and pause is not None and pause.abandon:
                buf = self.abandoned(tasks.popleft())
                in_flight.append((isend_chunked(self.comm, buf, 0, Tag.UPDATE), buf))
                sent += 1
            elif tasks:
                t = tasks.popleft()
                try:
                    buf = self.step.run(ClientTask(t.ticket, t.client, t.mu), models[t.version],
                                        self.ctx.parts[t.client], self.profiles[t.client], stopping, time.monotonic())
                except Abandoned:
                    buf = self.abandoned(t)
                needed = {q.version for q in tasks} | {max(models)}
                for v in [v for v in models if v not in needed]:
                    del models[v]
                in_flight.append((isend_chunked(self.comm, buf, 0, Tag.UPDATE), buf))
                sent += 1
            elif pause is not None:
                self.paused(Done(cmd.round, sent, train_s=self.step.train_s, state_bytes=self.states.ram_bytes,
                                 state_spills=self.states.spills - spills, state_loads=self.states.loads - loads),
                            [r for reqs, _ in in_flight for r in reqs])
                return
            else:
                self.wait_task()

    def secagg_keys(self, task: RoundTask) -> tuple[PublicKeys, ...]:
        self.sessions = {cid: SecAggClient(task.round, cid) for cid in task.clients_of(self.comm.rank)}
        self.secagg_errors = {}
        silent = self.ctx.cfg.faults.drop_at_keys
        return tuple(s.keys() for cid, s in self.sessions.items() if cid not in silent)

    def secagg_shares(self, nb: SecAggNeighbours) -> tuple[SealedShare, ...]:
        shares: list[SealedShare] = []
        for cid, keys in sorted(nb.neighbours.items()):
            if cid in self.sessions and cid not in self.ctx.cfg.faults.drop_at_shares:
                try:
                    shares += self.sessions[cid].share(keys, nb.threshold)
                except SecAggError as exc:
                    log.warning("rank %d: round %d: %s", self.comm.rank, nb.round, exc)
        return tuple(shares)

    def secagg_routed(self, routed: SecAggRouted) -> None:
        for cid in sorted(self.sharers):
            try:
                self.sessions[cid].receive(routed.inbox.get(cid, ()), routed.sharers)
            except SecAggError as exc:
                self.secagg_errors[cid] = str(exc)

    def secagg_reveals(self, cmd: Unmask, survivors: frozenset[int]) -> tuple[list[Reveal], list[str]]:
        reveals: list[Reveal] = []
        errors: list[str] = []
        for cid in sorted(survivors - set(self.ctx.cfg.faults.drop_at_unmask)):
            try:
                reveals += self.sessions[cid].reveal(cmd.survivors, cmd.dropped)
            except SecAggError as exc:
                errors.append(str(exc))
        self.sessions = {}  # a round's secrets are used once
        return reveals, errors

    def _let_go(self, requests: list[MPI.Request], frame: np.ndarray) -> bool:
        """Give ``frame`` back to the pool if its sends have completed; say whether they had."""
        if not MPI.Request.Testall(requests):
            return False
        self.step.frames.release(frame)
        return True
