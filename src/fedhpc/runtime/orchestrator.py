"""Rank 0: the round loop. Select, broadcast, collect until the deadline or the
fastest k, aggregate through the strategy, evaluate, record."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mpi4py import MPI

from fedhpc.checkpoint import Checkpoint, ServerState, write_checkpoint
from fedhpc.compress import get_codec
from fedhpc.errors import CorruptUpdateError
from fedhpc.runtime.client import SEED_EVAL, SEED_SELECT, derive_seed, evaluate
from fedhpc.runtime.context import Context, simulated_profiles
from fedhpc.record import STATUS, RunRecord
from fedhpc.runtime import signals
from fedhpc.runtime.protocol import (
    BufferPool, Status, Tag, bcast_array, recv_arrays, recv_object, recv_update, send_arrays, unpack_update,
)
from fedhpc.selection import get_selector
from fedhpc.strategy import get_strategy
from fedhpc.types import ClientFailure, ClientHistory, ClientProfile, ClientResult, RoundOutcome

log = logging.getLogger("fedhpc.orchestrator")

# After the round is closed, trainers need at most one batch to notice; this
# bounds how long rank 0 waits for their final accounting before it gives up.
CLOSE_GRACE_S = 60.0
SIGNAL_CHECK_S = 0.01  # how often the receive loop looks for a second stop signal


@dataclass
class _Arrival:
    result: ClientResult
    sim_s: float


@dataclass
class _Collected:
    arrivals: dict[int, _Arrival] = field(default_factory=dict)
    failures: dict[int, ClientFailure] = field(default_factory=dict)
    late: set[int] = field(default_factory=set)
    stale: int = 0
    bytes_up: int = 0
    client_bytes: dict[int, int] = field(default_factory=dict)
    train_s: float = 0.0  # the slowest trainer rank's seconds in local training
    relayed_down: int = 0  # model bytes the gateway streamed on to its workers

    def accounted(self) -> set[int]:
        return self.arrivals.keys() | self.failures.keys() | self.late

    def has(self, cid: int) -> bool:
        """Whether ``cid`` is accounted for (without building the set: this runs per Update)."""
        return cid in self.arrivals or cid in self.failures or cid in self.late


class Orchestrator:
    def __init__(self, comm: MPI.Comm, ctx: Context, job_id: int, out: Path, hosts: dict[int, dict]):
        self.comm, self.ctx, self.job_id, self.out = comm, ctx, job_id, out
        cfg = ctx.cfg
        self.codec = get_codec(cfg.codec.name, **cfg.codec.params)
        wan = cfg.gateway.codec
        self.remote_codec = get_codec(wan.name, **wan.params) if wan.name else self.codec
        self.remote_connected: set[int] = set()  # remote clients with a worker, as of the last round
        self.strategy = get_strategy(cfg.strategy.name, **cfg.strategy.params)
        self.selector = get_selector(cfg.selection.name, **cfg.selection.params)
        self.mu = cfg.strategy.mu if cfg.strategy.mu is not None else self.strategy.client_mu()
        self.weights = ctx.layout.flatten(ctx.model)
        self.model_bytes = self.weights.nbytes
        self.feddrop = ctx.fed_dropout()
        n_test, cap = len(ctx.data.y_test), cfg.eval.max_samples
        # a fixed subset, so every evaluation of the run is comparable (large test sets take minutes on CPU)
        self.eval_idx = (np.sort(np.random.default_rng(derive_seed(cfg.seed, SEED_EVAL)).choice(n_test, cap, replace=False))
                         if 0 < cap < n_test else slice(None))
        self.profiles = self._profiles(hosts)
        self.history = {c: ClientHistory() for c in ctx.all_clients}
        self.first_round = 0
        self.lines: list[str] = []  # metrics.jsonl so far
        self.forwarded_signals = 0  # the highest stop-signal count a trainer reported
        self.signal_messages = 0  # SIGNAL messages received
        mean_samples = float(np.mean([len(p) for p in ctx.parts]))
        self.selector.set_costs(down_bytes=self.model_bytes, up_bytes=self.codec.wire_size(ctx.layout.size),
                                reference_cost=mean_samples * cfg.local.epochs * cfg.profiles.cost_per_sample_s)
        self.max_update_bytes = 64 + 2 * self.model_bytes + (1 << 20)
        self.updates = BufferPool()  # the round's received Updates; 'none' deltas are views into them

    def _profiles(self, hosts: dict[int, dict]) -> dict:
        """Client profiles: the configured heterogeneity, plus what registration measured
        of each client's host. On the wall clock the measurements are what the
        selector should trust; on the simulated clock the configured values rule,
        so that runs stay deterministic."""
        fastest = max(h["samples_per_s"] for h in hosts.values())
        for rank, h in sorted(hosts.items()):
            log.info("rank %d on %s: %.0f samples/s, %.1f GiB, link %.3f ms / %.0f Mbit/s", rank, h["host"],
                     h["samples_per_s"], h["memory_gb"], h["latency_ms"], h["bandwidth_mbps"])
        profiles = simulated_profiles(self.ctx.cfg)
        profiles |= {c: ClientProfile(client_id=c, remote=True) for c in self.ctx.remote_clients}
        for c, p in profiles.items():
            h = hosts[self.ctx.host_of(c)]
            p.samples_per_s, p.memory_gb = h["samples_per_s"], h["memory_gb"]
            if self.ctx.cfg.clock == "wall":
                p.speed *= h["samples_per_s"] / fastest
                p.bandwidth_mbps, p.latency_ms = h["bandwidth_mbps"], h["latency_ms"]
        return profiles

    # -- the run ------------------------------------------------------------
    def restore(self, ckpt: Checkpoint) -> None:
        """Continue from a validated checkpoint: server state here, residuals to their trainers."""
        st = ckpt.server_state()
        self.weights, self.first_round, self.lines = st.weights, st.round, st.metrics
        self.strategy.load_state_dict(st.strategy)
        self.profiles, self.history = st.profiles, st.history
        self.comm.bcast({"type": "restore"}, root=0)
        for rank in self.ctx.trainers:
            send_arrays(self.comm, dict(ckpt.residuals(self.ctx.clients_of(rank))), rank,
                        self.ctx.cfg.stragglers.timeout_s)
        log.info("resumed from %s after round %d", ckpt.path, st.round)

    def checkpoint(self, rounds_done: int) -> Path:
        """Gather every client's residual from the trainers and write a checkpoint."""
        self.comm.bcast({"type": "checkpoint"}, root=0)
        timeout, n = self.ctx.cfg.stragglers.timeout_s, self.ctx.layout.size
        residuals = (item for rank in self.ctx.trainers for item in recv_arrays(self.comm, rank, n, timeout))
        state = ServerState(rounds_done, self.weights, self.strategy.state_dict(), self.profiles, self.history,
                            self.lines)
        path = write_checkpoint(self.out / "checkpoints", self.ctx.cfg, self.ctx.layout, state, residuals)
        log.info("checkpoint written: %s", path)
        return path

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
        with open(self.out / "metrics.jsonl", "w") as mfile:
            mfile.writelines(line + "\n" for line in self.lines)
            for r in range(self.first_round, cfg.rounds):
                metrics, per_client = self.round(r)
                self.lines.append(json.dumps(metrics))
                mfile.write(self.lines[-1] + "\n")
                mfile.flush()
                record.append(metrics, *per_client)
                log.info(self._progress_line(metrics))
                stop = self.stop_signals() > 0
                if stop or r + 1 == cfg.rounds or (every and (r + 1) % every == 0):
                    self.checkpoint(r + 1)
                if stop and r + 1 < cfg.rounds:
                    log.warning("stop signal received: checkpoint written after round %d of %d; the job exits "
                                "with status %d; continue with `fedhpc run --resume %s`", r + 1, cfg.rounds,
                                signals.EXIT_PREEMPTED, self.out)
                    status = signals.EXIT_PREEMPTED
                    break
        record.close()
        self.comm.bcast({"type": "stop", "exit": status}, root=0)
        if status == 0:
            np.save(self.out / "final_weights.npy", self.weights)
        return metrics, status

    def round(self, r: int) -> tuple[dict, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Run round ``r``; return its metrics line and the per-client arrays of the run record."""
        cfg, ctx = self.ctx.cfg, self.ctx
        t0 = time.monotonic()
        rng = np.random.default_rng(derive_seed(cfg.seed, r, SEED_SELECT))
        available = list(range(cfg.clients.total)) + sorted(self.remote_connected)
        selected, reasons = self.selector.select(r, available, cfg.clients.per_round, self.profiles, self.history, rng)
        for line in reasons:
            log.debug("round %d selection: %s", r, line)
        assign: dict[int, list[int]] = {}
        for c in selected:
            assign.setdefault(ctx.host_of(c), []).append(c)
        self.comm.bcast({"type": "round", "round": r, "assign": assign, "mu": self.mu}, root=0)
        bcast_array(self.comm, self.weights)
        got = self.collect(r, set(selected), t0)
        outcome, sim_seconds = self.close_round(r, selected, got)
        self.weights = self.strategy.aggregate(self.weights, outcome)
        self.selector.update(outcome, self.history, r)
        self.updates.reclaim()  # nothing refers to this round's deltas any more
        accuracy = loss = None
        if (r + 1) % cfg.eval.every == 0 or r + 1 == cfg.rounds:
            ctx.layout.load(ctx.model, self.weights)
            accuracy, loss = evaluate(ctx.model, ctx.data.x_test[self.eval_idx], ctx.data.y_test[self.eval_idx])
        reasons_count = Counter(f.reason for f in outcome.failures)
        metrics = {
            "round": r + 1,
            "accuracy": accuracy,
            "loss": loss,
            "clients_selected": len(selected),
            "clients_reported": len(outcome.results),
            "clients_late": reasons_count.pop("late", 0),
            "clients_failed": sum(reasons_count.values()),
            "failures": dict(reasons_count),
            "stale_dropped": got.stale,
            "bytes_up": got.bytes_up,
            "bytes_down": self.model_bytes * (self.comm.size - 1) + got.relayed_down,
            "round_seconds": time.monotonic() - t0,
            "train_seconds": got.train_s,
            "sim_seconds": sim_seconds,
        }
        metrics["overhead_seconds"] = metrics["round_seconds"] - got.train_s
        return metrics, self._per_client(outcome, got)

    def _per_client(self, outcome: RoundOutcome, got: _Collected) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(status, bytes up, seconds) per client for the run record."""
        total = len(self.ctx.all_clients)
        status = np.zeros(total, np.int8)
        seconds = np.full(total, np.nan)
        for f in outcome.failures:
            status[f.client_id] = STATUS["late"] if f.reason == "late" else STATUS["failed"]
        for res in outcome.results:
            status[res.client_id], seconds[res.client_id] = STATUS["reported"], res.seconds
        nbytes = np.zeros(total, np.int64)
        for cid, b in got.client_bytes.items():
            nbytes[cid] = b
        return status, nbytes, seconds

    # -- collecting updates ---------------------------------------------------
    def collect(self, r: int, expected: set[int], t0: float) -> _Collected:
        """Receive Updates until every selected client is accounted for, the
        deadline passes or the fastest k arrived (wall clock), then close the
        round and drain what the trainers still had in flight."""
        cfg = self.ctx.cfg
        st = cfg.stragglers
        wall = cfg.clock == "wall"
        got = _Collected()
        trainers = self.ctx.trainers
        done: dict[int, int] = {}
        received: Counter = Counter()
        closed, changed, next_signal_check = False, True, 0.0
        status = MPI.Status()
        while True:
            elapsed = time.monotonic() - t0
            if not closed:
                reason = None
                # both checks cost microseconds, and the loop spins every 0.2 ms: with
                # thousands of clients per round, doing them every turn starved the trainers
                if changed and expected <= got.accounted():
                    reason = "all accounted for"
                elif wall and st.deadline_s and elapsed >= st.deadline_s:
                    reason = f"deadline {st.deadline_s}s"
                elif wall and st.fastest_k and len(got.arrivals) >= st.fastest_k:
                    reason = f"fastest {st.fastest_k} arrived"
                elif elapsed >= st.timeout_s:
                    reason = f"timeout {st.timeout_s}s"
                elif elapsed >= next_signal_check:
                    next_signal_check = elapsed + SIGNAL_CHECK_S
                    if self.stop_signals() >= 2:
                        reason = "a second stop signal"
                changed = False
                if reason:
                    closed = True
                    log.debug("round %d closed after %.3fs: %s", r, elapsed, reason)
                    for rank in trainers:
                        self.comm.send(r, dest=rank, tag=Tag.CLOSE)
            elif len(done) == len(trainers) and all(received[k] >= done[k] for k in trainers):
                break
            elif elapsed > st.timeout_s + CLOSE_GRACE_S:
                silent = [k for k in trainers if k not in done or received[k] < done[k]]
                msg = (f"round {r}: trainer ranks {silent} did not finish the round within "
                       f"{st.timeout_s + CLOSE_GRACE_S:.0f}s; aborting the job (a rank is hung or dead)")
                log.critical(msg)
                self.comm.Abort(3)
            if self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=Tag.UPDATE, status=status):
                src = status.Get_source()
                received[src] += 1
                try:
                    buf = recv_update(self.comm, status, self.max_update_bytes, st.timeout_s, self.updates)
                except (CorruptUpdateError, TimeoutError) as exc:
                    log.warning("round %d: update from rank %d rejected: %s", r, src, exc)
                    continue
                got.bytes_up += buf.nbytes
                self.accept(r, src, buf, expected, got, closed, time.monotonic() - t0)
                changed = True
            elif self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=Tag.DONE, status=status):
                rr, count, connected, train_s, relayed = self.comm.recv(source=status.Get_source(), tag=Tag.DONE)
                done[status.Get_source()] = count
                got.train_s = max(got.train_s, train_s)
                got.relayed_down += relayed
                if connected is not None:
                    self.update_remote(connected)
            else:
                time.sleep(0.0002)
        return got

    def accept(self, r: int, src: int, buf: np.ndarray, expected: set[int], got: _Collected, closed: bool,
               arrival_s: float) -> None:
        """Validate one Update and file it as a result, a failure, late or stale."""
        try:
            head, body = unpack_update(buf)
        except CorruptUpdateError as exc:
            log.warning("round %d: update from rank %d rejected: %s", r, src, exc)
            return
        cid = head.client
        if head.job == self.job_id and head.round == r and cid in expected:
            got.client_bytes[cid] = got.client_bytes.get(cid, 0) + buf.nbytes
        if head.job != self.job_id or head.round < r:
            got.stale += 1
            log.debug("round %d: dropped stale update (job %d round %d client %d)", r, head.job, head.round, cid)
            return
        problem = None
        if head.round != r:
            problem = f"is for round {head.round}"
        elif cid not in expected:
            problem = f"is from client {cid}, which was not selected"
        elif got.has(cid):
            problem = f"is a duplicate for client {cid}"
        elif self.ctx.host_of(cid) != src:
            problem = f"claims client {cid}, which rank {src} does not host"
        elif cid < len(self.ctx.parts) and head.num_samples != len(self.ctx.parts[cid]):
            problem = f"claims {head.num_samples} samples, client {cid} has {len(self.ctx.parts[cid])}"
        if problem:
            log.warning("round %d: update from rank %d rejected: it %s", r, src, problem)
            return
        if closed:
            got.late.add(cid)
            return
        if head.status == Status.DROPOUT:
            got.failures[cid] = ClientFailure(cid, "dropout")
            return
        if head.status == Status.ERROR:
            got.failures[cid] = ClientFailure(cid, "error", bytes(body).decode("utf-8", "replace"))
            return
        kept = None if self.feddrop is None else self.feddrop.kept(r, cid)
        codec = self.remote_codec if cid >= self.ctx.cfg.clients.total else self.codec
        try:
            delta = codec.decode(body, expected_n=self.ctx.layout.size if kept is None else kept.size)
        except CorruptUpdateError as exc:
            log.warning("round %d: client %d sent a corrupt update: %s", r, cid, exc)
            got.failures[cid] = ClientFailure(cid, "corrupt", str(exc))
            return
        if kept is not None:
            full = np.zeros(self.ctx.layout.size, dtype=np.float32)
            full[kept] = delta
            delta = full
        seconds = head.sim_s if self.ctx.cfg.clock == "simulated" else arrival_s
        result = ClientResult(cid, head.num_samples, head.loss, delta, seconds, buf.nbytes, kept)
        got.arrivals[cid] = _Arrival(result, head.sim_s)

    def close_round(self, r: int, selected: list[int], got: _Collected) -> tuple[RoundOutcome, float | None]:
        """Apply the simulated clock's deadline / fastest-k, and count the missing."""
        st = self.ctx.cfg.stragglers
        arrivals = sorted(got.arrivals.values(), key=lambda a: (a.sim_s, a.result.client_id))
        sim_seconds = None  # the simulated clock's round time; None on the wall clock
        if self.ctx.cfg.clock == "simulated":
            sim_seconds = max((a.sim_s for a in arrivals), default=0.0)
            keep = [a for a in arrivals if not st.deadline_s or a.sim_s <= st.deadline_s]
            if st.fastest_k and len(keep) >= st.fastest_k:
                keep = keep[: st.fastest_k]
                sim_seconds = keep[-1].sim_s  # closed when the k-th update arrived
            elif st.deadline_s and (len(keep) < len(arrivals) or got.failures):
                sim_seconds = st.deadline_s  # someone never made it: the round waited until the deadline
            got.late |= {a.result.client_id for a in arrivals} - {a.result.client_id for a in keep}
            arrivals = keep
        # clients the trainers had not finished when the round closed are late too
        got.late |= set(selected) - got.accounted()
        failures = list(got.failures.values()) + [ClientFailure(c, "late") for c in got.late]
        results = sorted((a.result for a in arrivals), key=lambda res: res.client_id)
        return RoundOutcome(r, results, sorted(failures, key=lambda f: f.client_id)), sim_seconds

    def update_remote(self, connected: dict[int, dict]) -> None:
        """Take the gateway's report of connected workers: who can be selected, and their profiles."""
        fastest = max((p.samples_per_s for p in self.profiles.values()), default=0.0) or 1.0
        for cid, prof in connected.items():
            p = self.profiles[cid]
            p.samples_per_s, p.memory_gb = prof["samples_per_s"], prof["memory_gb"]
            p.bandwidth_mbps, p.latency_ms = max(prof["bandwidth_mbps"], 1e-3), prof["latency_ms"]
            p.speed = max(prof["samples_per_s"], 1e-9) / fastest
        joined, left = connected.keys() - self.remote_connected, self.remote_connected - connected.keys()
        for cid in sorted(joined):
            log.info("remote client %d joined (worker %s)", cid, connected[cid].get("worker"))
        for cid in sorted(left):
            log.info("remote client %d left", cid)
        self.remote_connected = set(connected)

    @staticmethod
    def _progress_line(m: dict) -> str:
        acc = f"acc {m['accuracy']:.4f} loss {m['loss']:.4f}" if m["accuracy"] is not None else "acc -"
        return (f"round {m['round']:>3}: {acc} | {m['clients_reported']}/{m['clients_selected']} reported, "
                f"{m['clients_late']} late, {m['clients_failed']} failed | up {m['bytes_up'] / 1e6:.2f} MB "
                f"down {m['bytes_down'] / 1e6:.2f} MB | {m['round_seconds']:.2f}s, training {m['train_seconds']:.2f}s"
                + (f" (simulated {m['sim_seconds']:.2f}s)" if m["sim_seconds"] is not None else ""))
