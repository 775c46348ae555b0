"""The Update header: every field survives sealing and unpacking, and a header that lies is refused."""

import struct

import numpy as np
import pytest

from fedhpc import kernels as K
from fedhpc.errors import CorruptUpdateError
from fedhpc.update import HEADER, Status, UpdateHeader, pack_update, unpack_update

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("clipped", [False, True])
def test_every_header_field_round_trips(clipped):
    head = UpdateHeader(Status.OK, 7, 3, 41, 128, 0.25, 1.5, 2.5, clipped=clipped)
    got, body = unpack_update(pack_update(head, b"frame"))
    assert got == UpdateHeader(Status.OK, 7, 3, 41, 128, 0.25, 1.5, 2.5, 5, clipped) and bytes(body) == b"frame"


def _with_flags(buf: np.ndarray, flags: int) -> np.ndarray:
    """``buf`` with its flags byte set and a valid checksum: a header a hostile sender could seal."""
    out = buf.copy()
    out[6] = flags
    struct.pack_into("<I", out, HEADER.size - 8, 0)
    struct.pack_into("<I", out, HEADER.size - 8, K.crc32c(out[: HEADER.size]))
    return out


def test_unknown_flags_are_refused_even_under_a_valid_checksum():
    buf = pack_update(UpdateHeader(Status.OK, 7, 3, 41, 128), b"frame")
    assert unpack_update(_with_flags(buf, 1))[0].clipped
    assert unpack_update(_with_flags(buf, 2))[0].masked and not unpack_update(_with_flags(buf, 2))[0].clipped
    for flags in (4, 0x80, 0xFF):
        with pytest.raises(CorruptUpdateError, match="unknown flags"):
            unpack_update(_with_flags(buf, flags))
    flipped = buf.copy()
    flipped[6] ^= 1  # the flag flipped in transit: the checksum catches it
    with pytest.raises(CorruptUpdateError, match="checksum"):
        unpack_update(flipped)
