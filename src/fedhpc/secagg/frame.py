"""A masked input on the wire: the ``n`` int64 values of a client's masked ring vector,
little-endian, then their CRC-32C. Uniformly random on its own, it does not compress:
8 bytes a value whatever codec decided the values beneath the masks."""

from __future__ import annotations

import numpy as np

from fedhpc import kernels as K
from fedhpc.errors import CorruptUpdateError

CRC_BYTES = 4


def frame_bytes(n: int) -> int:
    """The size of the masked frame of ``n`` values."""
    return 8 * n + CRC_BYTES


def values(frame: np.ndarray, n: int) -> np.ndarray:
    """The int64 view of the values of a masked frame's buffer (uint8, ``frame_bytes(n)``), to write into."""
    return frame[: 8 * n].view("<i8")


def seal(frame: np.ndarray, n: int) -> None:
    """Write the checksum of the values now in ``frame``."""
    frame[8 * n :] = np.frombuffer(K.crc32c(frame[: 8 * n]).to_bytes(CRC_BYTES, "little"), dtype=np.uint8)


def read(body, n: int) -> np.ndarray:
    """The int64 values of a masked frame (a view of ``body``); CorruptUpdateError when its
    length is not that of ``n`` values or its checksum fails."""
    view = np.frombuffer(body, dtype=np.uint8)
    if view.nbytes != frame_bytes(n):
        raise CorruptUpdateError(f"masked input is {view.nbytes} bytes, {frame_bytes(n)} expected for {n} values")
    if K.crc32c(view[: 8 * n]) != int.from_bytes(view[8 * n :].tobytes(), "little"):
        raise CorruptUpdateError("masked input checksum mismatch")
    return view[: 8 * n].view("<i8")
