"""The client step: the one place where a client turns the global model into an Update.

Trainer ranks (:mod:`fedhpc.runtime.trainer`) and remote workers
(:mod:`fedhpc.gateway.worker`) both call :meth:`ClientStep.run`, so nothing
about a client's result depends on where it ran: simulated dropout, fault
injection, federated dropout, partial work, local training, error feedback,
encoding, the simulated completion time and sealing all happen here. Every
random draw comes from (run seed, round, client, purpose). This module
imports neither MPI nor gRPC.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
from torch import nn

from fedhpc.attack import AttackPlan, DataAttack, UpdateAttack, get_attack
from fedhpc.clock import Clock, client_round_seconds
from fedhpc.compress import ErrorFeedback, get_codec
from fedhpc.config import CodecConfig, RunConfig
from fedhpc.models import Layout
from fedhpc.privacy import client_noise, clip
from fedhpc.ring import Accumulator
from fedhpc.runtime.fold import coefficient, run_ring
from fedhpc.runtime.state import ClientStates
from fedhpc.runtime.submodels import Submodels
from fedhpc.runtime.training import Abandoned, LocalTrainer
from fedhpc.secagg import SecAggClient
from fedhpc.secagg import frame as masked_frame
from fedhpc.seeds import SEED_CODEC, SEED_DROPOUT, derive_seed
from fedhpc.strategy import get_strategy
from fedhpc.types import ClientProfile
from fedhpc.update import HEADER, BufferPool, Status, UpdateHeader, failure_update, seal_update

log = logging.getLogger("fedhpc.step")


@dataclass(frozen=True)
class ClientTask:
    """What a client is asked to do in a round."""

    round: int
    client: int
    mu: float = 0.0  # FedProx proximal coefficient (0 = none)
    clip: float = 0.0  # differential privacy: the round's L2 bound on the update (0 = no DP)
    width: float = 1.0  # sub-models: the fraction of every hidden layer's units it trains (1 = the full model)


def attack_plan(cfg: RunConfig) -> AttackPlan | None:
    """The run's simulated attackers (None without ``[attack]``)."""
    a = cfg.attack
    if not a.kind:
        return None
    attackers = AttackPlan.choose(cfg.clients.total, a.fraction, a.clients, cfg.seed)
    return AttackPlan(get_attack(a.kind, a.scale), attackers, a.start_round - 1)


class ClientStep:
    """Trains clients of one run and seals their Updates.

    One object serves every client its rank or worker hosts: the trainer,
    the optimizer, the delta buffer and the frame pool are reused, while each
    client keeps its own error-feedback residual in :attr:`states` (by default
    all in RAM; a trainer rank passes its budgeted store).
    ``codec`` is the tier's codec config (``[codec]`` inside the job, the
    gateway's on the WAN). ``train_s`` adds up the seconds spent in local
    training since :meth:`begin_round`.
    """

    def __init__(self, cfg: RunConfig, job_id: int, model: nn.Module, layout: Layout, x: np.ndarray,
                 y: np.ndarray, codec: CodecConfig, clock: Clock, states: ClientStates | None = None,
                 scale: float = 1.0):
        self.cfg, self.job_id, self.layout, self.clock = cfg, job_id, layout, clock
        # secure aggregation: the client puts its update into the round's ring itself, weighted as
        # rank 0 weighs it (the run's coefficient_scale), before masking it
        self.ring, self.scale = run_ring(cfg), scale
        self.strategy = get_strategy(cfg.strategy.name, **cfg.strategy.params) if cfg.secagg.enabled else None
        self.codec = get_codec(codec.name, **codec.params)
        self.use_ef = codec.error_feedback and not self.codec.lossless
        self.states = states if states is not None else ClientStates(layout.size, codec.residual_dtype)
        self.local = LocalTrainer(cfg, model, layout, x, y)
        self.subs = Submodels.for_run(cfg, model, layout, tuple(x.shape[1:]))
        self.x, self.y = x, y
        self.narrow: dict[tuple[int, ...], LocalTrainer] = {}  # a trainer per sub-model shape (built once)
        self.attack = attack_plan(cfg)
        # the classes are those of the training labels (every rank holds them all: the same map everywhere)
        self.label_map = (self.attack.attack.label_map(int(y.max(initial=0)) + 1)
                          if self.attack is not None and isinstance(self.attack.attack, DataAttack) else None)
        self.delta = np.empty(layout.size, dtype=np.float32)  # reused by every client
        self.frames = BufferPool()  # the round's encoded Updates
        self.train_s = 0.0

    def begin_round(self) -> None:
        """Start a round: the previous round's frames are free again (their sends completed)."""
        self.frames.reclaim()
        self.train_s = 0.0

    def run(self, task: ClientTask, weights: np.ndarray, indices: np.ndarray, profile: ClientProfile,
            should_stop: Callable[[], bool], round_start: float, secagg: SecAggClient | None = None) -> np.ndarray:
        """Train ``task.client`` on the samples ``indices`` from the global ``weights``;
        return its sealed Update: OK, DROPOUT (simulated) or ERROR (training raised).
        With ``secagg`` (the client's side of the round's secure aggregation) an OK
        Update carries its masked input instead of its codec frame.

        ``should_stop()`` is polled between batches (the round closed: raises
        :class:`~fedhpc.runtime.training.Abandoned`); ``round_start`` is the
        monotonic time the round's model arrived, the origin of the
        wall-clock partial-work cutoff.
        """
        cfg, r, cid = self.cfg, task.round, task.client
        p = profile.dropout_prob
        if p and np.random.default_rng(derive_seed(cfg.seed, r, cid, SEED_DROPOUT)).random() < p:
            return failure_update(Status.DROPOUT, self.job_id, r, cid, "")
        epochs = self.epochs(profile, len(indices), task.width)
        st = cfg.stragglers
        cutoff = self.clock.epoch_cutoff(round_start, st.deadline_s) if st.partial_work else math.inf

        def after_epoch(seconds: float) -> bool:
            # a slow host spends its extra time (wall clock: it sleeps, interruptibly) ...
            if profile.speed < 1 and not self.clock.spend(seconds * (1 / profile.speed - 1), should_stop):
                raise Abandoned
            # ... and trains another epoch only if one as long still ends before the cutoff
            return time.monotonic() + seconds / profile.speed <= cutoff

        t0 = time.perf_counter()
        try:
            if cid in cfg.faults.error_clients:
                raise RuntimeError(f"injected fault: client {cid} fails during training")
            plan = self.attack if self.attack is not None and self.attack.attacks(r, cid) else None
            local, kept = self.trainer(r, cid, task.width)
            start = weights if kept is None else weights[kept]
            try:
                delta, loss = local.train(indices, start, r, cid, task.mu, should_stop, self.delta[: start.size],
                                          epochs, after_epoch, None if plan is None else self.label_map)
            finally:
                self.train_s += time.perf_counter() - t0
            clipped = False
            if cfg.dp.enabled:  # what leaves the client is bounded (error feedback is refused with DP)
                if not task.clip > 0:
                    raise RuntimeError(f"round {r}'s task has no DP clip ({task.clip}): rank 0 and this rank disagree")
                clipped = clip(delta, task.clip) > task.clip
                if cfg.dp.placement == "client":  # its share of the noise, before it leaves (masked)
                    dp = cfg.dp
                    delta += client_noise(None if dp.secret_noise else cfg.seed, r, cid, delta.size,
                                          dp.noise_multiplier * task.clip / math.sqrt(cfg.dp_min_clients))
            if plan is not None and isinstance(plan.attack, UpdateAttack):  # what it sends is its own choice
                plan.attack.corrupt(delta, plan.rng(cfg.seed, r, cid))
            payload = self.encode(r, cid, delta, kept)
            if secagg is not None:
                payload = self.mask(payload, secagg, len(indices), loss)
        except Abandoned:
            raise
        except Exception as exc:  # one client's failure is data for the orchestrator, not a crash
            log.warning("round %d client %d failed: %s", r, cid, exc)
            return failure_update(Status.ERROR, self.job_id, r, cid, f"{type(exc).__name__}: {exc}")
        if cid in cfg.faults.corrupt_clients:
            payload[HEADER.size + (payload.nbytes - HEADER.size) // 2] ^= 0xFF
        compute = len(indices) * epochs * cfg.profiles.cost_per_sample_s * self.flops_ratio(task.width)
        down = 4 * (self.layout.size if kept is None else kept.size)  # only its slice of the model travels down
        sim_s = client_round_seconds(profile, compute, down, payload.nbytes - HEADER.size)
        head = UpdateHeader(Status.OK, self.job_id, r, cid, len(indices), loss, time.perf_counter() - t0, sim_s,
                            clipped=clipped, masked=secagg is not None)
        return seal_update(head, payload)

    def epochs(self, profile: ClientProfile, samples: int, width: float = 1.0) -> int:
        """Epochs the client trains: ``local.epochs``, or under ``stragglers.partial_work``
        what the clock lets fit before the deadline (the simulated clock computes it from
        the client's speed and its sub-model's cost; the wall clock decides epoch by epoch,
        in :meth:`run`)."""
        cfg = self.cfg
        if not cfg.stragglers.partial_work:
            return cfg.local.epochs
        per_epoch = samples * cfg.profiles.cost_per_sample_s * self.flops_ratio(width) / profile.speed
        n = self.layout.size if self.subs is None else self.subs.size(width)
        fixed = client_round_seconds(profile, 0.0, 4 * n, self.codec.wire_size(n))
        return self.clock.planned_epochs(cfg.local.epochs, per_epoch, fixed, cfg.stragglers.deadline_s)

    def flops_ratio(self, width: float) -> float:
        """What a client of ``width`` computes, relative to the full model."""
        return 1.0 if self.subs is None else self.subs.flops_ratio(width)

    def trainer(self, r: int, cid: int, width: float) -> tuple[LocalTrainer, np.ndarray | None]:
        """The trainer of the client's model at ``width`` and the flat coordinates it holds (None:
        the full model): a smaller module for a sub-model, built once per shape (its weights
        are loaded from the slice each time it trains)."""
        kept = None if self.subs is None else self.subs.kept(r, cid, width)
        if kept is None:
            return self.local, None
        assert self.subs is not None
        shape = self.subs.shape(width)
        if shape not in self.narrow:
            module = self.subs.build(r, cid, width)
            self.narrow[shape] = LocalTrainer(self.cfg, module, Layout(module), self.x, self.y)
        return self.narrow[shape], kept

    def mask(self, payload: np.ndarray, secagg: SecAggClient, samples: int, loss: float) -> np.ndarray:
        """The masked input of an encoded update (``payload``: its codec frame after the
        header's room): the frame decoded as rank 0 would decode it, folded into the ring with
        the client's coefficient exactly as a folder would fold it (the range check included),
        then masked. The codec frame is let go."""
        n = self.layout.size
        assert self.strategy is not None, "masking without secure aggregation"
        part = self.codec.decode_parts(memoryview(payload)[HEADER.size :], n, check_finite=False)
        out = self.frames.take(HEADER.size + masked_frame.frame_bytes(n))
        body = out[HEADER.size :]
        vals = masked_frame.values(body, n)
        coef = coefficient(self.strategy, samples, loss, self.scale, self.cfg.dp.enabled)
        Accumulator(self.ring, n, out=vals).fold(part.vals, coef, part.idx)
        secagg.mask(vals)
        masked_frame.seal(body, n)
        self.frames.release(payload)
        return out

    def encode(self, r: int, cid: int, delta: np.ndarray, kept: np.ndarray | None) -> np.ndarray:
        """Encode the client's delta (a sub-model's: the values at the full model's ``kept``
        coordinates) with its error-feedback state, which always spans the full model, so a
        client keeps what each coordinate still owes whatever width it trains next; leaving
        room for the Update header in front of the frame."""
        seed = derive_seed(self.cfg.seed, r, cid, SEED_CODEC)

        def encode(x: np.ndarray, ef: ErrorFeedback | None) -> np.ndarray:
            return self.codec.encode(x, ef, seed=seed, headroom=HEADER.size, alloc=self.frames.take)

        if not self.use_ef:
            return encode(delta, None)
        residual = self.states.checkout(cid)
        if kept is None:
            payload = encode(delta, ErrorFeedback(delta.size, residual))
        else:
            sub = ErrorFeedback(kept.size, residual[kept])
            payload = encode(delta, sub)
            residual[kept] = sub.residual
        self.states.commit(cid, residual)
        return payload
