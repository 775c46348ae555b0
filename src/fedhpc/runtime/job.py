"""``fedhpc run``: set up every rank from the config and give each its role."""

from __future__ import annotations

import gc
import logging
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

from mpi4py import MPI

from fedhpc import env
from fedhpc import kernels as K
from fedhpc.config import RunConfig, save_config
from fedhpc.errors import ConfigError, FedHPCError
from fedhpc.runtime import signals
from fedhpc.runtime.transport import (
    ABORT_GRACE_S, STARTUP_S, Tag, abort_job, allgather_object, barrier, gather_object, hosts_comm, recv_object,
)

log = logging.getLogger("fedhpc")

EXIT_GRACE_S = 2.0


def setup_logging(rank: int, out: Path | None, verbose: bool = False) -> None:
    """Rank 0 (and a ``verbose`` rank: the gateway) logs progress, rank 0 also to OUT/run.log;
    other ranks only warnings. Every line names its rank."""
    level = env.LOG_LEVEL or ("INFO" if rank == 0 or verbose else "WARNING")
    root = logging.getLogger("fedhpc")
    root.setLevel(level)
    root.handlers.clear()
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    root.addHandler(console)
    if out is not None:
        fh = logging.FileHandler(out / "run.log")
        fh.setFormatter(fmt)
        fh.setLevel(logging.DEBUG)
        root.addHandler(fh)
        root.setLevel(min(root.level, logging.DEBUG))
        console.setLevel(level)
    root.propagate = False


def job_id_of(cfg: RunConfig) -> int:
    """Tag of this run carried by every Update, so updates of another run are dropped."""
    return K.crc32c(repr(cfg.to_dict()).encode())


def prepare_run_directory(out: Path) -> None:
    """Create ``out`` and ``out/checkpoints`` and prove both writable now, before any round,
    rather than at the first checkpoint."""
    for d in (out, out / "checkpoints"):
        probe = d / ".fedhpc-write-test"
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"run directory {d} is not writable ({exc.strerror or exc}): choose another --out "
                              f"or fix its permissions") from None


def run_job(cfg: RunConfig, out: Path, resume: Path | None = None, comm: MPI.Comm = MPI.COMM_WORLD) -> int:
    """Run the federated job on ``comm``; return its status as rank 0 decided it
    (0, or 75 when stopped by a signal), on every rank. See :func:`finish` for
    how a process should exit with it.

    ``resume``: a checkpoint file, or a directory of checkpoints (the newest
    valid one is used, older ones are fallen back to with a warning).
    """
    from fedhpc.checkpoint import resume_from
    from fedhpc.data.partition import write_summary
    from fedhpc.runtime.context import build_context
    from fedhpc.runtime.async_orchestrator import AsyncOrchestrator
    from fedhpc.runtime.orchestrator import Orchestrator
    from fedhpc.runtime.registration import register
    from fedhpc.runtime.rank import HostRank
    from fedhpc.runtime.state import ClientStates, spill_warning
    from fedhpc.runtime.trainer import TrainerRank

    gateway = comm.size - 1 if cfg.gateway.enabled else None
    needed = 3 if gateway is not None else 2

    def check_size() -> None:
        if comm.size < needed:
            raise ConfigError(f"fedhpc run needs at least {needed} MPI ranks (rank 0 orchestrates, the others train"
                              + (", the last is the gateway" if gateway is not None else "")
                              + f"): launch it as `mpiexec -n {needed + 1} fedhpc run ...`")

    collective(comm, check_size)
    signals.install()
    rank = comm.rank
    if rank == 0:
        prepare_run_directory(out)
        save_config(cfg, out / "config.toml")
    barrier(comm, STARTUP_S, "rank 0 to prepare the run directory")
    setup_logging(rank, out if rank == 0 else None, verbose=rank == gateway)
    K.set_num_threads(cfg.local.threads)
    ctx = collective(comm, lambda: build_context(cfg, list(range(1, gateway or comm.size)), gateway))
    job = job_id_of(cfg)
    # each trainer's client-state store, its spill file on its node's disk (errors said once, by rank 0)
    states = collective(comm, lambda: ClientStates.for_run(cfg, ctx.layout.size, rank, job, out)
                        if rank in ctx.mpi_trainers else None)
    if rank == 0 and (warning := spill_warning(cfg, out)):
        log.warning(warning)
    hosts = register(comm, ctx)
    reducers = hosts_comm(comm, STARTUP_S)
    if hosts is None:  # not rank 0
        assert reducers is not None
        role: HostRank
        if rank == gateway:
            from fedhpc.gateway.rank import GatewayRank

            role = GatewayRank(comm, ctx, job, reducers)
        else:
            assert states is not None  # every MPI trainer built its store
            role = TrainerRank(comm, ctx, job, reducers, states)
        status = role.run()
        gather_object(comm, role.signals_sent, STARTUP_S, "rank 0 to end the job")
        return status
    log.info("fedhpc: %d trainer ranks, %d clients (%d per round), model %s with %d parameters, codec %s, "
             "strategy %s, selection %s, clock %s", comm.size - 1, cfg.clients.total, cfg.clients.per_round,
             cfg.model.name, ctx.layout.size, cfg.codec.name, cfg.strategy.name, cfg.selection.name, cfg.clock)
    write_summary(out / "partition.json", ctx.data, ctx.parts, cfg.data.partition)
    orchestrator = (AsyncOrchestrator if cfg.asynchronous.enabled else Orchestrator)(comm, ctx, job, out, hosts)
    if gateway is not None:
        g = cfg.gateway
        workers = recv_object(comm, gateway, Tag.WORKERS, g.wait_s + cfg.stragglers.timeout_s, "the gateway to start")
        orchestrator.update_remote(workers.connected)
    if resume is not None:
        resume_from(resume, cfg, ctx.layout, orchestrator.restore, log)
    t0 = time.monotonic()
    last, status = orchestrator.run()
    if last is not None and status == 0:
        log.info("done: %d rounds in %.1fs, final accuracy %.4f; results in %s", last["round"],
                 time.monotonic() - t0, last["accuracy"], out)
    # A trainer may have forwarded a stop signal after rank 0 last looked: an
    # unreceived message makes MPI_Finalize fail, so receive exactly what was sent.
    orchestrator.drain_signals(sum(gather_object(comm, 0, STARTUP_S, "every rank to end the job") or ()))
    return status


class JobError(FedHPCError):
    """An error found by :func:`collective` on some ranks, reported once for the job by rank 0."""

    def __init__(self, message: str, ranks: list[int], size: int):
        super().__init__(message)
        self.ranks, self.size = ranks, size

    def where(self) -> str:
        return "every rank" if len(self.ranks) == self.size else "rank " + ", ".join(map(str, self.ranks))


class ReportedElsewhere(FedHPCError):
    """This rank's share of a :class:`JobError` that rank 0 reports."""


T = TypeVar("T")


def collective(comm: MPI.Comm, fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank of ``comm``; if it raises fedhpc's own error on any,
    rank 0 raises it as a :class:`JobError` (the first failing rank's message) and the
    others :class:`ReportedElsewhere`, so that a bad config or a missing data file is
    printed once for the job, not once per rank."""
    try:
        value, problem = fn(), None
    except FedHPCError as exc:
        value, problem = None, str(exc)
    problems = allgather_object(comm, problem, STARTUP_S, "every rank to finish setting up")
    failed = [r for r, p in enumerate(problems) if p is not None]
    if not failed:
        return value  # type: ignore[return-value]
    if comm.rank == 0:
        raise JobError(str(problems[failed[0]]), failed, comm.size)
    raise ReportedElsewhere(str(problems[failed[0]]))


def main_guarded(fn, comm: MPI.Comm = MPI.COMM_WORLD) -> int:
    """Run ``fn`` and return its exit status; if it raises on any rank, report and
    abort the whole MPI job, so that no other rank is left waiting in a collective.
    fedhpc's own errors (bad config, refused checkpoint) print without a traceback."""
    rank, size = comm.rank, comm.size  # still known if the failure was in MPI_Finalize

    def fail(message: str, status: int) -> int:
        if message:
            print(message, file=sys.stderr, flush=True)
        if size > 1 and not MPI.Is_finalized():
            abort_job(comm, status)
        return status

    try:
        return fn()
    except ReportedElsewhere:
        # rank 0 prints the error and aborts the job meanwhile; if it cannot, leave without a word
        time.sleep(4 * ABORT_GRACE_S)
        return fail("", 2)
    except JobError as exc:
        return fail(f"fedhpc: error ({exc.where()}): {exc}", 2)
    except FedHPCError as exc:
        return fail(f"fedhpc: error (rank {rank}): {exc}", 2)
    except Exception:
        return fail(f"fedhpc: rank {rank} failed:\n{traceback.format_exc()}", 1)


def finish(status: int, rank: int) -> NoReturn:
    """End this process, an MPI rank of ``fedhpc run``, so that ``mpiexec`` and
    ``srun`` report the job's ``status``. Never call it from a library user's
    interpreter.

    Python's teardown collects every object torch created, about 0.7 s per
    rank, a sixth of a small job's wall time: they are frozen out of the
    collector first (leaving with ``os._exit`` instead would be faster still,
    but MPICH's ``mpiexec`` then sometimes kills the other ranks and reports
    9). A status other than 0 is carried by rank 0 alone: ``mpiexec`` kills
    the ranks still running when one exits non-zero and then reports the kill
    (9), so rank 0 exits last, after the others left with 0.
    """
    gc.disable()
    gc.freeze()
    if status and rank == 0 and not MPI.Is_finalized() and MPI.COMM_WORLD.size > 1:
        MPI.Finalize()
        time.sleep(EXIT_GRACE_S)
    sys.exit(status if rank == 0 else 0)
