"""The Update: what a client sends after a round, the same bytes over MPI and gRPC.

An Update is a fixed header followed by a body: the codec frame for a trained
client, or a UTF-8 reason for a client that failed. This module seals and
unpacks them and knows nothing of how they travel: it imports neither mpi4py
nor gRPC, so a remote worker (:mod:`fedhpc.gateway.worker`) needs neither MPI
nor the runtime's transport, and the MPI transport
(:mod:`fedhpc.runtime.transport`) and the gateway both use it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from fedhpc import kernels as K
from fedhpc.errors import CorruptUpdateError


class Status(IntEnum):
    OK = 0
    DROPOUT = 1  # the client vanished (simulated fault)
    ERROR = 2  # local training raised
    REJECTED = 3  # the gateway refused the worker's update; the body says why


UPDATE_MAGIC = b"FHUP"
UPDATE_VERSION = 2
# magic, version, status, flags, job, round, client, samples, loss, compute_s, sim_s, body_len, crc
HEADER = struct.Struct("<4sBBBxIIIIdddQI4x")
FLAG_CLIPPED = 1  # differential privacy: the update's norm was above the round's clip
FLAG_MASKED = 2  # secure aggregation: the body is a masked ring vector (fedhpc.secagg.frame), not a codec frame
FLAGS = FLAG_CLIPPED | FLAG_MASKED  # every flag there is; any other bit set is a corrupt header
MAX_BODY = 1 << 40
MAX_REASON_BYTES = 4096  # a failure's reason is cut to this


@dataclass(frozen=True)
class UpdateHeader:
    status: Status
    job: int
    round: int
    client: int
    num_samples: int
    loss: float = 0.0
    compute_s: float = 0.0
    sim_s: float = 0.0  # completion time on the simulated clock
    body_len: int = 0  # filled in from the buffer when sealing
    clipped: bool = False  # DP: the client's norm was above the round's clip (adaptive clipping counts them)
    masked: bool = False  # secure aggregation: the body is the client's masked ring vector


def max_update_bytes(num_params: int) -> int:
    """The largest Update any codec may produce for a model of ``num_params``
    float32 values: twice the dense model plus a MiB of framing. Rank 0, the
    gateway and its workers all bound uploads by it."""
    return 64 + 2 * 4 * num_params + (1 << 20)


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

    def __init__(self) -> None:
        self.free: dict[int, list[np.ndarray]] = {}
        self.lent: dict[int, np.ndarray] = {}  # by id(): a rank lends thousands a round

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 array of ``nbytes`` (a view of a pooled buffer), valid until :meth:`reclaim`."""
        cap = -(-max(nbytes, 1) // self.PAGE) * self.PAGE
        spare = self.free.get(cap)
        buf = spare.pop() if spare else np.empty(cap, dtype=np.uint8)
        self.lent[id(buf)] = buf
        return buf[:nbytes]

    def release(self, view: np.ndarray) -> None:
        """Take back the one buffer ``view`` (from :meth:`take`) before the others."""
        buf = self.lent.pop(id(view.base if view.base is not None else view), None)
        if buf is not None:
            self.free.setdefault(buf.nbytes, []).append(buf)

    def reclaim(self) -> None:
        """Take every buffer back: nothing handed out since the last call may be used any more."""
        for buf in self.lent.values():
            self.free.setdefault(buf.nbytes, []).append(buf)
        self.lent.clear()


def pack_update(h: UpdateHeader, body: bytes) -> np.ndarray:
    """Header + a copy of ``body`` as one uint8 buffer ready to send."""
    out = np.empty(HEADER.size + len(body), dtype=np.uint8)
    out[HEADER.size :] = np.frombuffer(body, dtype=np.uint8)
    return seal_update(h, out)


def failure_update(status: Status, job: int, round_: int, client: int, reason: str) -> np.ndarray:
    """A sealed Update that reports a client's failure (``status`` other than OK) and why."""
    return pack_update(UpdateHeader(status, job, round_, client, 0), reason.encode()[:MAX_REASON_BYTES])


def seal_update(h: UpdateHeader, buf: np.ndarray) -> np.ndarray:
    """Write the Update header into the first ``HEADER.size`` bytes of ``buf``,
    whose rest is the body already in place (a codec frame encoded with that
    much headroom); return ``buf``."""
    flags = (FLAG_CLIPPED if h.clipped else 0) | (FLAG_MASKED if h.masked else 0)
    fields = (UPDATE_MAGIC, UPDATE_VERSION, int(h.status), flags, h.job, h.round, h.client,
              h.num_samples, h.loss, h.compute_s, h.sim_s, buf.nbytes - HEADER.size)
    HEADER.pack_into(buf, 0, *fields, 0)
    HEADER.pack_into(buf, 0, *fields, K.crc32c(buf[: HEADER.size]))
    return buf


def unpack_update(buf) -> tuple[UpdateHeader, memoryview]:
    """Parse and check an Update's header; raise CorruptUpdateError naming the problem."""
    view = memoryview(buf).cast("B")
    if view.nbytes < HEADER.size:
        raise CorruptUpdateError(f"Update truncated: {view.nbytes} bytes, its header is {HEADER.size}")
    magic, version, status, flags, job, rnd, client, samples, loss, comp, sim, blen, crc = HEADER.unpack_from(view)
    if magic != UPDATE_MAGIC or version != UPDATE_VERSION:
        raise CorruptUpdateError(f"not a fedhpc Update (magic {bytes(magic)!r}, version {version})")
    zeroed = bytearray(view[: HEADER.size])
    zeroed[HEADER.size - 8 : HEADER.size - 4] = b"\0\0\0\0"
    if K.crc32c(zeroed) != crc:
        raise CorruptUpdateError("Update header checksum mismatch")
    if status not in Status._value2member_map_:
        raise CorruptUpdateError(f"Update has unknown status {status}")
    if flags & ~FLAGS:
        raise CorruptUpdateError(f"Update has unknown flags {flags:#04x}")
    if HEADER.size + blen != view.nbytes:
        raise CorruptUpdateError(f"Update length mismatch: header says {HEADER.size}+{blen}, got {view.nbytes}")
    if not (np.isfinite(loss) and np.isfinite(comp) and np.isfinite(sim) and comp >= 0 and sim >= 0):
        raise CorruptUpdateError(f"Update has non-finite or negative loss/times ({loss}, {comp}, {sim})")
    h = UpdateHeader(Status(status), job, rnd, client, samples, loss, comp, sim, blen, bool(flags & FLAG_CLIPPED),
                     bool(flags & FLAG_MASKED))
    return h, view[HEADER.size :]


def total_length(first_chunk: np.ndarray) -> int:
    """Length of the whole Update from its first chunk (header fields only, unverified)."""
    if first_chunk.nbytes < HEADER.size:
        return first_chunk.nbytes
    blen = HEADER.unpack_from(first_chunk)[11]
    return HEADER.size + min(blen, MAX_BODY)
