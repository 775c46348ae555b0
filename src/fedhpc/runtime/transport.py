"""The MPI transport: tags, chunked buffer transfer, and waits that always have a deadline.

Models and Updates (:mod:`fedhpc.update`) move as raw buffers; only the small
typed control messages of :mod:`fedhpc.runtime.messages` are pickled. Even
the broadcasts are non-blocking with a deadline: a rank that is stopped
(SIGSTOP, a hung node) makes the others fail with a message naming what they
waited for, never hang.
"""

from __future__ import annotations

import pickle
import sys
import time
from enum import IntEnum

import numpy as np
from mpi4py import MPI

from fedhpc import env
from fedhpc.errors import CorruptUpdateError
from fedhpc.ring import Accumulator, ring_mean
from fedhpc.update import BufferPool, total_length


class Tag(IntEnum):
    UPDATE = 11  # trainer -> 0: an Update (possibly in several chunks)
    CLOSE = 12  # 0 -> trainer: messages.Close, stop working on that round
    DONE = 13  # trainer -> 0: messages.Done, its accounting of the round
    SIGNAL = 14  # trainer -> 0: this rank received a stop signal (the count)
    STATE = 15  # hosting rank -> 0: its checkpoint shard written (checkpoint.Shard) or states restored (Restored)
    WORKERS = 16  # gateway -> 0 before the first round: messages.Workers, the connected workers
    GATHER = 17  # any -> root: one rank's share of gather_object
    PROBE = 18  # 0 <-> each rank at registration: the link probe
    FOLDED = 19  # hosting rank -> 0: messages.Folded, its account of an Update it folded
    VERDICT = 20  # 0 -> hosting rank: messages.Verdict, keep or take out a client it folded
    SECAGG = 21  # 0 <-> hosting rank: secure aggregation's steps (messages.SecAgg*)
    TASK = 22  # 0 -> hosting rank, asynchronous modes: messages.Train or messages.Pause
    MODEL = 23  # 0 -> hosting rank, asynchronous modes: the weights of a Train's model version


def isend_chunked(comm: MPI.Comm, buf: np.ndarray, dest: int, tag: int) -> list[MPI.Request]:
    """Start sending ``buf`` in messages of at most FEDHPC_MPI_CHUNK_BYTES (MPI keeps their order)."""
    step = env.MPI_CHUNK_BYTES
    return [comm.Isend(buf[a : a + step], dest=dest, tag=tag) for a in range(0, max(buf.nbytes, 1), step)]


def recv_update(comm: MPI.Comm, status: MPI.Status, max_bytes: int, timeout_s: float,
                pool: BufferPool | None = None) -> np.ndarray:
    """Receive the Update whose first chunk ``status`` (from Iprobe) describes,
    into a buffer from ``pool`` when given.

    Chunks beyond the first are awaited with a deadline; a sender that stops
    midway raises TimeoutError rather than hanging the orchestrator.
    """
    src, tag = status.Get_source(), status.Get_tag()
    alloc = (lambda n: np.empty(n, dtype=np.uint8)) if pool is None else pool.take
    first = alloc(status.Get_count(MPI.BYTE))
    comm.Recv(first, source=src, tag=tag)
    total = total_length(first)
    if total <= first.nbytes:
        return first
    if total > max_bytes:
        # still drain the chunks so the sender's requests complete, but keep nothing
        out = None
    else:
        out = alloc(total)
        out[: first.nbytes] = first
    got = first.nbytes
    deadline = time.monotonic() + timeout_s
    st = MPI.Status()
    while got < total:
        poll(lambda: comm.Iprobe(source=src, tag=tag, status=st), deadline - time.monotonic(),
             f"the rest of an Update from rank {src} ({got} of {total} bytes came)")
        n = st.Get_count(MPI.BYTE)
        chunk = np.empty(n, dtype=np.uint8) if out is None or got + n > total else out[got : got + n]
        comm.Recv(chunk, source=src, tag=tag)
        got += n
    if out is None:
        raise CorruptUpdateError(f"Update from rank {src} is {total} bytes, more than the allowed {max_bytes}")
    return out


def recv_array(comm: MPI.Comm, arr: np.ndarray, source: int, tag: int, timeout_s: float, what: str) -> None:
    """Receive into the contiguous ``arr`` what :func:`isend_chunked` sent of one as large,
    or raise TimeoutError naming ``what``."""
    flat = arr.reshape(-1).view(np.uint8)
    step = env.MPI_CHUNK_BYTES
    wait_with_deadline([comm.Irecv(flat[a : a + step], source=source, tag=tag)
                        for a in range(0, max(flat.nbytes, 1), step)], timeout_s, what)


def bcast_array(comm: MPI.Comm, arr: np.ndarray, timeout_s: float, what: str, root: int = 0) -> None:
    """Broadcast a contiguous array in place, in chunks of at most FEDHPC_MPI_CHUNK_BYTES,
    or raise TimeoutError naming ``what``: a stopped rank cannot hold the others forever."""
    flat = arr.reshape(-1).view(np.uint8)
    step = env.MPI_CHUNK_BYTES
    wait_with_deadline([comm.Ibcast(flat[a : a + step], root=root) for a in range(0, flat.nbytes, step)],
                       timeout_s, what)


def bcast_object(comm: MPI.Comm, obj, timeout_s: float, what: str, root: int = 0, while_waiting=None):
    """Broadcast a small control message (pickled) from ``root`` with a deadline; return it.

    ``while_waiting()`` is called as the wait polls (a rank forwards stop signals meanwhile).
    """
    data = pickle.dumps(obj) if comm.rank == root else b""
    size = np.array([len(data)], dtype=np.int64)
    deadline = time.monotonic() + timeout_s  # one deadline for both steps
    wait_with_deadline([comm.Ibcast(size, root=root)], timeout_s, what, while_waiting)
    buf = np.frombuffer(data, dtype=np.uint8).copy() if comm.rank == root else np.empty(int(size[0]), np.uint8)
    wait_with_deadline([comm.Ibcast(buf, root=root)], deadline - time.monotonic(), what, while_waiting)
    return obj if comm.rank == root else pickle.loads(buf.tobytes())


#: How long a rank waits for the others while the job starts and ends (config, data, registration),
#: where no config says how long: loading a data set may take minutes on a busy file system.
STARTUP_S = 600.0
ABORT_GRACE_S = 0.5


def shard_bounds(n: int, parts: int) -> list[int]:
    """Where each of ``parts`` near-equal contiguous shards of ``n`` values starts (and, last, n)."""
    return [n * i // parts for i in range(parts + 1)]


def hosts_comm(comm: MPI.Comm, timeout_s: float) -> MPI.Comm | None:
    """The communicator of the ranks that host clients (1 .. size-1), in rank order, on
    which their partial sums are reduced; None on rank 0.

    MPI has no non-blocking split: a barrier with a deadline first proves that
    every rank has come this far, so the split that follows cannot wait on a
    rank that is not there.
    """
    barrier(comm, timeout_s, "every rank to set up the aggregation")
    sub = comm.Split(MPI.UNDEFINED if comm.rank == 0 else 0, comm.rank)
    return None if sub == MPI.COMM_NULL else sub


def reduce_scatter_sum(comm: MPI.Comm, send: np.ndarray, recv: np.ndarray, bounds: list[int], timeout_s: float,
                       what: str) -> None:
    """Sum ``send`` (int64, the same length on every rank of ``comm``) over the ranks,
    modulo 2**64, leaving rank i the shard ``[bounds[i], bounds[i + 1])`` in ``recv``; with
    a deadline. Integer sums do not depend on the order MPI combines them in."""
    counts = [b - a for a, b in zip(bounds, bounds[1:])]
    wait_with_deadline([comm.Ireduce_scatter([send.view(np.uint64), MPI.UINT64_T],
                                             [recv.view(np.uint64), MPI.UINT64_T], counts, MPI.SUM)],
                       timeout_s, what)


def gather_shards(comm: MPI.Comm, shard: np.ndarray, out: np.ndarray | None, bounds: list[int], timeout_s: float,
                  what: str, root: int = 0) -> None:
    """Gather float32 (or int64) shards into ``out`` on ``root``: rank r's shard lands at
    ``[bounds[r], bounds[r + 1])`` (``root`` itself sends none); with a deadline."""
    counts = [b - a for a, b in zip(bounds, bounds[1:])]
    kind = MPI.INT64_T if shard.dtype == np.int64 else MPI.FLOAT
    recv = [out, counts, bounds[:-1], kind] if comm.rank == root else None
    wait_with_deadline([comm.Igatherv([shard, kind], recv, root=root)], timeout_s, what)


def reduce_mean(comm: MPI.Comm, hosts: MPI.Comm, acc: Accumulator, total: float | None, timeout_s: float,
                what: str) -> None:
    """A hosting rank's part of a round's mean: reduce-scatter the ring sums (and coverage)
    of the ranks of ``hosts``, turn this rank's shard into the mean (the sum over ``total``)
    and gather it at rank 0 of ``comm`` (:func:`gather_mean`); every wait with a deadline.
    ``total`` None (secure aggregation: the sum is still masked) gathers the sum itself
    (:func:`gather_mean` with ``masked``), which only rank 0 can unmask."""
    bounds = shard_bounds(acc.n, hosts.size)
    lo, hi = bounds[hosts.rank], bounds[hosts.rank + 1]
    shard = np.empty(hi - lo, dtype=np.int64)
    reduce_scatter_sum(hosts, acc.acc, shard, bounds, timeout_s, what)
    if total is None:
        gather_shards(comm, shard, None, [0, *bounds], timeout_s, what)
        return
    cov = None
    if acc.coverage is not None:
        cov = np.empty(hi - lo, dtype=np.int64)
        reduce_scatter_sum(hosts, acc.coverage, cov, bounds, timeout_s, what)
    mean = ring_mean(shard, total, acc.ring, np.empty(hi - lo, dtype=np.float32), cov)
    gather_shards(comm, mean, None, [0, *bounds], timeout_s, what)


def gather_mean(comm: MPI.Comm, n: int, timeout_s: float, what: str, masked: bool = False) -> np.ndarray:
    """Rank 0's part of :func:`reduce_mean`: the ``n`` values of the mean (``masked``: the
    int64 sum), from the shards of ranks 1 .. size-1 (raises TimeoutError naming ``what``)."""
    dtype = np.int64 if masked else np.float32
    out = np.empty(n, dtype=dtype)
    gather_shards(comm, np.empty(0, dtype), out, [0, *shard_bounds(n, comm.size - 1)], timeout_s, what)
    return out


def barrier(comm: MPI.Comm, timeout_s: float, what: str) -> None:
    """``MPI_Barrier`` with a deadline."""
    wait_with_deadline([comm.Ibarrier()], timeout_s, what)


def gather_object(comm: MPI.Comm, obj, timeout_s: float, what: str, root: int = 0) -> list | None:
    """Every rank's ``obj`` as a list on ``root`` (None elsewhere), each wait with a deadline."""
    if comm.rank != root:
        wait_with_deadline([comm.isend(obj, dest=root, tag=Tag.GATHER)], timeout_s, what)
        return None
    return [obj if r == root else recv_object(comm, r, Tag.GATHER, timeout_s, f"{what} (rank {r})")
            for r in range(comm.size)]


def allgather_object(comm: MPI.Comm, obj, timeout_s: float, what: str) -> list:
    """Every rank's ``obj`` as a list on every rank, with deadlines (a gather, then a broadcast)."""
    return bcast_object(comm, gather_object(comm, obj, timeout_s, what), timeout_s, what)


def abort_job(comm: MPI.Comm, status: int) -> None:
    """``MPI_Abort`` the whole job with ``status``, after what was printed has had time to pass:
    mpiexec stops forwarding output once the abort tears the job down, and under load it dropped
    the message just printed."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    time.sleep(ABORT_GRACE_S)
    comm.Abort(status)


def poll(ready, timeout_s: float, what: str) -> None:
    """Call ``ready()`` until it is true, or raise TimeoutError naming ``what``:
    the one way fedhpc waits on MPI, so that no wait is without a deadline."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {max(timeout_s, 0):.0f}s waiting for {what}")
        time.sleep(0.0005)


def recv_object(comm: MPI.Comm, source: int, tag: int, timeout_s: float, what: str):
    """Receive a small pickled control message, or raise TimeoutError naming ``what``."""
    poll(lambda: comm.Iprobe(source=source, tag=tag), timeout_s, what)
    return comm.recv(source=source, tag=tag)


def wait_with_deadline(requests: list[MPI.Request], timeout_s: float, what: str, while_waiting=None) -> None:
    """Complete ``requests`` or raise TimeoutError naming ``what``; ``while_waiting()``, when
    given, is called at every poll."""
    def ready() -> bool:
        if while_waiting is not None:
            while_waiting()
        return MPI.Request.Testall(requests)

    poll(ready, timeout_s, what)
