"""Rank 0: the round loop. Select, broadcast, collect until the deadline or the
fastest k, aggregate through the strategy, evaluate, record."""

from __future__ import annotations

import functools
import json
import math
import logging
import shutil
import time
from collections import Counter
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mpi4py import MPI

from fedhpc import kernels as K
from fedhpc.checkpoint import (
    Checkpoint, CheckpointError, ServerState, Shard, checkpoint_path, shard_directory, write_checkpoint,
)
from fedhpc.clock import make_clock
from fedhpc.errors import CorruptUpdateError
from fedhpc.privacy import Accountant, gaussian_noise, noise_seed
from fedhpc.privacy.adaptive import count_noise, count_stddev, next_clip, unclipped_fraction, vector_noise_multiplier
from fedhpc.record import STATUS, RunRecord
from fedhpc.ring import out_of_range, ring_mean
from fedhpc.runtime import signals
from fedhpc.runtime.collector import Admission, CloseRules, RoundCollector
from fedhpc.runtime.context import Context, simulated_profiles
from fedhpc.runtime.guard import EXIT_STOPPED, NormGuard, stop_reason
from fedhpc.runtime.fold import Folder, coefficient, coefficient_scale, round_total, run_ring
from fedhpc.runtime.messages import (
    Close, Command, Done, Folded, Reduce, RemoteProfile, RestoreState, Restored, RoundTask, SaveState, SecAggNeighbours,
    SecAggReveals, SecAggRouted, Stop, Unmask, Verdict,
)
from fedhpc.runtime.rank import codec_of_client, folds
from fedhpc.runtime.step import attack_plan
from fedhpc.runtime.submodels import FULL, Submodels, choose_width
from fedhpc.runtime.training import evaluate
from fedhpc.runtime.transport import (
    Tag, abort_job, bcast_array, bcast_object, gather_mean, recv_object, recv_update,
)
from fedhpc.secagg import SealedShare, SecAggError, SecAggServer
from fedhpc.seeds import SEED_EVAL, SEED_SECAGG, SEED_SELECT, derive_seed
from fedhpc.selection import get_selector
from fedhpc.selection.base import REFUSED_REASONS
from fedhpc.strategy import get_strategy
from fedhpc.tracking import MLflow, TensorBoard
from fedhpc.table import ClientTable
from fedhpc.types import ClientFailure, ClientHistory, ClientProfile, ClientResult, RoundOutcome
from fedhpc.update import BufferPool, Status, UpdateHeader, max_update_bytes, unpack_update

log = logging.getLogger("fedhpc.orchestrator")

SIGNAL_CHECK_S = 0.01  # how often the receive loop looks for a second stop signal
# the receive loop's nap when nothing came: from IDLE_MIN_S, doubling while nothing comes, to
# IDLE_MAX_S, so that rank 0 does not take a trainer's core on a shared node to spin
IDLE_MIN_S, IDLE_MAX_S = 0.0002, 0.002
PROGRESS_S = 5.0  # how often long work (a checkpoint) says how far it got
VERDICT_MIN_BYTES = 1 << 20  # a folding rank is told early to let go of frames of at least this size


@dataclass
class SecureRound:
    """Rank 0's secure aggregation of one round: its protocol state (None once it failed),
    who dropped after sharing, its cost, and why it failed."""

    round: int
    session: SecAggServer | None = None
    dropped: list[int] = field(default_factory=list)
    seconds: float = 0.0
    nbytes: int = 0
    error: str | None = None

    def server(self) -> SecAggServer:
        if self.session is None:
            raise SecAggError(self.error or "secure aggregation was not set up")
        return self.session

    def fail(self, why: str) -> None:
        """The protocol cannot go on this round (the round says so once, at its end)."""
        self.session, self.error = None, why

    def sharers(self) -> frozenset[int]:
        return self.session.sharers if self.session is not None else frozenset()


def wire_size(msg) -> int:
    """The bytes a control message takes on the wire (mpi4py pickles it)."""
    return len(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))


@dataclass
class _Collected:
    """A closed round as rank 0's receive loop saw it."""

    collector: RoundCollector
    bytes_up: int = 0  # every Update received, accepted or not
    train_s: float = 0.0  # the slowest trainer rank's seconds in local training
    relayed_down: int = 0  # model bytes the gateway streamed on to its workers
    state_bytes: int = 0  # client state the hosting ranks hold in RAM
    state_spills: int = 0  # client states spilled to disk in the round, and read back
    state_loads: int = 0


class Orchestrator:
    def __init__(self, comm: MPI.Comm, ctx: Context, job_id: int, out: Path, hosts: dict[int, dict]):
        self.comm, self.ctx, self.job_id, self.out = comm, ctx, job_id, out
        cfg = ctx.cfg
        self.codec_of = codec_of_client(ctx)  # the codec of each client's frames
        self.remote_workers: dict[int, RemoteProfile] = {}  # remote client -> its worker, as of the last round
        self.strategy = get_strategy(cfg.strategy.name, **cfg.strategy.params)
        self.selector = get_selector(cfg.selection.name, **cfg.selection.params)
        self.mu = cfg.strategy.mu if cfg.strategy.mu is not None else self.strategy.client_mu()
        self.weights = ctx.layout.flatten(ctx.model)
        self.model_bytes = self.weights.nbytes
        self.subs = Submodels.for_run(cfg, ctx.model, ctx.layout, ctx.data.input_shape)
        self.widths: dict[int, float] = {}  # sub-models: the round's width of each selected client
        # differential privacy: every round's sampling rate, composed by dp-accounting
        self.accountant = Accountant(cfg.dp.noise_multiplier, cfg.dp.delta) if cfg.dp.enabled else None
        self.spent = ""  # why the privacy budget allows no further round ("" = it does)
        self.noise_seed = noise_seed(cfg.dp.secret_noise, cfg.seed) if cfg.dp.enabled else 0
        self.clip = cfg.dp.clip if cfg.dp.enabled else 0.0  # the round's clip (adaptive_clip: it moves)
        self.unclipped: float | None = None  # adaptive_clip: the round's released fraction under the clip
        self.clock = make_clock(cfg.clock)
        st = cfg.stragglers
        self.rules = CloseRules(st.deadline_s, st.fastest_k, st.timeout_s)
        self.guard = NormGuard(cfg.guard)
        n_test, cap = len(ctx.data.y_test), cfg.eval.max_samples
        # a fixed subset, so every evaluation of the run is comparable (large test sets take minutes on CPU)
        self.eval_idx = (np.sort(np.random.default_rng(derive_seed(cfg.seed, SEED_EVAL)).choice(n_test, cap, replace=False))
                         if 0 < cap < n_test else slice(None))
        self.profiles = self._profiles(hosts)
        self.history = ClientTable(ClientHistory, len(ctx.all_clients))
        self.first_round = 0
        self.lines: list[str] = []  # metrics.jsonl so far
        self.forwarded_signals = 0  # the highest stop-signal count a trainer reported
        self.signal_messages = 0  # SIGNAL messages received
        mean_samples = float(np.mean([len(p) for p in ctx.parts]))
        self.selector.set_costs(down_bytes=self.model_bytes, up_bytes=self.codec_of(0).wire_size(ctx.layout.size),
                                reference_cost=mean_samples * cfg.local.epochs * cfg.profiles.cost_per_sample_s)
        self.max_update_bytes = max_update_bytes(ctx.layout.size)
        self.updates = BufferPool()  # the round's received Updates; 'none' deltas are views into them
        self.verdicts: Counter = Counter()  # Verdict messages sent to each rank in the current round
        # a sum-decomposable strategy is folded where the Updates are: on the hosting ranks, or
        # here as they arrive (aggregation.fold = "rank0"); the others get every Update at the close
        self.scale = coefficient_scale(ctx.parts)
        self.folder = (Folder(cfg, self.strategy, ctx.layout.size, job_id, self.codec_of, self.subs, self.scale)
                       if folds(cfg, self.strategy) and cfg.aggregation.fold == "rank0" else None)
        self.attack = attack_plan(cfg)  # simulated Byzantine clients; an omniscient attack forges here

    def _profiles(self, hosts: dict[int, dict]) -> ClientTable[ClientProfile]:
        """Client profiles: the configured heterogeneity, plus what registration measured
        of each client's host. On the wall clock the measurements are what the
        selector should trust; on the simulated clock the configured values rule,
        so that runs stay deterministic."""
        fastest = max(h["samples_per_s"] for h in hosts.values())
        for rank, h in sorted(hosts.items()):
            log.info("rank %d on %s: %.0f samples/s, %.1f GiB, link %.3f ms / %.0f Mbit/s", rank, h["host"],
                     h["samples_per_s"], h["memory_gb"], h["latency_ms"], h["bandwidth_mbps"])
        profiles = simulated_profiles(self.ctx.cfg, self.ctx.remote_clients)
        cols, wall = profiles.columns, self.ctx.cfg.clock == "wall"
        for rank, h in hosts.items():  # every client of a rank gets its host's measurements, column by column
            mine = self.ctx.clients_of(rank)
            cols["samples_per_s"][mine], cols["memory_gb"][mine] = h["samples_per_s"], h["memory_gb"]
            if wall:
                cols["speed"][mine] *= h["samples_per_s"] / fastest
                cols["bandwidth_mbps"][mine], cols["latency_ms"][mine] = h["bandwidth_mbps"], h["latency_ms"]
        return profiles

    # -- the run ------------------------------------------------------------
    def restore(self, ckpt: Checkpoint) -> None:
        """Continue from a validated checkpoint: server state here; each hosting rank takes
        its clients' state from the checkpoint's shards (whichever ranks wrote them)."""
        st = ckpt.server_state()
        self.weights, self.first_round, self.lines = st.weights, st.round, st.metrics
        self.strategy.load_state_dict(st.strategy)
        self.profiles, self.history = st.profiles, st.history
        self.guard.restore(st.metrics)
        if self.accountant is not None:  # the rounds so far, as they were sampled
            self.accountant.rates = [json.loads(line)["dp_sampling_rate"] for line in st.metrics]
            self.noise_seed = st.noise_seed
            self.spent = self.privacy_exhausted()
            if self.ctx.cfg.dp.adaptive_clip and st.metrics:  # the clip after the last round, as it was computed
                last = json.loads(st.metrics[-1])
                self.clip = self.next_clip(last["dp_clip"], last["dp_unclipped"])
        t0 = time.monotonic()
        self.command(RestoreState(str(shard_directory(ckpt.path)), tuple(ckpt.shards())))
        reports: list[Restored] = self.reports(f"restoring the client states of {ckpt.path}")
        failed = [r.error for r in reports if r.error]
        if failed:
            raise CheckpointError(f"checkpoint {ckpt.path}: {failed[0]}")
        log.info("resumed from %s after round %d (%d client states in %.1fs)", ckpt.path, st.round,
                 sum(r.clients for r in reports), time.monotonic() - t0)

    def checkpoint(self, rounds_done: int) -> Path:
        """Write a checkpoint: this file here while every hosting rank writes its clients'
        state to its own shard, in parallel."""
        directory = self.out / "checkpoints"
        shards = shard_directory(checkpoint_path(directory, rounds_done))
        shutil.rmtree(shards, ignore_errors=True)  # what an interrupted write of this round left
        t0 = time.monotonic()
        self.command(SaveState(str(shards)))
        state = self.server_state(rounds_done)
        written: list[Shard] = []

        def gather() -> list[Shard]:
            written.extend(self.reports(f"the checkpoint of round {rounds_done}"))
            return written

        path = write_checkpoint(directory, self.ctx.cfg, self.ctx.layout, state, gather)
        size = path.stat().st_size + sum(p.stat().st_size for p in shards.iterdir())
        log.info("checkpoint written: %s (%.1f MB in %.1fs: %d client states in %d shards)", path, size / 1e6,
                 time.monotonic() - t0, sum(s.clients for s in written), len(written))
        return path

    def server_state(self, rounds_done: int) -> ServerState:
        """What a checkpoint after ``rounds_done`` rounds holds of rank 0."""
        return ServerState(rounds_done, self.weights, self.strategy.state_dict(), self.profiles, self.history,
                           self.lines, self.noise_seed)

    def reports(self, what: str, tag: int = Tag.STATE) -> list:
        """The report of every hosting rank (``Tag.STATE``: a checkpoint shard written, or client
        states restored; ``Tag.SECAGG``: a step of secure aggregation), in rank order; says
        every ``PROGRESS_S`` how many have come. A rank silent for ``stragglers.timeout_s``
        aborts the job."""
        timeout, ranks = self.ctx.cfg.stragglers.timeout_s, self.ctx.trainers
        got: dict[int, object] = {}
        status = MPI.Status()
        t0 = last = heard = time.monotonic()
        while len(got) < len(ranks):
            if self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=tag, status=status):
                src = status.Get_source()
                got[src] = self.comm.recv(source=src, tag=tag)
                heard = time.monotonic()
                continue
            now = time.monotonic()
            if now - heard > timeout:
                self.abort(f"{what}: rank(s) {sorted(set(ranks) - set(got))} did not report within {timeout:.0f}s; "
                           f"aborting the job (the checkpoints already written are kept)")
            if now - last >= PROGRESS_S:
                last = now
                log.info("%s: %d of %d ranks done, %.0fs so far", what, len(got), len(ranks), now - t0)
            time.sleep(SIGNAL_CHECK_S / 10)
        return [got[r] for r in ranks]

    def command(self, cmd: Command) -> None:
        """Broadcast ``cmd`` (and a round's model with a RoundTask) to every rank, or abort the
        job (exit 3) if a rank does not take it within ``stragglers.timeout_s``."""
        timeout = self.ctx.cfg.stragglers.timeout_s
        what = f"every rank to take {type(cmd).__name__}"
        try:
            bcast_object(self.comm, cmd, timeout, what)
            if isinstance(cmd, RoundTask):
                bcast_array(self.comm, self.weights, timeout, f"every rank to take round {cmd.round}'s model")
        except TimeoutError as exc:
            self.abort(f"{exc}; aborting the job (a rank is stopped, hung or dead)")

    def abort(self, message: str) -> None:
        """End the whole job now, with exit status 3, saying why once."""
        log.critical(message)
        abort_job(self.comm, 3)

    def stop_signals(self) -> int:
        """Stop signals seen by any rank (forwarded by the trainers, or received here)."""
        status = MPI.Status()
        while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=Tag.SIGNAL, status=status):
            self._take_signal(self.comm.recv(source=status.Get_source(), tag=Tag.SIGNAL))
        return max(signals.received(), self.forwarded_signals)

    def _take_signal(self, count: int) -> None:
        self.forwarded_signals = max(self.forwarded_signals, count)
        self.signal_messages += 1

    def drain_signals(self, sent: int) -> None:
        """Receive the SIGNAL messages not yet received of the ``sent`` the other ranks sent."""
        while self.signal_messages < sent:
            self._take_signal(recv_object(self.comm, MPI.ANY_SOURCE, Tag.SIGNAL, self.ctx.cfg.stragglers.timeout_s,
                                          "a forwarded stop signal"))

    def run(self) -> tuple[dict | None, int]:
        """Run the remaining rounds; return (last metrics, exit status of the job)."""
        cfg = self.ctx.cfg
        every = cfg.checkpoint.every
        metrics, status = None, 0
        record = RunRecord(self.out / "run.h5", len(self.ctx.all_clients), self.first_round)
        board = TensorBoard(self.out, cfg, self.first_round) if cfg.tracking.tensorboard else None
        flow = MLflow(self.out, cfg) if cfg.tracking.mlflow else None
        with open(self.out / "metrics.jsonl", "w") as mfile:
            mfile.writelines(line + "\n" for line in self.lines)
            for r in range(self.first_round, cfg.rounds):
                if self.spent:
                    assert self.accountant is not None
                    log.warning("stopping before round %d of %d: %s; the model of round %d is final and "
                                "checkpointed (epsilon %.3f, %.3f by PLD)", r + 1, cfg.rounds, self.spent, r,
                                self.accountant.epsilon(), self.accountant.epsilon(pld=True))
                    break
                metrics, per_client, norms = self.round(r)
                self.lines.append(json.dumps(metrics))
                mfile.write(self.lines[-1] + "\n")
                mfile.flush()
                record.append(metrics, *per_client)
                if board is not None:
                    board.round(metrics, norms)
                if flow is not None:
                    flow.round(metrics)
                log.info(self._progress_line(metrics))
                why = stop_reason(self.weights, self.lines, cfg.guard)
                if why:
                    log.critical("stopping after round %d: %s; the last good checkpoint is kept (%s), and the job "
                                 "exits with status %d", r + 1, why, self.out / "checkpoints", EXIT_STOPPED)
                    status = EXIT_STOPPED
                    break
                stop = self.stop_signals() > 0
                if stop or r + 1 == cfg.rounds or self.spent or (every and (r + 1) % every == 0):
                    self.checkpoint(r + 1)
                if stop and r + 1 < cfg.rounds:
                    log.warning("stop signal received: checkpoint written after round %d of %d; the job exits "
                                "with status %d; continue with `fedhpc run --resume %s`", r + 1, cfg.rounds,
                                signals.EXIT_PREEMPTED, self.out)
                    status = signals.EXIT_PREEMPTED
                    break
        record.close()
        if board is not None:
            board.close()
        self.command(Stop(status))
        if status == 0:
            np.save(self.out / "final_weights.npy", self.weights)
        if flow is not None:
            flow.close(status)
        return metrics, status

    def round(self, r: int) -> tuple[dict, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], list[float]]:
        """Run round ``r``; return its metrics line, the per-client arrays of the run record and
        the norms of the round's updates."""
        cfg, ctx = self.ctx.cfg, self.ctx
        t0 = time.monotonic()
        rng = np.random.default_rng(derive_seed(cfg.seed, r, SEED_SELECT))
        available = self.available()
        selected, reasons = self.selector.select(r, available, cfg.clients.per_round, self.profiles, self.history, rng)
        for line in reasons:
            log.debug("round %d selection: %s", r, line)
        assign: dict[int, list[int]] = {}
        for c in selected:
            assign.setdefault(ctx.host_of(c), []).append(c)
        self.widths = self.choose_widths(r, selected)
        if self.folder is not None:
            self.folder.begin(r, selected, self.widths)
        self.command(RoundTask(r, {k: tuple(v) for k, v in assign.items()}, self.mu, self.clip, self.widths))
        secure = SecureRound(r) if cfg.secagg.enabled else None
        got = self.collect(r, selected, t0, self.secagg_setup(secure, selected) if secure is not None else [])
        outcome, closed_at, _ = got.collector.outcome()
        attackers = None  # simulated attackers among the round's results, before any defense
        if self.attack is not None:
            outcome = self.attack.forge_round(outcome)
            attackers = sum(self.attack.attacks(r, res.client_id) for res in outcome.results)
        norm_median, norms = None, list[float]()
        if secure is None:  # with secure aggregation nobody's norm is known: the clients bound their own
            outcome, norm_median, norms = self.guard.screen(outcome)
        sim_seconds = closed_at if cfg.clock == "simulated" else None  # the wall clock's is round_seconds
        if secure is not None:
            try:
                self.weights = self.fold_round(r, outcome, secure)
            except SecAggError as exc:
                secure.error = str(exc)
                log.warning("round %d: secure aggregation failed, the model stays as it was: %s", r + 1, exc)
        elif folds(cfg, self.strategy):
            self.weights = self.fold_round(r, outcome)
        else:  # the run's ring (aggregation.scale_bits) also for a sum-decomposable rule under an omniscient attack
            self.weights = self.strategy.aggregate(self.weights, outcome, run_ring(cfg))
        self.selector.update(outcome, self.history, r, self.strategy.flagged)
        self.updates.reclaim()  # nothing refers to this round's deltas any more
        rate = epsilon = epsilon_pld = None
        if self.accountant is not None:
            rate = self.sampling_rate()
            self.accountant.rates.append(rate)
            epsilon = self.accountant.epsilon()
            self.spent = self.privacy_exhausted()
        final = r + 1 == cfg.rounds or bool(self.spent)  # the last round of the run: evaluated, and PLD's epsilon
        if self.accountant is not None and final:
            epsilon_pld = self.accountant.epsilon(pld=True)
        metrics = self.line(r, t0, final, outcome, selected=len(selected), stale=got.collector.stale,
                            bytes_up=got.bytes_up, bytes_down=self.model_bytes * (self.comm.size - 1) + got.relayed_down,
                            train_s=got.train_s, sim_seconds=sim_seconds, norm_median=norm_median,
                            state=(got.state_bytes, got.state_spills, got.state_loads)) | {
            "epsilon": epsilon,  # at dp.delta, RDP (an upper bound); PLD, tighter (0.5 s a call), at the end
            "epsilon_pld": epsilon_pld,
            "dp_sampling_rate": rate,
            "dp_clip": self.clip or None,
            "dp_unclipped": self.unclipped,
            "attackers_reported": attackers,
            # secure aggregation: rank 0's seconds in its steps, their control bytes both ways, and why it failed
            "secagg_seconds": secure.seconds if secure is not None else None,
            "secagg_bytes": secure.nbytes if secure is not None else 0,
            "secagg_dropped": len(secure.dropped) if secure is not None else None,
            "secagg_error": secure.error if secure is not None else None,
            # sub-models: the mean width of the clients selected (None without)
            "width_mean": float(np.mean(list(self.widths.values()))) if self.widths else None,
        }
        metrics["overhead_seconds"] = metrics["round_seconds"] - got.train_s
        if self.unclipped is not None:
            self.clip = self.next_clip(self.clip, self.unclipped)
        return metrics, self._per_client(outcome, got), norms

    def line(self, r: int, t0: float, final: bool, outcome: RoundOutcome, *, selected: int, stale: int, bytes_up: int,
             bytes_down: int, train_s: float, sim_seconds: float | None, norm_median: float | None,
             state: tuple[int, int, int]) -> dict:
        """Round ``r``'s metrics line (evaluated every ``eval.every`` rounds and at the
        ``final`` one), with every key of both modes: what only one mode knows is None here."""
        cfg = self.ctx.cfg
        accuracy = loss = None
        if (r + 1) % cfg.eval.every == 0 or final:
            self.ctx.layout.load(self.ctx.model, self.weights)
            accuracy, loss = evaluate(self.ctx.model, self.ctx.data.x_test[self.eval_idx],
                                      self.ctx.data.y_test[self.eval_idx])
        reasons_count = Counter(f.reason for f in outcome.failures)
        round_s = time.monotonic() - t0
        return {
            "round": r + 1,
            "accuracy": accuracy,  # a language model's: next-token accuracy
            "loss": loss,
            "perplexity": math.exp(min(loss, 700.0)) if loss is not None and cfg.model.hf_path else None,
            "clients_selected": selected,
            "clients_reported": len(outcome.results),
            "clients_late": reasons_count.pop("late", 0),
            "clients_failed": sum(reasons_count.values()),
            # what counts against trust: updates the strategy set aside or clipped, or the guard refused
            "clients_flagged": len(self.strategy.flagged) + sum(reasons_count.get(r, 0) for r in REFUSED_REASONS),
            "failures": dict(reasons_count),
            "stale_dropped": stale,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "round_seconds": round_s,
            "train_seconds": train_s,
            "sim_seconds": sim_seconds,
            "overhead_seconds": None,
            "update_norm_median": norm_median,
            "epsilon": None, "epsilon_pld": None, "dp_sampling_rate": None, "dp_clip": None, "dp_unclipped": None,
            "state_ram_mb": state[0] / 2**20,
            "state_spills": state[1],
            "state_loads": state[2],
            "attackers_reported": None,
            "secagg_seconds": None, "secagg_bytes": 0, "secagg_dropped": None, "secagg_error": None,
            "width_mean": None,
            # the asynchronous modes: the staleness of the updates a server step applied
            "staleness_mean": None, "staleness_max": None, "staleness": None,
        }

    def choose_widths(self, r: int, selected: list[int]) -> dict[int, float]:
        """Each selected client's sub-model width this round: ``1 - fed_dropout.rate`` for
        random sub-models; with ``submodels.mode = "budget"`` the widest its profile, history
        and the deadline allow (:func:`~fedhpc.runtime.submodels.choose_width`), each choice
        logged with its reason like a selection decision. Empty without sub-models."""
        cfg = self.ctx.cfg
        if self.subs is None:
            return {}
        if cfg.submodel_mode == "random":
            return dict.fromkeys(selected, 1.0 - cfg.fed_dropout.rate)
        widths = {}
        n = self.ctx.layout.size
        for c in selected:
            samples = len(self.ctx.parts[c]) if c < len(self.ctx.parts) else self.remote_workers[c].num_samples
            compute = samples * cfg.local.epochs * cfg.profiles.cost_per_sample_s
            widths[c], why = choose_width(self.subs, cfg.submodels.widths, self.profiles[c], self.history[c], compute,
                                          self.codec_of(c).wire_size(n) / n, cfg.stragglers.deadline_s,
                                          cfg.submodels.margin, cfg.local.batch_size)
            log.debug("round %d width: client %d gets %g (%s)", r, c, widths[c], why)
        return widths

    def available(self) -> list[int]:
        """The clients a round may select: every one inside the job, and the connected remote ones."""
        return list(range(self.ctx.cfg.clients.total)) + sorted(self.remote_workers)

    def expected_clients(self) -> int:
        """How many clients a round selects (on average, with Poisson sampling): counted, not listed."""
        return min(self.ctx.cfg.clients.per_round, self.ctx.cfg.clients.total + len(self.remote_workers))

    def sampling_rate(self) -> float:
        """Each client's probability of being in a round (Poisson sampling, under DP)."""
        return self.expected_clients() / (self.ctx.cfg.clients.total + len(self.remote_workers))

    def privacy_exhausted(self) -> str:
        """Why the next round may not run ("" = it may): it would take epsilon past dp.target_epsilon."""
        target = self.ctx.cfg.dp.target_epsilon
        if self.accountant is None or not target:
            return ""
        after = self.accountant.epsilon([*self.accountant.rates, self.sampling_rate()])
        if after <= target:
            return ""
        return (f"the next round would take epsilon to {after:.3f} at delta {self.ctx.cfg.dp.delta:g}, past "
                f"dp.target_epsilon = {target:g}")

    def next_clip(self, clip: float, unclipped: float) -> float:
        """The clip of the round after one with ``clip`` and the released fraction ``unclipped``."""
        dp = self.ctx.cfg.dp
        return next_clip(clip, unclipped, dp.target_quantile, dp.clip_learning_rate)

    def fold_round(self, r: int, outcome: RoundOutcome, secure: SecureRound | None = None) -> np.ndarray:
        """The new weights of a sum-decomposable strategy: the ring sum of exactly the
        accepted clients, from this rank's folder or reduced over the hosting ranks (and
        unmasked here, with ``secure``: raises SecAggError when it cannot be)."""
        dp = self.ctx.cfg.dp
        accepted = [res.client_id for res in outcome.results]
        if dp.enabled:
            # DP-FedAvg: the sum over the expected number of clients, a fixed denominator, plus noise of
            # std noise_multiplier * clip on the sum, released every round, whoever reported
            expected = self.expected_clients()
            multiplier = dp.noise_multiplier
            if dp.adaptive_clip:  # the clipped count takes its share of the budget
                std = count_stddev(dp.clipped_count_stddev, expected)
                multiplier = vector_noise_multiplier(multiplier, std)
                self.unclipped = unclipped_fraction(sum(not res.clipped for res in outcome.results),
                                                    len(outcome.results), count_noise(self.noise_seed, r, std),
                                                    expected)
            total = float(expected)
            if dp.placement == "client":  # the clients' shares are the noise: release enough of them only
                assert secure is not None, "client-placed noise without secure aggregation"
                if len(accepted) < self.ctx.cfg.dp_min_clients:
                    raise SecAggError(f"{len(accepted)} clients survived, fewer than dp.min_clients = "
                                      f"{self.ctx.cfg.dp_min_clients}: their noise shares would not add up to the "
                                      f"guarantee")
                return self.strategy.step(self.weights, self._mean(r, accepted, total, secure))
            delta = (self._mean(r, accepted, total, secure) if accepted or secure is not None
                     else np.zeros(self.ctx.layout.size, np.float32))
            delta += gaussian_noise(self.noise_seed, r, delta.size, multiplier * self.clip / total)
            return self.strategy.step(self.weights, delta)
        total = round_total([coefficient(self.strategy, res.num_samples, res.loss, self.scale)
                             for res in outcome.results])
        if secure is not None and not (accepted and total):
            secure.server().check_survivors(accepted)  # says why nothing is left to unmask
        if not accepted or total == 0:
            return self.weights  # nothing counts: the model stays and server state does not advance
        return self.strategy.step(self.weights, self._mean(r, accepted, total, secure))

    def _mean(self, r: int, accepted: list[int], total: float, secure: SecureRound | None = None) -> np.ndarray:
        """The ring sum of exactly the ``accepted`` clients over ``total``, from this rank's
        folder or reduced over the hosting ranks (``secure``: unmasked here first)."""
        if secure is not None:
            return self._secure_mean(r, accepted, total, secure)
        if self.folder is not None:
            self.folder.settle(accepted)
            delta = self.folder.acc.mean(total)
        else:
            self.command(Reduce(r, tuple(accepted), total))
            try:
                delta = gather_mean(self.comm, self.ctx.layout.size, self.ctx.cfg.stragglers.timeout_s,
                                    f"every hosting rank's shard of round {r}'s mean")
            except TimeoutError as exc:
                self.abort(f"{exc}; aborting the job (a rank is stopped, hung or dead)")
        return delta

    def secagg_setup(self, secure: SecureRound, selected: list[int]) -> list[ClientFailure]:
        """Secure aggregation's first steps at rank 0: take the selected clients' keys, send
        each hosting rank its clients' neighbours, and route the shares they seal. Return the
        failures of the clients that did not share (they do not train). If the steps cannot
        go on (fewer than two clients advertised, a share that breaks the protocol), nobody
        shares, every rank is still answered, and the round has no result."""
        r, t0, cfg = secure.round, time.monotonic(), self.ctx.cfg
        chosen = frozenset(selected)
        msgs = self.reports(f"round {r + 1}'s secure aggregation keys", Tag.SECAGG)
        keys = [k for rank, m in zip(self.ctx.trainers, msgs) for k in m.keys
                if self._hosts(rank, k.client, chosen, "advertised keys")]
        secure.nbytes += sum(wire_size(m) for m in msgs)
        advertised = {k.client for k in keys}
        try:
            secure.session = SecAggServer(r, keys, cfg.secagg.neighbors, cfg.secagg.threshold,
                                          derive_seed(cfg.seed, r, SEED_SECAGG))
            secure.session.check_survivors(advertised, advertised)  # at least two, and the threshold
        except SecAggError as exc:
            secure.fail(f"{exc} at the key step")
        server = secure.session
        for rank in self.ctx.trainers:
            mine = ({c: server.neighbour_keys(c) for c in self.ctx.clients_of(rank) if c in advertised}
                    if server is not None else {})
            secure.nbytes += self._send_secagg(SecAggNeighbours(r, server.threshold if server else 0, mine), rank)
        msgs = self.reports(f"round {r + 1}'s secure aggregation shares", Tag.SECAGG)
        secure.nbytes += sum(wire_size(m) for m in msgs)
        inbox: dict[int, list[SealedShare]] = {}
        if server is not None:
            try:
                inbox = server.route(s for rank, m in zip(self.ctx.trainers, msgs) for s in m.shares
                                     if self._hosts(rank, s.sender, chosen, "sealed shares"))
                server.check_survivors(server.sharers)
            except SecAggError as exc:
                secure.fail(f"{exc} at the sharing step")
        sharers = secure.sharers()
        for rank in self.ctx.trainers:
            routed = SecAggRouted(r, sharers, {c: tuple(inbox.get(c, ())) for c in self.ctx.clients_of(rank)
                                               if c in sharers})
            secure.nbytes += self._send_secagg(routed, rank)
        secure.seconds += time.monotonic() - t0
        why = ({c: "did not advertise its keys" if c not in advertised else "did not share its secrets"
                for c in selected if c not in sharers} if secure.error is None
               else dict.fromkeys(selected, secure.error))
        return [ClientFailure(c, "secagg", why[c]) for c in sorted(why)]

    def _hosts(self, rank: int, client: int, chosen: frozenset[int], what: str) -> bool:
        """Whether ``rank`` may speak for ``client`` this round (it hosts it and it was selected)."""
        if client in chosen and self.ctx.host_of(client) == rank:
            return True
        log.warning("rank %d %s for client %d, which it does not host this round: ignored", rank, what, client)
        return False

    def _send_secagg(self, msg, rank: int) -> int:
        """Send one step of secure aggregation to ``rank``; return its size."""
        self.comm.send(msg, dest=rank, tag=Tag.SECAGG)
        return wire_size(msg)

    def _secure_mean(self, r: int, accepted: list[int], total: float, secure: SecureRound) -> np.ndarray:
        """Secure aggregation's last step: ask the survivors to reveal, reduce the masked sum
        here, remove its masks, check its range and take the mean."""
        t0 = time.monotonic()
        try:
            return self._unmasked_mean(r, accepted, total, secure)
        finally:
            secure.seconds += time.monotonic() - t0

    def _unmasked_mean(self, r: int, accepted: list[int], total: float, secure: SecureRound) -> np.ndarray:
        server = secure.server()
        server.check_survivors(accepted)
        secure.dropped = sorted(server.sharers - set(accepted))
        unmask = Unmask(r, tuple(accepted), tuple(secure.dropped))
        self.command(unmask)
        msgs: list[SecAggReveals] = self.reports(f"round {r + 1}'s secure aggregation reveals", Tag.SECAGG)
        secure.nbytes += wire_size(unmask) * len(self.ctx.trainers) + sum(wire_size(m) for m in msgs)
        refused = [e for m in msgs for e in m.errors]
        if refused:
            raise SecAggError(refused[0] + (f" (and {len(refused) - 1} more refusals)" if len(refused) > 1 else ""))
        reveals = [rv for rank, m in zip(self.ctx.trainers, msgs) for rv in m.reveals
                   if self._hosts(rank, rv.sender, frozenset(accepted), "revealed shares")]
        if self.folder is not None:
            self.folder.settle(accepted)
            acc = self.folder.acc.acc
        else:
            self.command(Reduce(r, tuple(accepted), total))
            try:
                acc = gather_mean(self.comm, self.ctx.layout.size, self.ctx.cfg.stragglers.timeout_s,
                                  f"every hosting rank's shard of round {r}'s masked sum", masked=True)
            except TimeoutError as exc:
                self.abort(f"{exc}; aborting the job (a rank is stopped, hung or dead)")
        server.unmask(acc, accepted, reveals)
        at = out_of_range(acc)
        if at >= 0:
            raise SecAggError(f"the unmasked sum is out of range at value {at} ({acc[at]}): a client's input was "
                              f"beyond the ring's bound, which only this check after unmasking can see")
        return ring_mean(acc, total, run_ring(self.ctx.cfg), np.empty(acc.size, dtype=np.float32))

    def _per_client(self, outcome: RoundOutcome, got: _Collected
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(status, bytes up, seconds, sub-model width) per client for the run record."""
        total = len(self.ctx.all_clients)
        status = np.zeros(total, np.int8)
        seconds = np.full(total, np.nan)
        for f in outcome.failures:
            status[f.client_id] = STATUS["late"] if f.reason == "late" else STATUS["failed"]
        for res in outcome.results:
            status[res.client_id], seconds[res.client_id] = STATUS["reported"], res.seconds
        nbytes = np.zeros(total, np.int64)
        for cid, b in got.collector.client_bytes.items():
            nbytes[cid] = b
        width = np.full(total, np.nan, np.float32)  # NaN: not selected; 1 without sub-models
        width[list(got.collector.expected)] = 1.0
        for cid, w in self.widths.items():
            width[cid] = w
        return status, nbytes, seconds, width

    # -- collecting updates ---------------------------------------------------
    def collect(self, r: int, selected: list[int], t0: float, failures: list[ClientFailure]) -> _Collected:
        """Feed the round's arrivals to its :class:`RoundCollector` until it says
        the round is over, close the round on every rank, and drain exactly
        what the ranks still had in flight; ``failures``: the selected clients
        already out (secure aggregation's first steps)."""
        timeout, grace = self.ctx.cfg.stragglers.timeout_s, self.ctx.cfg.stragglers.close_grace_s
        got = _Collected(RoundCollector(r, frozenset(selected), self.rules, self.clock))
        for f in failures:
            got.collector.add_failure(f)
        self.verdicts.clear()
        col, trainers = got.collector, self.ctx.trainers
        done: dict[int, Done] = {}
        received: Counter = Counter()
        next_signal_check, stop_signals = 0.0, 0
        status = MPI.Status()
        nap = IDLE_MIN_S
        while True:
            elapsed = time.monotonic() - t0
            if not col.closed:
                if elapsed >= next_signal_check:
                    next_signal_check = elapsed + SIGNAL_CHECK_S
                    stop_signals = self.stop_signals()
                reason = col.close_reason(elapsed, stop_signals)
                if reason:
                    col.close(reason)
                    log.debug("round %d closed after %.3fs: %s", r, elapsed, reason)
                    for rank in trainers:
                        self.comm.send(Close(r, self.verdicts[rank]), dest=rank, tag=Tag.CLOSE)
            elif len(done) == len(trainers) and all(received[k] >= done[k].sent for k in trainers):
                break
            elif elapsed > timeout + grace:
                silent = [k for k in trainers if k not in done or received[k] < done[k].sent]
                self.abort(f"round {r}: ranks {silent} did not account for the round within {timeout + grace:.0f}s "
                           f"(stragglers.timeout_s + close_grace_s); aborting the job (a rank is stopped, hung or "
                           f"dead)")
            if self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=Tag.UPDATE, status=status):
                src, nap = status.Get_source(), IDLE_MIN_S
                received[src] += 1
                try:
                    buf = recv_update(self.comm, status, self.max_update_bytes, timeout, self.updates)
                except (CorruptUpdateError, TimeoutError) as exc:
                    log.warning("round %d: update from rank %d rejected: %s", r, src, exc)
                    continue
                got.bytes_up += buf.nbytes
                # the arrival's clock time is the instant the collector last found the round open
                self.accept(src, buf, col, elapsed)
            elif self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=Tag.FOLDED, status=status):
                src, nap = status.Get_source(), IDLE_MIN_S
                received[src] += 1
                folded: Folded = self.comm.recv(source=src, tag=Tag.FOLDED)
                got.bytes_up += folded.nbytes
                self.file_folded(src, folded, col, elapsed)
            elif self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=Tag.DONE, status=status):
                d: Done = self.comm.recv(source=status.Get_source(), tag=Tag.DONE)
                done[status.Get_source()] = d
                got.train_s = max(got.train_s, d.train_s)
                got.relayed_down += d.relayed_bytes
                got.state_bytes += d.state_bytes
                got.state_spills += d.state_spills
                got.state_loads += d.state_loads
                if d.workers is not None:
                    self.update_remote(d.workers)
            else:
                time.sleep(nap)  # a deadline is seen at most IDLE_MAX_S late
                nap = min(2 * nap, IDLE_MAX_S)
        return got

    def claim_problem(self, src: int, head: UpdateHeader) -> str | None:
        """What is wrong with what an Update from rank ``src`` claims, as only rank 0 can tell:
        a client that rank does not host, or a sample count other than the client's."""
        cid = head.client
        if self.ctx.host_of(cid) != src:
            return f"claims client {cid}, which rank {src} does not host"
        if head.status != Status.OK:
            return None
        if cid < len(self.ctx.parts):
            if head.num_samples != len(self.ctx.parts[cid]):
                return f"claims {head.num_samples} samples, client {cid} has {len(self.ctx.parts[cid])}"
        else:
            worker = self.remote_workers.get(cid)
            if worker is None or head.num_samples != worker.num_samples:
                declared = "no worker registered" if worker is None else f"its worker declared {worker.num_samples}"
                return f"claims {head.num_samples} samples for remote client {cid}; {declared}"
        return None

    def accept(self, src: int, buf: np.ndarray, col: RoundCollector, elapsed: float) -> None:
        """Validate one Update and file it with the round's collector (folded first, when
        this rank folds)."""
        r = col.round
        try:
            if self.folder is not None:
                self.file_folded(src, self.folder.take(buf, functools.partial(self.updates.release, buf)), col,
                                 elapsed)
                return
            head, body = unpack_update(buf)
        except CorruptUpdateError as exc:
            log.warning("round %d: update from rank %d rejected: %s", r, src, exc)
            return
        if not self.admitted(src, head, buf.nbytes, bytes(body).decode("utf-8", "replace")
                             if head.status != Status.OK else "", col):
            return
        cid = head.client
        kept = None if self.subs is None else self.subs.kept(r, cid, self.widths.get(cid, FULL))
        codec = self.codec_of(cid)
        seconds = col.arrival_time(head.sim_s, elapsed)
        try:
            if kept is None:  # kept compressed (its buffer is the round's) and decoded block by block
                frame = codec.open(body, expected_n=self.ctx.layout.size)
                col.add_result(ClientResult(cid, head.num_samples, head.loss, None, seconds, buf.nbytes,
                                            norm=frame.norm, frame=frame, clipped=head.clipped))
                return
            sub = codec.decode(body, expected_n=kept.size)
        except CorruptUpdateError as exc:
            log.warning("round %d: client %d sent a corrupt update: %s", r, cid, exc)
            col.add_failure(ClientFailure(cid, "corrupt", str(exc)))
            return
        delta = np.zeros(self.ctx.layout.size, dtype=np.float32)  # a sub-model: where it trained
        delta[kept] = sub
        col.add_result(ClientResult(cid, head.num_samples, head.loss, delta, seconds, buf.nbytes, kept,
                                    K.l2_norm(delta), clipped=head.clipped))

    def file_folded(self, src: int, folded: Folded, col: RoundCollector, elapsed: float) -> None:
        """File a hosting rank's account of an Update it folded (or refused)."""
        head = folded.head
        if not self.admitted(src, head, folded.nbytes, folded.detail, col):
            return
        if folded.refused:
            log.warning("round %d: client %d's update refused: %s", col.round, head.client, folded.detail)
            col.add_failure(ClientFailure(head.client, folded.refused, folded.detail))
            return
        seconds = col.arrival_time(head.sim_s, elapsed)
        result = ClientResult(head.client, head.num_samples, head.loss, None, seconds, folded.nbytes, norm=folded.norm,
                              clipped=head.clipped)
        col.add_result(result)
        if self.folder is None and folded.nbytes < VERDICT_MIN_BYTES:
            return  # a small frame is cheaper to hold until the close than to message about
        keep = None
        if col.certain(result):  # with secure aggregation nobody's norm is known: the guard is off
            keep = True if self.ctx.cfg.secagg.enabled else self.guard.verdict(folded.norm, col.norms(),
                                                                               len(col.expected))
        if keep is None:
            return  # decided at the close: the folder keeps the frame until then
        if self.folder is not None:
            self.folder.verdict(col.round, head.client, keep)
        else:
            self.comm.send(Verdict(col.round, head.client, keep), dest=src, tag=Tag.VERDICT)
            self.verdicts[src] += 1

    def admitted(self, src: int, head: UpdateHeader, nbytes: int, detail: str, col: RoundCollector) -> bool:
        """Whether an Update with ``head`` from rank ``src`` is an OK result of this round to
        file; its failure (``detail``: the client's reason) is filed here, what is not for
        the round is counted or logged."""
        r, cid = col.round, head.client
        if head.job != self.job_id:
            col.stale += 1
            log.debug("round %d: dropped an update of another job (%d, client %d)", r, head.job, cid)
            return False
        verdict, why = col.admit(head.round, cid, nbytes, self.claim_problem(src, head))
        if verdict is Admission.STALE:
            log.debug("round %d: dropped stale update (round %d client %d)", r, head.round, cid)
        elif verdict is Admission.REJECTED:
            log.warning("round %d: update from rank %d rejected: it %s", r, src, why)
        if verdict is not Admission.OPEN:
            return False
        if head.status != Status.OK:
            reason = {Status.DROPOUT: "dropout", Status.ERROR: "error", Status.REJECTED: "rejected"}[head.status]
            if head.status == Status.REJECTED:
                log.warning("round %d: the gateway refused client %d's update: %s", r, cid, detail)
            col.add_failure(ClientFailure(cid, reason, detail))
            return False
        return True

    def update_remote(self, connected: dict[int, RemoteProfile]) -> None:
        """Take the gateway's report of connected workers: who can be selected, with what
        they declared. On the wall clock their measurements become their profiles; on the
        simulated clock the configured values rule, as for the clients inside the job."""
        fastest = float(self.profiles.columns["samples_per_s"].max(initial=0.0)) or 1.0
        for cid, prof in connected.items():
            p = self.profiles[cid]
            p.samples_per_s, p.memory_gb = prof.samples_per_s, prof.memory_gb
            if self.ctx.cfg.clock == "wall":
                p.bandwidth_mbps, p.latency_ms = max(prof.bandwidth_mbps, 1e-3), prof.latency_ms
                p.speed = max(prof.samples_per_s, 1e-9) / fastest
        joined = connected.keys() - self.remote_workers.keys()
        for cid in sorted(joined):
            log.info("remote client %d joined (worker %s, %d samples)", cid, connected[cid].worker,
                     connected[cid].num_samples)
        for cid in sorted(self.remote_workers.keys() - connected.keys()):
            log.info("remote client %d left", cid)
        self.remote_workers = dict(connected)

    @staticmethod
    def _progress_line(m: dict) -> str:
        acc = f"acc {m['accuracy']:.4f} loss {m['loss']:.4f}" if m["accuracy"] is not None else "acc -"
        if m["perplexity"] is not None:
            acc += f" ppl {m['perplexity']:.2f}"
        return (f"round {m['round']:>3}: {acc} | {m['clients_reported']}/{m['clients_selected']} reported, "
                f"{m['clients_late']} late, {m['clients_failed']} failed | up {m['bytes_up'] / 1e6:.2f} MB "
                f"down {m['bytes_down'] / 1e6:.2f} MB | {m['round_seconds']:.2f}s, training {m['train_seconds']:.2f}s"
                + (f" (simulated {m['sim_seconds']:.2f}s)" if m["sim_seconds"] is not None else "")
                + (f" | epsilon {m['epsilon']:.3f}" if m["epsilon"] is not None else "")
                + (f", clip {m['dp_clip']:.4g}" if m["dp_unclipped"] is not None else ""))
