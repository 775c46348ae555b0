"""The gateway rank: to rank 0 a trainer rank whose clients are external workers.

It serves the workers over gRPC (:class:`~fedhpc.gateway.server.GatewayServer`)
and speaks the trainer protocol over MPI: it receives the round's model,
hands each assigned remote client's task to the worker playing it, forwards
the Update bytes the workers push, reports a failure at once for a client with
no worker or whose worker went silent, and accounts for the round at CLOSE
like any trainer (adding the profiles of the connected workers).
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque

import numpy as np
from mpi4py import MPI

from fedhpc.gateway import fedhpc_pb2 as pb
from fedhpc.gateway.server import ANY, Answer, GatewayServer, Task, fingerprint, load_tokens
from fedhpc.runtime.context import Context
from fedhpc.runtime.fold import coefficient_scale
from fedhpc.runtime.messages import Done, RoundTask, SecAggNeighbours, SecAggRouted, Serve, Train, Unmask, Workers
from fedhpc.runtime.rank import HostRank
from fedhpc.runtime.transport import Tag, isend_chunked
from fedhpc.secagg import PublicKeys, Reveal, SealedShare
from fedhpc.update import Status, failure_update, max_update_bytes

log = logging.getLogger("fedhpc.gateway")


class GatewayRank(HostRank):
    """Hosts the remote clients: their training happens in the workers, their state too."""

    def __init__(self, comm: MPI.Comm, ctx: Context, job_id: int, hosts: MPI.Comm):
        super().__init__(comm, ctx, job_id, hosts)
        g = ctx.cfg.gateway
        self.coef_scale = coefficient_scale(ctx.parts)  # what a masking worker weighs its update by
        self.server = GatewayServer(
            job_id=job_id, slots=ctx.remote_clients, config_toml=ctx.cfg.to_toml(),
            tokens=load_tokens(g.token_file), max_update_bytes=max_update_bytes(ctx.layout.size),
            calls_per_second=g.calls_per_second, heartbeat_s=g.heartbeat_s, max_samples=g.max_samples,
            stream_idle_s=g.stream_idle_s)
        port = self.server.start(g.listen, g.tls_cert, g.tls_key, g.client_ca)
        host = g.listen.rpartition(":")[0]
        security = ("mutual TLS" if g.client_ca else "TLS") if g.tls_cert else "NO TLS (tokens travel in clear)"
        log.info("gateway listening on %s:%d (%s), remote clients %d..%d", host, port, security,
                 ctx.remote_clients[0], ctx.remote_clients[-1])
        if g.tls_cert:
            log.info("gateway certificate SHA-256 fingerprint %s", fingerprint(g.tls_cert))
        self._await_workers(g.min_workers, g.wait_s)

    def _await_workers(self, count: int, wait_s: float) -> None:
        """Hold the first round until ``count`` workers registered (or ``wait_s`` passed),
        then tell rank 0 who is there so they can be selected from the first round on."""
        deadline = time.monotonic() + wait_s
        if count:
            log.info("waiting up to %.0fs for %d worker(s) to register", wait_s, count)
        while len(self.server.connected()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        connected = self.server.connected()
        if len(connected) < count:
            log.warning("only %d of %d workers registered within %.0fs; starting anyway", len(connected), count,
                        wait_s)
        self.comm.send(Workers(connected), dest=0, tag=Tag.WORKERS)

    def run(self) -> int:
        try:
            return super().run()
        finally:
            # a worker busy training asks for its next task within a round's time; heartbeats bound it too
            self.server.stop(drain_s=10 * self.ctx.cfg.gateway.heartbeat_s)

    # -- secure aggregation: each step handed to the workers, their answers relayed ---------------
    def _ask(self, r: int, steps: dict[int, pb.TaskChunk]) -> list[Answer]:
        """Hand each client's worker its step of round ``r`` and return the answers that come
        within ``secagg.step_timeout_s`` (a silent worker has dropped out of the step)."""
        asked = {cid for cid, chunk in steps.items() if self.server.offer_task(Task(r, cid, step=chunk))}
        got: dict[int, Answer] = {}
        deadline = time.monotonic() + self.ctx.cfg.secagg.step_timeout_s
        while asked - got.keys() and time.monotonic() < deadline:
            self.forward_signal()
            try:
                a: Answer = self.server.answers.get(timeout=0.01)
            except queue.Empty:
                continue
            if a.round == r and a.client in asked and a.step == steps[a.client].kind:
                got[a.client] = a
                if a.error:
                    log.warning("round %d: remote client %d cannot take its secure aggregation step: %s", r + 1,
                                a.client, a.error)
        if asked - got.keys():
            log.warning("round %d: remote clients %s did not answer secure aggregation's step within %.0fs "
                        "(secagg.step_timeout_s): they drop out", r + 1, sorted(asked - got.keys()),
                        self.ctx.cfg.secagg.step_timeout_s)
        return [got[c] for c in sorted(got)]

    def secagg_keys(self, task: RoundTask) -> tuple[PublicKeys, ...]:
        r = task.round
        self.server.begin_round(r)
        steps = {cid: pb.TaskChunk(kind=pb.TaskChunk.SECAGG_KEYS, round=r, client_id=cid)
                 for cid in task.clients_of(self.comm.rank)}
        return tuple(a.keys for a in self._ask(r, steps) if a.keys is not None)

    def secagg_shares(self, nb: SecAggNeighbours) -> tuple[SealedShare, ...]:
        steps = {cid: pb.TaskChunk(kind=pb.TaskChunk.SECAGG_SHARE, round=nb.round, client_id=cid,
                                   threshold=nb.threshold, neighbours=[pb.SecAggKeys(
                                       client=k.client, cipher=k.cipher, mask=k.mask, self_digest=k.self_digest)
                                       for k in keys])
                 for cid, keys in nb.neighbours.items()}
        return tuple(s for a in self._ask(nb.round, steps) for s in a.shares)

    def secagg_routed(self, routed: SecAggRouted) -> None:
        for cid in sorted(self.sharers):
            inbox = [pb.SecAggShare(sender=s.sender, recipient=s.recipient, ciphertext=s.ciphertext)
                     for s in routed.inbox.get(cid, ())]
            self.server.offer_task(Task(routed.round, cid, step=pb.TaskChunk(
                kind=pb.TaskChunk.SECAGG_ROUTED, round=routed.round, client_id=cid, inbox=inbox,
                sharers=sorted(routed.sharers))))

    def secagg_reveals(self, cmd: Unmask, survivors: frozenset[int]) -> tuple[list[Reveal], list[str]]:
        self.server.begin_round(cmd.round)  # open again, for this step only
        try:
            answers = self._ask(cmd.round, {cid: pb.TaskChunk(
                kind=pb.TaskChunk.SECAGG_UNMASK, round=cmd.round, client_id=cid, survivors=cmd.survivors,
                dropped=cmd.dropped) for cid in survivors})
        finally:
            self.server.end_round()
        return ([rv for a in answers for rv in a.reveals],
                [f"remote client {a.client}: {a.error}" for a in answers if a.error])

    def train_round(self, task: RoundTask) -> None:
        timeout = self.ctx.cfg.stragglers.timeout_s
        r, sent, pending = task.round, 0, []

        def send(buf: np.ndarray) -> None:
            nonlocal sent, pending
            reqs = self.deliver(buf)
            pending += reqs
            sent += bool(reqs)

        def fail(cid: int, reason: str) -> None:
            send(failure_update(Status.ERROR, self.job_id, r, cid, reason))

        self.server.begin_round(r)
        model = self.weights.tobytes()
        secure = self.ctx.cfg.secagg.enabled
        for cid in task.clients_of(self.comm.rank):
            if secure and cid not in self.sharers:
                continue  # it did not share: rank 0 has already counted it out
            if not self.server.offer_task(Task(r, cid, task.mu, model, self.coef_scale if secure else 0.0,
                                               task.widths.get(cid, 1.0))):
                fail(cid, f"no worker is connected for remote client {cid}")
        # rank 0 closes the round within timeout_s of its start: give up only after its grace too
        deadline = time.monotonic() + timeout + self.ctx.cfg.stragglers.close_grace_s
        while not self.round_closed():
            self.forward_signal()
            self.take_verdicts()
            try:
                client, rnd, data = self.server.updates.get(timeout=0.002)
                if rnd == r:
                    send(np.frombuffer(data, dtype=np.uint8))
            except queue.Empty:
                pass
            for cid in self.server.lost_clients():
                fail(cid, f"the worker of client {cid} disconnected mid-round")
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway: rank 0 did not close round {r} within its timeout and grace "
                                   f"({timeout + self.ctx.cfg.stragglers.close_grace_s:.0f}s)")
        self.server.end_round()
        # trains nothing itself; the model bytes it relayed to workers count as sent down
        self.finish_round(Done(r, sent, relayed_bytes=self.server.bytes_down, workers=self.server.connected()),
                          pending)

    def serve(self, cmd: Serve) -> None:
        """Hand every task to its client's worker as it comes (a worker plays one client, which
        has one task out at a time) and relay the Updates they push. A task whose worker is gone,
        went silent or holds it past ``stragglers.timeout_s`` fails; rank 0 hears of workers
        that join or leave as it happens."""
        timeout = self.ctx.cfg.stragglers.timeout_s
        tasks: deque[Train] = deque()
        models: dict[int, np.ndarray] = {}
        out: dict[int, tuple[Train, float]] = {}  # client -> its task, and when it was handed out
        sent, pause, pending = 0, None, []
        known = self.server.connected()

        def send(buf: np.ndarray) -> None:
            nonlocal sent
            pending.extend(isend_chunked(self.comm, buf, 0, Tag.UPDATE))
            sent += 1

        def fail(t: Train, reason: str) -> None:
            out.pop(t.client, None)
            send(failure_update(Status.ERROR, self.job_id, t.ticket, t.client, reason))

        self.server.begin_round(ANY)
        while True:
            self.forward_signal()
            pause = self.take_tasks(tasks, models) or pause
            if pause is not None and pause.abandon:
                for t in [*tasks, *(t for t, _ in out.values())]:
                    out.pop(t.client, None)
                    send(self.abandoned(t))
                tasks.clear()
            while tasks:
                t = tasks.popleft()
                if self.server.offer_task(Task(t.ticket, t.client, t.mu, models[t.version].tobytes())):
                    out[t.client] = (t, time.monotonic())
                else:
                    fail(t, f"no worker is connected for remote client {t.client}")
            for v in [v for v in models if v != max(models)]:
                del models[v]  # every task is handed out: only the newest version can be needed again
            try:
                client, ticket, data = self.server.updates.get(timeout=0.002)
                if client in out and out[client][0].ticket == ticket:
                    del out[client]
                    send(np.frombuffer(data, dtype=np.uint8))
            except queue.Empty:
                pass
            for cid in self.server.lost_clients():
                if cid in out:
                    fail(out[cid][0], f"the worker of client {cid} disconnected while training")
            for t, since in list(out.values()):
                if time.monotonic() - since > timeout:
                    fail(t, f"the worker of client {t.client} did not push its update within {timeout:.0f}s "
                            f"(stragglers.timeout_s)")
            if (now := self.server.connected()).keys() != known.keys():
                known = now
                self.comm.send(Workers(now), dest=0, tag=Tag.WORKERS)
            if pause is not None and not out and not tasks:
                self.server.end_round()
                self.paused(Done(cmd.round, sent, relayed_bytes=self.server.bytes_down, workers=now), pending)
                return

