"""What travels between ranks: tags, the Update message, chunked buffer transfer.

An Update is a fixed header followed by a body: the codec frame for a trained
client, or a UTF-8 reason for a client that failed. The same bytes are meant
to travel over MPI and over gRPC. Only small control messages are pickled;
models and updates move as raw buffers.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from mpi4py import MPI

from fedhpc import env
from fedhpc import kernels as K
from fedhpc.errors import CorruptUpdateError


class Tag(IntEnum):
    UPDATE = 11  # trainer -> 0: an Update (possibly in several chunks)
    CLOSE = 12  # 0 -> trainer: round r is closed, stop working on it
    DONE = 13  # trainer -> 0: (round, number of Updates sent for it)
    SIGNAL = 14  # trainer -> 0: this rank received a stop signal
    STATE = 15  # either way: client ids, then their error-feedback residuals (checkpoint / restore)
    WORKERS = 16  # gateway -> 0 before the first round: {client id: profile} of the connected workers


class Status(IntEnum):
    OK = 0
    DROPOUT = 1  # the client vanished (simulated fault)
    ERROR = 2  # local training raised


UPDATE_MAGIC = b"FHUP"
UPDATE_VERSION = 1
# magic, version, status, job, round, client, samples, loss, compute_s, sim_s, body_len, crc
HEADER = struct.Struct("<4sBB2xIIIIdddQI4x")
MAX_BODY = 1 << 40


@dataclass
class UpdateHeader:
    status: Status
    job: int
    round: int
    client: int
    num_samples: int
    loss: float
    compute_s: float
    sim_s: float
    body_len: int


class BufferPool:
    """Byte buffers handed out during a round and all taken back after it.

    Large Updates are received (rank 0) and encoded (trainers) into memory
    that earlier rounds already touched: on Linux a fresh multi-megabyte
    array costs its page faults on first touch, which for big models made the
    data plane several times slower than the transfer itself. Buffers are
    bucketed by size rounded up to whole pages, so a fixed-size codec always
    finds its buffer again and a variable-size one usually does.
    """

    PAGE = 4096

    def __init__(self):
        self.free: dict[int, list[np.ndarray]] = {}
        self.lent: list[np.ndarray] = []

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 array of ``nbytes`` (a view of a pooled buffer), valid until :meth:`reclaim`."""
        cap = -(-max(nbytes, 1) // self.PAGE) * self.PAGE
        spare = self.free.get(cap)
        buf = spare.pop() if spare else np.empty(cap, dtype=np.uint8)
        self.lent.append(buf)
        return buf[:nbytes]

    def reclaim(self) -> None:
        """Take every buffer back: nothing handed out since the last call may be used any more."""
        for buf in self.lent:
            self.free.setdefault(buf.nbytes, []).append(buf)
        self.lent.clear()


def pack_update(h: UpdateHeader, body: bytes) -> np.ndarray:
    """Header + a copy of ``body`` as one uint8 buffer ready for MPI."""
    out = np.empty(HEADER.size + len(body), dtype=np.uint8)
    out[HEADER.size :] = np.frombuffer(body, dtype=np.uint8)
    return seal_update(h, out)


def seal_update(h: UpdateHeader, buf: np.ndarray) -> np.ndarray:
    """Write the Update header into the first ``HEADER.size`` bytes of ``buf``,
    whose rest is the body already in place (a codec frame encoded with that
    much headroom); return ``buf``."""
    fields = (UPDATE_MAGIC, UPDATE_VERSION, int(h.status), h.job, h.round, h.client, h.num_samples,
              h.loss, h.compute_s, h.sim_s, buf.nbytes - HEADER.size)
    HEADER.pack_into(buf, 0, *fields, 0)
    HEADER.pack_into(buf, 0, *fields, K.crc32c(buf[: HEADER.size]))
    return buf


def unpack_update(buf) -> tuple[UpdateHeader, memoryview]:
    """Parse and check an Update's header; raise CorruptUpdateError naming the problem."""
    view = memoryview(buf).cast("B")
    if view.nbytes < HEADER.size:
        raise CorruptUpdateError(f"Update truncated: {view.nbytes} bytes, its header is {HEADER.size}")
    magic, version, status, job, rnd, client, samples, loss, comp, sim, blen, crc = HEADER.unpack_from(view)
    if magic != UPDATE_MAGIC or version != UPDATE_VERSION:
        raise CorruptUpdateError(f"not a fedhpc Update (magic {bytes(magic)!r}, version {version})")
    zeroed = bytearray(view[: HEADER.size])
    zeroed[HEADER.size - 8 : HEADER.size - 4] = b"\0\0\0\0"
    if K.crc32c(zeroed) != crc:
        raise CorruptUpdateError("Update header checksum mismatch")
    if status not in Status._value2member_map_:
        raise CorruptUpdateError(f"Update has unknown status {status}")
    if HEADER.size + blen != view.nbytes:
        raise CorruptUpdateError(f"Update length mismatch: header says {HEADER.size}+{blen}, got {view.nbytes}")
    if not (np.isfinite(loss) and np.isfinite(comp) and np.isfinite(sim) and comp >= 0 and sim >= 0):
        raise CorruptUpdateError(f"Update has non-finite or negative loss/times ({loss}, {comp}, {sim})")
    h = UpdateHeader(Status(status), job, rnd, client, samples, loss, comp, sim, blen)
    return h, view[HEADER.size :]


def total_length(first_chunk: np.ndarray) -> int:
    """Length of the whole Update from its first chunk (header fields only, unverified)."""
    if first_chunk.nbytes < HEADER.size:
        return first_chunk.nbytes
    blen = HEADER.unpack_from(first_chunk)[10]
    return HEADER.size + min(blen, MAX_BODY)


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


def bcast_array(comm: MPI.Comm, arr: np.ndarray, root: int = 0) -> None:
    """Broadcast a contiguous array in place, in chunks of at most FEDHPC_MPI_CHUNK_BYTES."""
    flat = arr.reshape(-1).view(np.uint8)
    step = env.MPI_CHUNK_BYTES
    for a in range(0, flat.nbytes, step):
        comm.Bcast(flat[a : a + step], root=root)


def send_arrays(comm: MPI.Comm, arrays: dict[int, np.ndarray], dest: int, timeout_s: float) -> None:
    """Send {client id: float32 array}: the ids first, then each array in chunks."""
    comm.send(sorted(arrays), dest=dest, tag=Tag.STATE)
    for cid in sorted(arrays):
        wait_with_deadline(isend_chunked(comm, arrays[cid], dest, Tag.STATE), timeout_s, f"rank {dest} to take state")


def recv_arrays(comm: MPI.Comm, source: int, n: int, timeout_s: float):
    """Yield (client id, float32 array of n) as sent by :func:`send_arrays`."""
    ids = recv_object(comm, source, Tag.STATE, timeout_s, f"state from rank {source}")
    step = env.MPI_CHUNK_BYTES
    for cid in ids:
        out = np.empty(n, dtype=np.float32)
        raw = out.view(np.uint8)
        reqs = [comm.Irecv(raw[a : a + step], source=source, tag=Tag.STATE) for a in range(0, max(raw.nbytes, 1), step)]
        wait_with_deadline(reqs, timeout_s, f"state from rank {source}")
        yield cid, out


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


def wait_with_deadline(requests: list[MPI.Request], timeout_s: float, what: str) -> None:
    """Complete ``requests`` or raise TimeoutError naming ``what``."""
    poll(lambda: MPI.Request.Testall(requests), timeout_s, what)
