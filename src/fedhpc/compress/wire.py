"""The versioned frame around every encoded update.

Layout (little endian), :data:`HEADER` then the codec's parameter block then
the body::

    magic    4s   b"FHPC"
    version  u8   WIRE_VERSION
    codec    u8   codec id (see the registry)
    dtype    u8   dtype of the original vector (0 = float32, the only one)
    flags    u8   reserved, 0
    n        u64  number of elements of the original vector
    plen     u16  length of the codec's parameter block
    (2 bytes of padding, so that the 32-byte header keeps float32 bodies aligned)
    blen     u64  length of the body
    crc      u32  CRC-32C of the frame with this field zeroed

The checksum covers every byte, so a bit flip anywhere is reported as such
instead of decoding to a plausible but wrong vector.
"""

from __future__ import annotations

import struct
from typing import NamedTuple
from collections.abc import Callable

import numpy as np

from fedhpc import kernels as K
from fedhpc.errors import CorruptUpdateError

MAGIC = b"FHPC"
WIRE_VERSION = 1
DTYPE_FLOAT32 = 0
HEADER = struct.Struct("<4sBBBBQH2xQI")
_CRC_OFFSET = HEADER.size - 4


class Frame(NamedTuple):
    """A parsed, checksum-verified frame; ``params`` and ``body`` are views."""

    codec_id: int
    n: int
    params: memoryview
    body: memoryview


def pack(codec_id: int, n: int, params: bytes, body: list, headroom: int = 0,
         alloc: Callable[[int], np.ndarray] | None = None) -> np.ndarray:
    """Frame ``params`` and the body buffers into one checksummed message.

    Returns a uint8 array of ``headroom`` free bytes followed by the frame: a
    caller that sends the frame behind its own header (an Update) writes that
    header into the room, so the body is copied exactly once. ``alloc(nbytes)``
    supplies that array (default: a new one), e.g. from a buffer pool.
    """
    views = [memoryview(b).cast("B") for b in body]
    blen = sum(v.nbytes for v in views)
    size = headroom + HEADER.size + len(params) + blen
    out = np.empty(size, dtype=np.uint8) if alloc is None else alloc(size)
    frame = out[headroom:]
    HEADER.pack_into(frame, 0, MAGIC, WIRE_VERSION, codec_id, DTYPE_FLOAT32, 0, n, len(params), blen, 0)
    at = HEADER.size
    for v in (memoryview(params).cast("B"), *views):
        frame[at : at + v.nbytes] = np.frombuffer(v, dtype=np.uint8)
        at += v.nbytes
    struct.pack_into("<I", frame, _CRC_OFFSET, K.crc32c(frame))
    return out


def unpack(data, max_n: int) -> Frame:
    """Parse and verify a frame; raise :class:`CorruptUpdateError` saying what is wrong.

    Only the header is trusted for sizes after it has been checked against the
    actual length of ``data`` and against ``max_n``, so a hostile header cannot
    make the receiver allocate or read beyond what was sent.
    """
    try:
        view = memoryview(data).cast("B")
    except TypeError as exc:
        raise CorruptUpdateError(f"update must be bytes-like, got {type(data).__name__}") from exc
    if view.nbytes < HEADER.size:
        raise CorruptUpdateError(f"update truncated: {view.nbytes} bytes, the header alone is {HEADER.size}")
    magic, version, codec_id, dtype, flags, n, plen, blen, crc = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise CorruptUpdateError(f"not a fedhpc update: magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != WIRE_VERSION:
        raise CorruptUpdateError(f"unsupported wire version {version}; this fedhpc reads version {WIRE_VERSION}")
    if dtype != DTYPE_FLOAT32 or flags != 0:
        raise CorruptUpdateError(f"unsupported dtype {dtype} / flags {flags} in update header")
    if n > max_n:
        raise CorruptUpdateError(f"update declares {n} elements, more than the allowed {max_n}")
    if HEADER.size + plen + blen != view.nbytes:
        raise CorruptUpdateError(
            f"update length mismatch: header says {HEADER.size}+{plen}+{blen} bytes, got {view.nbytes}"
        )
    check = K.crc32c(view[:_CRC_OFFSET])
    check = K.crc32c(b"\0\0\0\0", check)
    check = K.crc32c(view[HEADER.size :], check)
    if check != crc:
        raise CorruptUpdateError(f"update checksum mismatch (crc32c {check:#010x}, header says {crc:#010x})")
    return Frame(codec_id, n, view[HEADER.size : HEADER.size + plen], view[HEADER.size + plen :])
