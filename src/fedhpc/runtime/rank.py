"""What every rank that hosts clients for rank 0 does: serve its commands.

A :class:`HostRank` receives rank 0's broadcast commands
(:mod:`fedhpc.runtime.messages`), the round's model with each
:class:`~fedhpc.runtime.messages.RoundTask`, hands its clients' state over for
checkpoints (each rank writes its own shard) and takes them back on resume,
tells rank 0 once about a stop signal, and accounts for every
round when rank 0 closes it. What it does with a round's clients is its
subclass's: :class:`~fedhpc.runtime.trainer.TrainerRank` trains them,
:class:`~fedhpc.gateway.rank.GatewayRank` relays them to remote workers.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
from mpi4py import MPI

from fedhpc.checkpoint import CheckpointError, Shard, read_shard, shard_name, write_shard
from fedhpc.compress import Codec, get_codec
from fedhpc.errors import CorruptUpdateError
from fedhpc.runtime import signals
from fedhpc.runtime.context import Context
from fedhpc.runtime.fold import Folder, coefficient_scale
from fedhpc.runtime.messages import (
    Close, Done, Pause, Reduce, RestoreState, Restored, RoundTask, SaveState, SecAggKeys, SecAggNeighbours,
    SecAggReveals, SecAggRouted, SecAggShares, Serve, Stop, Train, Unmask, Verdict,
)
from fedhpc.runtime.state import ClientStates, StateError
from fedhpc.runtime.submodels import Submodels
from fedhpc.runtime.training import host_memory_gb
from fedhpc.runtime.transport import (
    Tag, bcast_array, bcast_object, isend_chunked, poll, recv_array, recv_object, reduce_mean, wait_with_deadline,
)
from fedhpc.config import RunConfig
from fedhpc.secagg import PublicKeys, Reveal, SealedShare
from fedhpc.strategy import Strategy, get_strategy
from fedhpc.update import Status, failure_update

log = logging.getLogger("fedhpc.rank")

HELD_WARN_FRACTION = 0.25  # of the host's memory held in frames awaiting rank 0's verdict: say so


def folds(cfg: RunConfig, strategy: Strategy) -> bool:
    """Whether the round's updates are folded into a sum as they arrive (a sum-decomposable
    strategy), rather than all handed to the strategy at the close (the others, and every
    strategy under an omniscient attack, which forges from the whole honest updates)."""
    return strategy.decomposable and not cfg.attack.omniscient


def codec_of_client(ctx: Context) -> Callable[[int], Codec]:
    """The codec each client's frames are in: ``[codec]`` inside the job, the gateway's
    WAN codec (when set) for remote clients."""
    cfg = ctx.cfg
    local = get_codec(cfg.codec.name, **cfg.codec.params)
    wan = cfg.gateway.codec
    remote = get_codec(wan.name, **wan.params) if wan.name else local
    return lambda cid: remote if cid >= cfg.clients.total else local


class HostRank(ABC):
    """``hosts``: the communicator of the ranks that host clients, on which their sums
    are reduced (see :func:`fedhpc.runtime.transport.hosts_comm`); ``states``: the hosted
    clients' state (none kept by default: the gateway's clients keep theirs in their workers)."""

    def __init__(self, comm: MPI.Comm, ctx: Context, job_id: int, hosts: MPI.Comm,
                 states: ClientStates | None = None):
        self.comm, self.ctx, self.job_id, self.hosts = comm, ctx, job_id, hosts
        self.states = states if states is not None else ClientStates(ctx.layout.size, ctx.cfg.codec.residual_dtype)
        self.weights = np.empty(ctx.layout.size, dtype=np.float32)  # the round's global model
        self.signals_sent = 0  # SIGNAL messages sent to rank 0 (at most one)
        self.verdicts = 0  # Verdict messages received this round
        self.memory_bytes = host_memory_gb() * 2**30
        self.warned_round = -1  # the round it last warned of the frames it holds
        self.sharers: frozenset[int] = frozenset()  # secure aggregation: this rank's clients that shared
        cfg = ctx.cfg
        strategy = get_strategy(cfg.strategy.name, **cfg.strategy.params)
        # a sum-decomposable strategy is folded here, unless rank 0 is asked to fold
        self.folder = (Folder(cfg, strategy, ctx.layout.size, job_id, codec_of_client(ctx),
                              Submodels.for_run(cfg, ctx.model, ctx.layout), coefficient_scale(ctx.parts))
                       if folds(cfg, strategy) and cfg.aggregation.fold == "ranks" else None)

    @abstractmethod
    def train_round(self, task: RoundTask) -> None:
        """Work on the clients ``task`` assigns to this rank; end with :meth:`finish_round`."""

    def save_states(self, cmd: SaveState) -> Shard:
        """Write this rank's shard of a checkpoint; a failure is reported, not raised, so
        that rank 0 says it once and keeps the checkpoints already written."""
        st, rank = self.states, self.comm.rank
        try:
            return write_shard(Path(cmd.directory), rank, st.n, st.dtype, st.items())
        except (OSError, StateError) as exc:
            why = exc.strerror or exc if isinstance(exc, OSError) else exc
            return Shard(shard_name(rank), 0, "", error=f"rank {rank} writing {cmd.directory}: {why}")

    def restore_states(self, cmd: RestoreState) -> Restored:
        """Take back the state of every client this rank hosts now, from whichever shards hold them
        (what it held is dropped first: a refused checkpoint may have been tried before)."""
        me, taken = self.comm.rank, 0
        self.states.clear()
        try:
            for shard in cmd.shards:
                for cid, stored in read_shard(Path(cmd.directory) / shard.name, shard, self.states.n,
                                              self.states.dtype, lambda c: self.ctx.host_of(c) == me):
                    self.states.put(cid, stored)
                    taken += 1
        except (CheckpointError, StateError) as exc:
            return Restored(taken, f"rank {me}: {exc}")
        return Restored(taken)

    def run(self) -> int:
        """Serve rank 0's commands until it says stop; return the exit status it asks for."""
        try:
            return self._serve()
        finally:
            self.states.close()

    def _serve(self) -> int:
        timeout = self.ctx.cfg.stragglers.timeout_s
        while True:
            self.forward_signal()
            cmd = bcast_object(self.comm, None, self.command_wait_s(), "rank 0's next command (rank 0 is stopped "
                               "or hung)", while_waiting=self.forward_signal)
            if isinstance(cmd, Stop):
                return cmd.exit
            if isinstance(cmd, SaveState):
                self.comm.send(self.save_states(cmd), dest=0, tag=Tag.STATE)
            elif isinstance(cmd, RestoreState):
                self.comm.send(self.restore_states(cmd), dest=0, tag=Tag.STATE)
            elif isinstance(cmd, RoundTask):
                bcast_array(self.comm, self.weights, timeout, f"round {cmd.round}'s model")
                if self.folder is not None:
                    self.folder.begin(cmd.round, cmd.clients_of(self.comm.rank), cmd.widths)
                    self.verdicts = 0
                if self.ctx.cfg.secagg.enabled:
                    self.secagg_setup(cmd)
                self.train_round(cmd)
            elif isinstance(cmd, Unmask):
                self.comm.send(self.reveal(cmd), dest=0, tag=Tag.SECAGG)
            elif isinstance(cmd, Reduce):
                self.reduce(cmd)
            elif isinstance(cmd, Serve):
                self.serve(cmd)
            else:
                raise RuntimeError(f"rank {self.comm.rank}: unknown command from rank 0: {cmd!r}")

    @abstractmethod
    def serve(self, cmd: Serve) -> None:
        """The asynchronous modes: work on rank 0's :class:`~fedhpc.runtime.messages.Train`
        tasks as they come (:meth:`take_tasks`), send each one's Update, and at
        :class:`~fedhpc.runtime.messages.Pause` finish them all (or fail those not started, if
        it says ``abandon``) and end with :meth:`paused`."""

    def take_tasks(self, tasks: deque[Train], models: dict[int, np.ndarray]) -> Pause | None:
        """Queue rank 0's tasks that have come, and keep the model versions that came with
        them in ``models``; return the Pause, if it came."""
        paused = None
        while self.comm.Iprobe(source=0, tag=Tag.TASK):
            msg: Train | Pause = self.comm.recv(source=0, tag=Tag.TASK)
            if isinstance(msg, Pause):
                paused = msg
                continue
            if msg.model:
                models[msg.version] = np.empty(self.ctx.layout.size, dtype=np.float32)
                recv_array(self.comm, models[msg.version], 0, Tag.MODEL, self.ctx.cfg.stragglers.timeout_s,
                           f"model version {msg.version} from rank 0")
            tasks.append(msg)
        return paused

    def wait_task(self) -> None:
        """Wait for rank 0's next task or Pause: as long as for a command (it may be evaluating)."""
        poll(lambda: self.comm.Iprobe(source=0, tag=Tag.TASK), self.command_wait_s(), "rank 0's next task")

    def abandoned(self, t: Train) -> np.ndarray:
        """The Update that fails task ``t`` at a second stop signal."""
        return failure_update(Status.ERROR, self.job_id, t.ticket, t.client,
                              "abandoned: a second stop signal ended the run before it trained")

    def paused(self, done: Done, pending: list[MPI.Request]) -> None:
        """Complete the ``pending`` sends and account for the tasks served with ``done``."""
        wait_with_deadline(pending, self.ctx.cfg.stragglers.timeout_s, "rank 0 to receive the tasks' updates")
        self.comm.send(done, dest=0, tag=Tag.DONE)

    def secagg_setup(self, task: RoundTask) -> None:
        """Secure aggregation's first two steps for this rank's clients of the round: their keys
        to rank 0, their neighbours' keys back, their sealed shares to rank 0, the shares sealed
        for them back. Afterwards :attr:`sharers` holds those of its clients that shared: only
        they train. How the clients answer is the subclass's (:meth:`secagg_keys` and friends)."""
        r, st = task.round, self.ctx.cfg.stragglers
        self.comm.send(SecAggKeys(r, self.secagg_keys(task)), dest=0, tag=Tag.SECAGG)
        nb: SecAggNeighbours = recv_object(self.comm, 0, Tag.SECAGG, st.timeout_s,
                                           f"rank 0's secure aggregation neighbours for round {r}")
        self.comm.send(SecAggShares(r, self.secagg_shares(nb)), dest=0, tag=Tag.SECAGG)
        routed: SecAggRouted = recv_object(self.comm, 0, Tag.SECAGG, st.timeout_s,
                                           f"rank 0's routed secure aggregation shares for round {r}")
        self.sharers = routed.sharers & frozenset(task.clients_of(self.comm.rank))
        self.secagg_routed(routed)

    def reveal(self, cmd: Unmask) -> SecAggReveals:
        """What this rank's surviving clients reveal to unmask round ``cmd.round``'s sum, and
        why any of them refused."""
        reveals, errors = self.secagg_reveals(cmd, frozenset(cmd.survivors) & self.sharers)
        self.sharers = frozenset()
        return SecAggReveals(cmd.round, tuple(reveals), tuple(errors))

    @abstractmethod
    def secagg_keys(self, task: RoundTask) -> tuple[PublicKeys, ...]:
        """Fresh public keys of this rank's clients of ``task`` (those that answer)."""

    @abstractmethod
    def secagg_shares(self, nb: SecAggNeighbours) -> tuple[SealedShare, ...]:
        """Their shares, sealed for the neighbours rank 0 gave each (of those that answer)."""

    @abstractmethod
    def secagg_routed(self, routed: SecAggRouted) -> None:
        """Hand each of its clients that shared the shares sealed for it."""

    @abstractmethod
    def secagg_reveals(self, cmd: Unmask, survivors: frozenset[int]) -> tuple[list[Reveal], list[str]]:
        """What its ``survivors`` reveal for ``cmd``, and why any of them refused."""

    def command_wait_s(self) -> float:
        """How long this rank waits for rank 0's next command: a whole round with its grace,
        plus as long again for rank 0's evaluation and checkpoint (and, before the first
        round, for the gateway's workers to register)."""
        cfg = self.ctx.cfg
        st, g = cfg.stragglers, cfg.gateway
        return 2 * (st.timeout_s + st.close_grace_s) + (g.wait_s if g.enabled else 0.0)

    def deliver(self, buf: np.ndarray, release: Callable[[], None] | None = None) -> list[MPI.Request]:
        """Start handing one client's sealed Update to rank 0: folded here and accounted
        for with a :class:`~fedhpc.runtime.messages.Folded` (``release()`` when its frame
        is no longer needed), or sent whole. No request means nothing was sent: an Update
        whose header cannot be read names no client to account for."""
        if self.folder is None:
            return isend_chunked(self.comm, buf, 0, Tag.UPDATE)
        try:
            account = self.folder.take(buf, release)
        except CorruptUpdateError as exc:
            log.warning("rank %d: an Update whose header cannot be read was dropped: %s", self.comm.rank, exc)
            return []
        held = self.folder.held_bytes
        if held > HELD_WARN_FRACTION * self.memory_bytes and self.warned_round != account.head.round:
            self.warned_round = account.head.round
            log.warning("rank %d holds %.1f GB of frames until rank 0 decides round %d: with the default guard the "
                        "first round's bound is its own median, and fastest-k on the simulated clock decides at the "
                        "close; a compressing codec, fewer clients per rank or guard.norm_multiple = 0 hold less",
                        self.comm.rank, held / 1e9, account.head.round)
        return [self.comm.isend(account, dest=0, tag=Tag.FOLDED)]

    def take_verdicts(self, until: int | None = None, timeout_s: float = 0.0) -> None:
        """Apply rank 0's verdicts that have come (none come without a folder); with ``until``,
        wait (at most ``timeout_s``) until this round's count reaches it."""
        while self.folder is not None:
            if self.comm.Iprobe(source=0, tag=Tag.VERDICT):
                v: Verdict = self.comm.recv(source=0, tag=Tag.VERDICT)
                self.verdicts += 1
                self.folder.verdict(v.round, v.client, v.keep)
            elif until is None or self.verdicts >= until:
                return
            else:
                poll(lambda: self.comm.Iprobe(source=0, tag=Tag.VERDICT), timeout_s, "rank 0's verdicts")

    def reduce(self, cmd: Reduce) -> None:
        """Keep only rank 0's accepted clients in this rank's sum, and take part in the
        reduction of the round's mean (:func:`~fedhpc.runtime.transport.reduce_mean`)."""
        assert self.folder is not None, "rank 0 asked a rank without a folder to reduce"
        self.folder.settle(cmd.accepted)
        total = None if self.ctx.cfg.secagg.enabled else cmd.total  # a masked sum goes to rank 0 as it is
        reduce_mean(self.comm, self.hosts, self.folder.acc, total, self.ctx.cfg.stragglers.timeout_s,
                    f"the hosting ranks to reduce round {cmd.round} and rank 0 to take its mean")

    def round_closed(self) -> bool:
        """Whether rank 0 has closed the round (its Close is waiting)."""
        return self.comm.Iprobe(source=0, tag=Tag.CLOSE)

    def forward_signal(self) -> None:
        """Tell rank 0 once that this rank got SIGTERM/SIGUSR1: rank 0 decides when to stop."""
        if signals.received() and not self.signals_sent:
            self.comm.send(signals.received(), dest=0, tag=Tag.SIGNAL)
            self.signals_sent = 1

    def finish_round(self, done: Done, pending: list[MPI.Request]) -> None:
        """Wait for rank 0 to close ``done.round``, account for it, and complete the ``pending`` sends."""
        st = self.ctx.cfg.stragglers
        self.forward_signal()
        # rank 0 closes every round within timeout_s of its start, so no longer than that and the grace
        close: Close = recv_object(self.comm, 0, Tag.CLOSE, st.timeout_s + st.close_grace_s,
                                   f"rank 0 to close round {done.round}")
        if close.round != done.round:
            raise RuntimeError(f"rank {self.comm.rank}: rank 0 closed round {close.round} while in round {done.round}")
        if close.verdicts:
            self.take_verdicts(close.verdicts, st.timeout_s)
        self.comm.send(done, dest=0, tag=Tag.DONE)
        wait_with_deadline(pending, st.timeout_s, f"rank 0 to receive round {done.round}'s updates")
