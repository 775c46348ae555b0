"""``randk``: random-k sparsification; indices are regenerated from the seed."""

import struct

import numpy as np

from fedhpc import kernels as K
from fedhpc.compress._sparse import SparseCodec
from fedhpc.compress.base import expect_body
from fedhpc.errors import CorruptUpdateError


class RandK(SparseCodec):
    """k uniformly random values: 4k bytes; the indices cost nothing, they follow from the seed (+ header)."""

    name = "randk"
    codec_id = 6
    params = struct.Struct("<IxxxxQ")  # k, seed

    def _encode(self, x, state, seed):
        k = self.k_for(x.size)
        idx = K.randk_indices(x.size, k, seed)
        if state is None:
            return (k, seed), [K.gather(x, idx)]
        np.add(state.residual, x, out=state.residual)
        vals = K.gather(state.residual, idx)
        state.residual[idx] = 0.0
        return (k, seed), [vals]

    def _decode_parts(self, n, params, body):
        k, seed = params
        if k > n:
            raise CorruptUpdateError(f"'randk' update keeps k={k} of only n={n} values")
        expect_body(self, body, 4 * k)
        return K.randk_indices(n, k, seed), np.frombuffer(body, dtype=np.float32)

    def _body_size(self, n):
        return 4 * self.k_for(n)
