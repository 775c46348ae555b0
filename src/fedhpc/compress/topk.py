"""``topk``: exact top-k sparsification by magnitude."""

import struct

import numpy as np

from fedhpc import kernels as K
from fedhpc.compress._sparse import SparseCodec, decode_indices, index_bytes_bound, select_topk
from fedhpc.errors import CorruptUpdateError


class TopK(SparseCodec):
    """k largest |values|: 4k bytes of float32 values + about k*(log2(n/k)+2)/8 bytes of Rice-coded index gaps (+ header)."""

    name = "topk"
    codec_id = 5
    params = struct.Struct("<IB3x")  # k, Rice parameter

    def _encode(self, x, state, seed):
        k = self.k_for(x.size)
        idx, vals = select_topk(self, x, state, k)
        b = K.rice_param(x.size, k)
        return (k, b), [vals, K.rice_encode(idx, b)]

    def _decode_parts(self, n, params, body):
        k, b = params
        if body.nbytes < 4 * k:
            raise CorruptUpdateError(f"'topk' values truncated: {body.nbytes} bytes for k={k}")
        idx = decode_indices(self.name, body[4 * k :], k, n, b)
        return idx, np.frombuffer(body, dtype=np.float32, count=k)

    def _checks_finite(self, state):
        return state is None  # the error-feedback kernel updates the residual as it selects

    def _body_size(self, n):
        k = self.k_for(n)
        return 4 * k + index_bytes_bound(n, k)
