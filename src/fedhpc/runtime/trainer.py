"""A trainer rank: hosts virtual clients, trains the ones assigned each round, sends their Updates."""

from __future__ import annotations

import logging
import time

import numpy as np
from mpi4py import MPI

from fedhpc.clock import client_round_seconds
from fedhpc.compress import ErrorFeedback, get_codec
from fedhpc.runtime.client import SEED_CODEC, SEED_DROPOUT, Abandoned, LocalTrainer, derive_seed, wall_sleep
from fedhpc.runtime.context import Context, simulated_profiles
from fedhpc.runtime import signals
from fedhpc.runtime.protocol import (
    HEADER, BufferPool, Status, Tag, UpdateHeader, bcast_array, isend_chunked, pack_update, recv_arrays, recv_object,
    seal_update, send_arrays, wait_with_deadline,
)

log = logging.getLogger("fedhpc.trainer")

PARTIAL_WORK_MARGIN = 0.1  # share of the deadline kept for encoding and sending partial work (wall clock)


def simulated_seconds(ctx: Context, profile, samples: int, up_bytes: int, epochs: int) -> float:
    """A client's round time on the simulated clock: its training at ``cost_per_sample_s``,
    the whole model down and ``up_bytes`` up (:func:`fedhpc.clock.client_round_seconds`)."""
    return client_round_seconds(profile, samples * epochs * ctx.cfg.profiles.cost_per_sample_s,
                                4 * ctx.layout.size, up_bytes)


class Trainer:
    def __init__(self, comm: MPI.Comm, ctx: Context, job_id: int):
        self.comm, self.ctx, self.job_id = comm, ctx, job_id
        cfg = ctx.cfg
        self.codec = get_codec(cfg.codec.name, **cfg.codec.params)
        self.use_ef = cfg.codec.error_feedback and not self.codec.lossless
        self.states: dict[int, ErrorFeedback] = {}
        self.profiles = simulated_profiles(cfg)
        self.local = LocalTrainer(cfg, ctx.model, ctx.layout, ctx.data.x_train, ctx.data.y_train)
        self.feddrop = ctx.fed_dropout()
        self.weights = np.empty(ctx.layout.size, dtype=np.float32)
        self.delta = np.empty_like(self.weights)  # reused by every client this rank trains
        self.frames = BufferPool()  # the round's encoded Updates, reused once their sends completed
        self.signals_sent = 0  # SIGNAL messages sent to rank 0 (at most one)
        self.train_s = 0.0  # this round's seconds in local training, reported to rank 0 with DONE
        self.cutoff = float("inf")  # wall-clock partial work: no epoch may end after this (monotonic time)

    def round_closed(self) -> bool:
        return self.comm.Iprobe(source=0, tag=Tag.CLOSE)

    def run(self) -> int:
        """Serve the orchestrator's tasks until it says stop; return the exit status it asks for."""
        timeout = self.ctx.cfg.stragglers.timeout_s
        while True:
            self._forward_signal()
            task = self.comm.bcast(None, root=0)
            kind = task["type"]
            if kind == "stop":
                return task["exit"]
            if kind == "checkpoint":
                send_arrays(self.comm, {c: s.residual for c, s in self.states.items()}, 0, timeout)
            elif kind == "restore":
                for cid, residual in recv_arrays(self.comm, 0, self.ctx.layout.size, timeout):
                    self.states[cid] = ErrorFeedback(residual.size, residual)
            else:
                self.train_round(task)

    def _forward_signal(self) -> None:
        """Tell rank 0 once that this rank got SIGTERM/SIGUSR1: rank 0 decides when to stop."""
        if signals.received() and not self.signals_sent:
            self.comm.send(signals.received(), dest=0, tag=Tag.SIGNAL)
            self.signals_sent = 1

    def train_round(self, task: dict) -> None:
        cfg = self.ctx.cfg
        bcast_array(self.comm, self.weights)
        r, sent, pending = task["round"], 0, []
        self.train_s = 0.0
        st = cfg.stragglers
        if cfg.clock == "wall" and st.partial_work:
            # the round started when rank 0 broadcast the model; keep a tenth of the
            # deadline for encoding and sending, so the partial work arrives in time
            self.cutoff = time.monotonic() + (1 - PARTIAL_WORK_MARGIN) * st.deadline_s
        if self.comm.rank in cfg.faults.crash_ranks:
            raise RuntimeError(f"injected fault: trainer rank {self.comm.rank} crashes in round {r}")
        for cid in task["assign"].get(self.comm.rank, []):
            self._forward_signal()
            if self.round_closed():
                break
            try:
                buf = self.client_update(r, cid, task["mu"])
            except Abandoned:
                break
            pending += isend_chunked(self.comm, buf, 0, Tag.UPDATE)
            sent += 1
        self._forward_signal()
        closed_round = recv_object(self.comm, 0, Tag.CLOSE, cfg.stragglers.timeout_s, f"rank 0 to close round {r}")
        if closed_round != r:
            raise RuntimeError(f"rank {self.comm.rank}: orchestrator closed round {closed_round} while in round {r}")
        # None: no remote workers to report; 0: relays no model bytes beyond the broadcast
        self.comm.send((r, sent, None, self.train_s, 0), dest=0, tag=Tag.DONE)
        wait_with_deadline(pending, cfg.stragglers.timeout_s, f"rank 0 to receive round {r}'s updates")
        self.frames.reclaim()

    def encode(self, r: int, cid: int, delta: np.ndarray, kept: np.ndarray | None) -> np.ndarray:
        """Encode the client's delta (only the ``kept`` coordinates under federated
        dropout) with its error-feedback state, which always spans the full model,
        leaving room for the Update header in front of the frame."""
        seed = derive_seed(self.ctx.cfg.seed, r, cid, SEED_CODEC)
        state = self.states.setdefault(cid, ErrorFeedback(delta.size)) if self.use_ef else None
        room = {"seed": seed, "headroom": HEADER.size, "alloc": self.frames.take}
        if kept is None:
            return self.codec.encode(delta, state, **room)
        if state is None:
            return self.codec.encode(delta[kept], None, **room)
        sub = ErrorFeedback(kept.size, state.residual[kept])
        payload = self.codec.encode(delta[kept], sub, **room)
        state.residual[kept] = sub.residual
        return payload

    def local_epochs(self, profile, samples: int) -> int:
        """Epochs the client trains this round: ``local.epochs``, or with
        ``stragglers.partial_work`` on the simulated clock as many as fit before
        the deadline at its simulated speed, at least one (a client too slow for
        one is late). On the wall clock, :meth:`after_epoch` decides as it goes."""
        cfg = self.ctx.cfg
        per_epoch = samples * cfg.profiles.cost_per_sample_s / profile.speed
        if not cfg.stragglers.partial_work or cfg.clock == "wall" or per_epoch == 0:
            return cfg.local.epochs
        fixed = simulated_seconds(self.ctx, profile, samples, self.codec.wire_size(self.ctx.layout.size), 0)
        return int(min(cfg.local.epochs, max(1, (cfg.stragglers.deadline_s - fixed) // per_epoch)))

    def after_epoch(self, profile, seconds: float) -> bool:
        """Wall clock, after each of a client's epochs: sleep to emulate a slow
        host (``profiles``, interruptible by CLOSE), then say whether another
        epoch of the same length still ends before the partial-work cutoff."""
        if profile.speed < 1:
            wall_sleep(seconds * (1 / profile.speed - 1), self.round_closed)
        return time.monotonic() + seconds / profile.speed <= self.cutoff

    def client_update(self, r: int, cid: int, mu: float) -> np.ndarray:
        """Train client ``cid`` for round ``r``; return its packed Update (OK, DROPOUT or ERROR)."""
        cfg, ctx = self.ctx.cfg, self.ctx
        profile = self.profiles[cid]
        indices = ctx.parts[cid]
        head = UpdateHeader(Status.OK, self.job_id, r, cid, len(indices), 0.0, 0.0, 0.0, 0)
        p = profile.dropout_prob
        if p and np.random.default_rng(derive_seed(cfg.seed, r, cid, SEED_DROPOUT)).random() < p:
            head.status = Status.DROPOUT
            return pack_update(head, b"")
        epochs = self.local_epochs(profile, len(indices))
        t0 = time.perf_counter()
        try:
            if cid in cfg.faults.error_clients:
                raise RuntimeError(f"injected fault: client {cid} fails during training")
            kept = None if self.feddrop is None else self.feddrop.kept(r, cid)
            mask = None if kept is None else self.feddrop.mask(kept)
            wall = (lambda seconds: self.after_epoch(profile, seconds)) if cfg.clock == "wall" else None
            try:
                delta, loss = self.local.train(indices, self.weights, r, cid, mu, self.round_closed, mask,
                                               self.delta, epochs, wall)
            finally:
                self.train_s += time.perf_counter() - t0
            payload = self.encode(r, cid, delta, kept)
        except Abandoned:
            raise
        except Exception as exc:  # one client's failure is data for the orchestrator, not a crash of the rank
            log.warning("round %d client %d failed: %s", r, cid, exc)
            head.status = Status.ERROR
            return pack_update(head, f"{type(exc).__name__}: {exc}".encode()[:4096])
        if cid in cfg.faults.corrupt_clients:
            payload[HEADER.size + (payload.nbytes - HEADER.size) // 2] ^= 0xFF
        head.loss = loss
        head.compute_s = time.perf_counter() - t0
        head.sim_s = simulated_seconds(ctx, profile, len(indices), payload.nbytes - HEADER.size, epochs)
        return seal_update(head, payload)
