"""Shared implementation of blockwise absmax quantization (int8, int4)."""

import struct

import numpy as np

from fedhpc import kernels as K
from fedhpc.compress.base import DEFAULT_MAX_N, DenseCodec, expect_body, refuse_nonfinite
from fedhpc.errors import CorruptUpdateError


def code_bytes(n: int, bits: int) -> int:
    """Bytes of the packed codes of n values."""
    return n if bits == 8 else (n + 1) // 2


def check_block(name: str, block: int) -> int:
    if not isinstance(block, int) or not 1 <= block <= 1 << 24:
        raise ValueError(f"codec '{name}': block must be an integer in [1, 2**24], got {block!r}")
    return block


def decode_blocks(name: str, body: memoryview, n: int, bits: int, block: int) -> np.ndarray:
    """Dequantize ``scales | codes`` of n values after checking sizes and scales."""
    nblocks = -(-n // block)
    expect = 4 * nblocks + code_bytes(n, bits)
    if body.nbytes < expect:
        raise CorruptUpdateError(f"'{name}' quantized values truncated: {body.nbytes} bytes, expected {expect}")
    scales = np.frombuffer(body, dtype=np.float32, count=nblocks)
    if nblocks and not (np.isfinite(scales).all() and (scales >= 0).all()):
        raise CorruptUpdateError(f"'{name}' update has a negative or non-finite quantization scale")
    codes = np.frombuffer(body, dtype=np.uint8, count=code_bytes(n, bits), offset=4 * nblocks)
    return K.dequantize(codes, scales, n, bits, block)


class BlockwiseCodec(DenseCodec):
    """Symmetric absmax quantization per block of ``block`` values."""

    bits: int
    params = struct.Struct("<I")

    def __init__(self, block: int = 256, stochastic: bool = False, max_n: int = DEFAULT_MAX_N):
        super().__init__(max_n)
        self.block = check_block(self.name, block)
        self.stochastic = bool(stochastic)

    def _encode_dense(self, x, seed):
        codes, scales = K.quantize(x, self.bits, self.block, self.stochastic, seed)
        if np.isnan(scales).any():  # the kernel gives a block with NaN/Inf a NaN scale
            refuse_nonfinite(self)
        return (self.block,), [scales, codes]

    def _checks_finite(self, state):
        return True

    def _decode(self, n, params, body):
        (block,) = params
        if block == 0:
            raise CorruptUpdateError(f"'{self.name}' update has block size 0")
        nblocks = -(-n // block)
        expect_body(self, body, 4 * nblocks + code_bytes(n, self.bits))
        return decode_blocks(self.name, body, n, self.bits, block)

    def _decode_range(self, n, params, body, lo, hi):
        (block,) = params
        first = lo // block
        if self.bits == 4 and first * block % 2:  # int4 codes are two to a byte: start on a whole byte
            first -= 1
        start, nblocks = first * block, -(-n // block)
        count = min(n, -(-hi // block) * block) - start
        scales = np.frombuffer(body, dtype=np.float32, count=-(-count // block), offset=4 * first)
        codes = np.frombuffer(body, dtype=np.uint8, count=code_bytes(count, self.bits),
                              offset=4 * nblocks + code_bytes(start, self.bits))
        return K.dequantize(codes, scales, count, self.bits, block)[lo - start : hi - start]

    def _body_size(self, n):
        return 4 * -(-n // self.block) + code_bytes(n, self.bits)

    def describe(self):
        return f"block={self.block}, stochastic={self.stochastic}"
