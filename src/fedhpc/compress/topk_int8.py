"""``topk-int8``: top-k sparsification, then int8 quantization of the kept values."""

import struct

from fedhpc import kernels as K
from fedhpc.compress._blockwise import check_block, code_bytes, decode_blocks
from fedhpc.compress._sparse import SparseCodec, decode_indices, index_bytes_bound, select_topk
from fedhpc.compress.base import DEFAULT_MAX_N
from fedhpc.errors import CorruptUpdateError


class TopKInt8(SparseCodec):
    """k largest |values| as int8 with a float32 scale per block of kept values:
    k + 4*ceil(k/block) bytes + Rice-coded index gaps, about k*(log2(n/k)+2)/8 bytes (+ header).
    With error feedback the quantization error of the kept values stays in the residual."""

    name = "topk-int8"
    codec_id = 7
    params = struct.Struct("<IB3xI")  # k, Rice parameter, block

    def __init__(self, ratio=None, k=None, block: int = 128, stochastic: bool = False, max_n: int = DEFAULT_MAX_N):
        super().__init__(ratio, k, max_n)
        self.block = check_block(self.name, block)
        self.stochastic = bool(stochastic)

    def _encode(self, x, state, seed):
        k = self.k_for(x.size)
        idx, vals = select_topk(self, x, state, k)
        codes, scales = K.quantize(vals, 8, self.block, self.stochastic, seed)
        if state is not None:
            sent = K.dequantize(codes, scales, k, 8, self.block)
            K.sparse_axpy(state.residual, idx, vals - sent, 1.0)
        b = K.rice_param(x.size, k)
        return (k, b, self.block), [scales, codes, K.rice_encode(idx, b)]

    def _decode_parts(self, n, params, body):
        k, b, block = params
        if block == 0:
            raise CorruptUpdateError("'topk-int8' update has block size 0")
        if k > n:
            raise CorruptUpdateError(f"'topk-int8' update keeps k={k} of only n={n} values")
        vals = decode_blocks(self.name, body, k, 8, block)
        idx = decode_indices(self.name, body[4 * -(-k // block) + code_bytes(k, 8) :], k, n, b)
        return idx, vals

    def _checks_finite(self, state):
        return state is None  # the error-feedback kernel updates the residual as it selects

    def _body_size(self, n):
        k = self.k_for(n)
        return 4 * -(-k // self.block) + k + index_bytes_bound(n, k)

    def describe(self):
        return f"{super().describe()}, block={self.block}, stochastic={self.stochastic}"
