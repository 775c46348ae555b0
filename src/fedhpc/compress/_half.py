"""Shared implementation of the 16-bit float casts (fp16, bf16)."""

from collections.abc import Callable

import numpy as np

from fedhpc.compress.base import DenseCodec, expect_body


class HalfCodec(DenseCodec):
    """Cast to a 16-bit float format with round-to-nearest-even."""

    _to: Callable[[np.ndarray], np.ndarray]  # float32 -> uint16 bits (a staticmethod)
    _from: Callable[[np.ndarray], np.ndarray]  # uint16 bits -> float32 (a staticmethod)

    def _encode_dense(self, x, seed):
        return (), [self._to(x)]

    def _decode(self, n, params, body):
        expect_body(self, body, 2 * n)
        return self._from(np.frombuffer(body, dtype=np.uint16))

    def _decode_range(self, n, params, body, lo, hi):
        return self._from(np.frombuffer(body, dtype=np.uint16, count=hi - lo, offset=2 * lo))

    def _body_size(self, n):
        return 2 * n
