"""Rank 0 of the asynchronous modes (``async.mode = "fedasync" | "fedbuff"``).

Each server step is a "round" of :meth:`Orchestrator.run`'s loop (metrics line, run
record, evaluation, checkpoints, stop signals and the guard's stop rules are the
synchronous ones); :meth:`AsyncOrchestrator.round` runs the events of one step. The
hosting ranks serve tasks point to point (:class:`~fedhpc.runtime.messages.Serve`,
:class:`~fedhpc.runtime.messages.Train`): rank 0 sends a rank a model version once, the
ranks train their tasks in the order they came and send each Update as they would in a
round. Before any broadcast (a checkpoint, the end of the run) rank 0 pauses them: they
finish what they were given, and the Updates of the tasks still out are kept with the
checkpoint, so that a resumed run is the uninterrupted one to the bit on the simulated
clock. What is an event when, and what a step makes of its updates, is
:mod:`fedhpc.runtime.asynchronous`.

Rank 0 holds the Update of every task that came before its event (at most
``concurrency`` of them, compressed) and every model version a task still out
started from whose send has not completed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mpi4py import MPI

from fedhpc.checkpoint import Checkpoint, CheckpointError, Pending, ServerState
from fedhpc.errors import CorruptUpdateError
from fedhpc.record import STATUS
from fedhpc.ring import Ring
from fedhpc.runtime.asynchronous import Taken, Ticket, Timeline, staleness_summary, step_delta, task_seconds
from fedhpc.runtime.context import Context
from fedhpc.runtime.fold import coefficient
from fedhpc.runtime.messages import Command, Done, Pause, Serve, Train
from fedhpc.runtime.orchestrator import IDLE_MAX_S, IDLE_MIN_S, SIGNAL_CHECK_S, Orchestrator
from fedhpc.runtime.transport import Tag, isend_chunked, recv_update, wait_with_deadline
from fedhpc.seeds import SEED_ASYNC, derive_seed
from fedhpc.staleness import get_staleness
from fedhpc.types import ClientFailure, ClientResult, RoundOutcome
from fedhpc.update import Status, failure_update, unpack_update

log = logging.getLogger("fedhpc.async")

FAILURE_REASONS = {Status.DROPOUT: "dropout", Status.ERROR: "error", Status.REJECTED: "rejected"}


@dataclass
class _Arrival:
    """A task's Update as rank 0 keeps it until its event: its bytes and when it came (wall clock)."""

    buf: np.ndarray
    at_s: float


@dataclass
class _Step:
    """One server step as rank 0's event loop saw it."""

    began_s: float  # the run's clock at its start
    dispatched: int = 0
    taken: list[Taken] = field(default_factory=list)
    failures: list[ClientFailure] = field(default_factory=list)
    stale: int = 0  # updates refused beyond async.max_staleness
    bytes_up: int = 0
    bytes_down: int = 0
    train_s: float = 0.0  # its tasks' own seconds of local training, added up
    seconds: dict[int, float] = field(default_factory=dict)  # client -> its task's clock seconds
    nbytes: Counter = field(default_factory=Counter)  # client -> Update bytes


class AsyncOrchestrator(Orchestrator):
    """Rank 0's event loop: tasks out to the hosting ranks, their Updates in, one server step a round."""

    def __init__(self, comm: MPI.Comm, ctx: Context, job_id: int, out: Path, hosts: dict[int, dict]):
        super().__init__(comm, ctx, job_id, out, hosts)
        a = ctx.cfg.asynchronous
        self.weigh = get_staleness(a.staleness.name, **a.staleness.params)
        self.ring = Ring(ctx.cfg.aggregation.scale_bits, a.step_updates)
        self.timeline: Timeline[_Arrival] = Timeline(self.clock.live)
        self.now = 0.0  # the run's clock: the last event's (simulated), or seconds since it began (wall)
        self.origin = time.monotonic()  # the wall clock's zero, moved on resume to continue from its time
        self.next_ticket = 0
        self.serving = False  # the hosting ranks serve tasks (and take no broadcast)
        self.holds: dict[int, int] = {}  # rank -> the model version it was sent last
        self.sends: list[tuple[list[MPI.Request], np.ndarray]] = []  # model sends in flight, with their buffers
        self.received: Counter = Counter()  # Updates received from each rank while it serves
        self.heard: dict[int, float] = {}  # rank -> when rank 0 last heard from it while it serves
        self.step: _Step | None = None

    # -- checkpoints and the broadcast commands --------------------------------------------
    def command(self, cmd: Command) -> None:
        """A broadcast reaches ranks that take broadcasts: pause them first."""
        if not isinstance(cmd, Serve):
            self.pause()
        super().command(cmd)

    def server_state(self, rounds_done: int) -> ServerState:
        out = sorted(self.timeline.out.values(), key=lambda t: t.id)
        arrived = self.timeline.arrived
        assert all(t.id in arrived for t in out), "a checkpoint of tasks whose Updates have not come"
        pending = Pending(self.now, self.next_ticket,
                          np.array([[t.id, t.client, t.version] for t in out], np.int64).reshape(-1, 3),
                          np.array([[t.start_s, t.finish_s] for t in out], np.float64).reshape(-1, 2),
                          [arrived[t.id].buf for t in out])
        return ServerState(**(vars(super().server_state(rounds_done)) | {"pending": pending}))

    def restore(self, ckpt: Checkpoint) -> None:
        super().restore(ckpt)
        p = ckpt.server_state().pending
        if p is None:
            raise CheckpointError(f"checkpoint {ckpt.path} has no /async group: it was written by a synchronous run")
        self.now, self.next_ticket = p.time_s, p.next_ticket
        self.origin = time.monotonic() - (p.time_s if self.clock.live else 0.0)
        # their Updates came from this run's clients before the checkpoint (its digest covers them); the job id
        # in them may be another's (the job id changes with `rounds`), and their events validate them as usual
        for (tid, cid, version), (start, finish), buf in zip(p.tickets.tolist(), p.times.tolist(), p.updates):
            try:
                head, _ = unpack_update(buf)
            except CorruptUpdateError as exc:
                raise CheckpointError(f"checkpoint {ckpt.path}: the Update of task {tid} is unreadable ({exc})") from None
            if not (0 <= cid < len(self.ctx.all_clients) and 0 <= version <= self.first_round and tid < p.next_ticket
                    and (head.round, head.client) == (tid, cid)):
                raise CheckpointError(f"checkpoint {ckpt.path} holds task {tid} of client {cid} from version "
                                      f"{version}, which this run cannot have sent")
            self.timeline.dispatch(Ticket(tid, cid, version, start, finish))
            self.timeline.arrive(tid, cid, _Arrival(np.array(buf, np.uint8), 0.0))

    def pause(self) -> None:
        """Let every hosting rank finish the tasks it was given and take broadcasts again; their
        Updates are kept for their events. After a second stop signal the tasks not started yet
        fail instead (the run is to stop now, and a resumed one is no longer the uninterrupted one)."""
        if not self.serving:
            return
        abandon = self.stop_signals() >= 2
        for rank in self.ctx.trainers:
            self.comm.send(Pause(abandon), dest=rank, tag=Tag.TASK)
            self.heard[rank] = time.monotonic()  # each must answer within the timeout from now
        done: dict[int, Done] = {}
        status = MPI.Status()
        nap = IDLE_MIN_S
        while len(done) < len(self.ctx.trainers) or any(self.received[k] < done[k].sent for k in done):
            if self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=Tag.DONE, status=status):
                src = status.Get_source()
                done[src] = d = self.comm.recv(source=src, tag=Tag.DONE)
                self.heard[src] = time.monotonic()
                if d.workers is not None:
                    self.update_remote(d.workers)
            elif not self.receive():
                self.check_heard("finish their tasks for a checkpoint or the end of the run",
                                 [k for k in self.ctx.trainers if k not in done or self.received[k] < done[k].sent])
                time.sleep(nap)
                nap = min(2 * nap, IDLE_MAX_S)
        while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=Tag.WORKERS, status=status):  # sent before a Done
            self.update_remote(self.comm.recv(source=status.Get_source(), tag=Tag.WORKERS).connected)
        for ticket in [t for t in self.timeline.out.values() if t.id not in self.timeline.arrived]:
            self.lost(ticket, "its Update was refused when it came (see the warning above)")
        self.serving = False
        self.complete_sends()

    def complete_sends(self, wait: bool = True) -> None:
        """Let go of the model buffers whose sends completed (``wait``: of all, with a deadline)."""
        if wait:
            wait_with_deadline([r for reqs, _ in self.sends for r in reqs], self.ctx.cfg.stragglers.timeout_s,
                               "the hosting ranks to take their models")
        self.sends = [(reqs, buf) for reqs, buf in self.sends if not MPI.Request.Testall(reqs)]

    # -- a server step ---------------------------------------------------------------------
    def round(self, r: int) -> tuple[dict, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], list[float]]:
        """Server step ``r``: events until ``async.step_updates`` updates are taken (or the step
        gives up: nothing is out, too many events, a second stop signal), then apply them."""
        cfg, a = self.ctx.cfg, self.ctx.cfg.asynchronous
        t0 = time.monotonic()
        self.step = step = _Step(self.now)
        if not self.serving:
            self.command(Serve(r))
            self.serving, self.holds, self.received = True, {}, Counter()
            self.heard = dict.fromkeys(self.ctx.trainers, time.monotonic())
        self.fill(r)
        events, most = 0, 10 * a.step_updates + cfg.concurrency  # a step of failures only still ends
        while len(step.taken) < a.step_updates and events < most:
            event = self.next_event(r)
            if event is None:
                break
            events += 1
            self.take(r, *event)
            if len(step.taken) < a.step_updates:
                self.fill(r)
        if events == most:
            log.warning("server step %d ended after %d events with %d of its %d updates", r + 1, events,
                        len(step.taken), a.step_updates)
        outcome, norm_median, norms = self.guard.screen(RoundOutcome(r, [t.result for t in step.taken],
                                                                     step.failures))
        kept = {id(res) for res in outcome.results}
        taken = [t for t in step.taken if id(t.result) in kept]
        delta = step_delta(taken, self.ctx.layout.size, self.weigh, a.step_size, self.ring)
        if delta is not None:
            self.weights = self.strategy.step(self.weights, delta)
        self.selector.update(outcome, self.history, r, self.strategy.flagged)
        self.complete_sends(wait=False)
        metrics = self.line(r, t0, r + 1 == cfg.rounds, outcome, selected=step.dispatched, stale=step.stale,
                            bytes_up=step.bytes_up, bytes_down=step.bytes_down, train_s=step.train_s,
                            sim_seconds=self.now - step.began_s if not self.clock.live else None,
                            norm_median=norm_median, state=(0, 0, 0))
        metrics |= staleness_summary([t.staleness for t in taken]) | {"model_version": r + 1}
        return metrics, self._step_clients(outcome, step), norms

    @staticmethod
    def _progress_line(m: dict) -> str:
        acc = f"acc {m['accuracy']:.4f} loss {m['loss']:.4f}" if m["accuracy"] is not None else "acc -"
        stale = (f"staleness mean {m['staleness_mean']:.1f} max {m['staleness_max']}"
                 if m["staleness_mean"] is not None else "nothing applied")
        return (f"step {m['round']:>4}: {acc} | {m['clients_reported']} applied ({stale}), {m['clients_failed']} "
                f"failed ({m['stale_dropped']} too stale), {m['clients_selected']} started | up "
                f"{m['bytes_up'] / 1e6:.2f} MB down {m['bytes_down'] / 1e6:.2f} MB | {m['round_seconds']:.2f}s"
                + (f" (simulated {m['sim_seconds']:.3f}s)" if m["sim_seconds"] is not None else ""))

    def _step_clients(self, outcome: RoundOutcome, step: _Step) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                           np.ndarray]:
        """(status, bytes up, seconds, width) per client for the run record: those whose
        event was in the step reported or failed (a client can be both in one step)."""
        total = len(self.ctx.all_clients)
        status, seconds = np.zeros(total, np.int8), np.full(total, np.nan)
        nbytes = np.zeros(total, np.int64)
        for f in outcome.failures:
            status[f.client_id] = STATUS["failed"]
        for res in outcome.results:
            status[res.client_id] = STATUS["reported"]
        for cid, s in step.seconds.items():
            seconds[cid] = s
        for cid, b in step.nbytes.items():
            nbytes[cid] = b
        width = np.where(status > 0, 1.0, np.nan).astype(np.float32)
        return status, nbytes, seconds, width

    def fill(self, r: int) -> None:
        """Give every free slot of ``concurrency`` to a client that is not training, chosen by
        the selector with a draw of its own (run seed, ticket), starting now on the newest model."""
        cfg = self.ctx.cfg
        free = cfg.concurrency - len(self.timeline.out)
        if free <= 0:
            return
        idle = [c for c in self.available() if c not in self.timeline.busy]
        for _ in range(min(free, len(idle))):
            rng = np.random.default_rng(derive_seed(cfg.seed, self.next_ticket, SEED_ASYNC))
            chosen, reasons = self.selector.select(r, idle, 1, self.profiles, self.history, rng)
            for line in reasons:
                log.debug("server step %d selection: %s", r + 1, line)
            if not chosen:
                return
            idle.remove(chosen[0])
            self.dispatch(r, chosen[0])

    def dispatch(self, version: int, cid: int) -> None:
        """Send ``cid`` its task from model ``version`` (the model too, if its rank lacks it)."""
        rank = self.ctx.host_of(cid)
        if not self.waiting(rank):  # it was idle: its silence so far is no sign of a hang
            self.heard[rank] = time.monotonic()
        start = time.monotonic() - self.origin if self.clock.live else self.now
        ticket = Ticket(self.next_ticket, cid, version, start, self.finish(cid))
        self.next_ticket += 1
        self.timeline.dispatch(ticket)
        send_model = self.holds.get(rank) != version
        self.comm.send(Train(ticket.id, cid, version, self.mu, send_model), dest=rank, tag=Tag.TASK)
        if send_model:
            self.holds[rank] = version
            self.sends.append((isend_chunked(self.comm, self.weights.view(np.uint8), rank, Tag.MODEL), self.weights))
            assert self.step is not None
            self.step.bytes_down += self.model_bytes
        assert self.step is not None
        self.step.dispatched += 1
        log.debug("task %d: client %d from version %d, %.3fs to %.3fs", ticket.id, cid, version, ticket.start_s,
                  ticket.finish_s)

    def waiting(self, rank: int) -> int:
        """How many tasks out on ``rank`` have not sent their Update yet."""
        return sum(self.ctx.host_of(t.client) == rank and t.id not in self.timeline.arrived
                   for t in self.timeline.out.values())

    def lost(self, ticket: Ticket, why: str) -> None:
        """A task out whose Update will not come: its event is the client's failure."""
        self.timeline.arrive(ticket.id, ticket.client, _Arrival(
            failure_update(Status.ERROR, self.job_id, ticket.id, ticket.client, why), time.monotonic() - self.origin))

    def finish(self, cid: int) -> float:
        """When a task of ``cid`` starting now completes on the simulated clock (inf on the wall clock)."""
        if self.clock.live:
            return float("inf")
        cfg, n = self.ctx.cfg, self.ctx.layout.size
        samples = len(self.ctx.parts[cid]) if cid < len(self.ctx.parts) else self.remote_workers[cid].num_samples
        return self.now + task_seconds(self.profiles[cid], samples, cfg.local.epochs, cfg.profiles.cost_per_sample_s,
                                       self.model_bytes, self.codec_of(cid).wire_size(n))

    def next_event(self, r: int) -> tuple[Ticket, _Arrival] | None:
        """Receive until the next event is there; None if nothing is out, or at a second stop signal."""
        nap, next_check = IDLE_MIN_S, 0.0
        while True:
            event = self.timeline.next()
            if event is not None:
                return event
            if not self.timeline.out:
                return None
            if self.receive():
                nap = IDLE_MIN_S
                continue
            now = time.monotonic()
            if now >= next_check:
                next_check = now + SIGNAL_CHECK_S
                if self.stop_signals() >= 2:
                    log.warning("server step %d ends early: a second stop signal", r + 1)
                    return None
            blocking = self.timeline.blocking()
            ranks = sorted({self.ctx.host_of(t.client) for t in self.timeline.out.values()
                            if t.id not in self.timeline.arrived})
            self.check_heard(f"send task {blocking.id}'s Update (client {blocking.client})" if blocking else
                             "send the Updates of their tasks", ranks)
            time.sleep(nap)
            nap = min(2 * nap, IDLE_MAX_S)

    def check_heard(self, what: str, ranks: list[int]) -> None:
        """Abort if one of ``ranks`` has been silent for ``stragglers.timeout_s`` (a hung rank)."""
        timeout = self.ctx.cfg.stragglers.timeout_s
        now = time.monotonic()
        silent = [k for k in ranks if now - self.heard.get(k, now) > timeout]
        if silent:
            self.abort(f"rank(s) {silent} did not {what} within {timeout:.0f}s (stragglers.timeout_s); aborting "
                       f"the job (a rank is stopped, hung or dead; the checkpoints already written are kept)")

    def receive(self) -> bool:
        """Take one message from a serving rank, if one came: an Update, or the gateway's workers."""
        status = MPI.Status()
        if self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=Tag.WORKERS, status=status):
            self.update_remote(self.comm.recv(source=status.Get_source(), tag=Tag.WORKERS).connected)
            return True
        if not self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=Tag.UPDATE, status=status):
            return False
        src = status.Get_source()
        self.received[src] += 1
        self.heard[src] = time.monotonic()
        try:
            buf = recv_update(self.comm, status, self.max_update_bytes, self.ctx.cfg.stragglers.timeout_s)
        except (CorruptUpdateError, TimeoutError) as exc:
            log.warning("an update from rank %d was rejected: %s", src, exc)
            return True
        self.file(src, buf, time.monotonic() - self.origin)
        return True

    def file(self, src: int, buf: np.ndarray, at_s: float) -> None:
        """Keep a task's Update for its event, if it is one rank ``src`` may send (checked
        against the task, what rank 0 knows of the client, and the job)."""
        try:
            head, _ = unpack_update(buf)
        except CorruptUpdateError as exc:
            log.warning("an update from rank %d was rejected: %s", src, exc)
            return
        if head.job != self.job_id:
            log.warning("an update from rank %d was rejected: it is of another job (%d)", src, head.job)
            return
        claim = self.claim_problem(src, head)
        ticket = self.timeline.out.get(head.round)
        if claim and ticket is not None and ticket.client == head.client and self.ctx.host_of(ticket.client) == src:
            log.warning("an update from rank %d was rejected: it %s; client %d's task fails", src, claim, head.client)
            buf = failure_update(Status.ERROR, self.job_id, head.round, head.client, f"its update {claim}")
            claim = None
        why = claim or self.timeline.arrive(head.round, head.client, _Arrival(buf, at_s))
        if why:
            log.warning("an update from rank %d was rejected: it %s", src, why)
        elif self.step is not None:
            self.step.bytes_up += buf.nbytes
            self.step.nbytes[head.client] += buf.nbytes

    def take(self, r: int, ticket: Ticket, arrival: _Arrival) -> None:
        """Process one event: the client's failure, its update refused as too stale or corrupt,
        or its update taken into the step with its staleness."""
        cfg, step = self.ctx.cfg, self.step
        assert step is not None
        self.now = ticket.finish_s if not self.clock.live else max(self.now, arrival.at_s)
        cid, tau = ticket.client, r - ticket.version
        step.seconds[cid] = self.now - ticket.start_s
        head, body = unpack_update(arrival.buf)
        step.train_s += head.compute_s
        if head.status != Status.OK:
            detail = bytes(body).decode("utf-8", "replace")
            step.failures.append(ClientFailure(cid, FAILURE_REASONS[head.status], detail))
            return
        limit = cfg.asynchronous.max_staleness
        if limit and tau > limit:
            step.stale += 1
            detail = (f"task {ticket.id} started from model version {ticket.version}, {tau} server steps ago, more "
                      f"than async.max_staleness = {limit}")
            log.debug("server step %d: client %d's update refused: %s", r + 1, cid, detail)
            step.failures.append(ClientFailure(cid, "stale", detail))
            return
        try:
            frame = self.codec_of(cid).open(body, expected_n=self.ctx.layout.size)
        except CorruptUpdateError as exc:
            log.warning("server step %d: client %d sent a corrupt update: %s", r + 1, cid, exc)
            step.failures.append(ClientFailure(cid, "corrupt", str(exc)))
            return
        result = ClientResult(cid, head.num_samples, head.loss, None, step.seconds[cid], arrival.buf.nbytes,
                              norm=frame.norm, frame=frame)
        step.taken.append(Taken(result, tau, coefficient(self.strategy, head.num_samples, head.loss, self.scale)))

