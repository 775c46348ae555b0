"""Shared implementation of the sparsifiers (top-k, random-k, top-k + int8)."""

import numpy as np

from fedhpc import kernels as K
from fedhpc.compress.base import DEFAULT_MAX_N, Codec, check_ratio_k, refuse_nonfinite
from fedhpc.errors import CorruptUpdateError


class SparseCodec(Codec):
    """Keep k of n values; the receiver scatters them into zeros."""

    sparse = True

    def __init__(self, ratio: float | None = None, k: int | None = None, max_n: int = DEFAULT_MAX_N):
        super().__init__(max_n)
        self.ratio, self.k = check_ratio_k(self.name, ratio, k)

    def k_for(self, n: int) -> int:
        """Number of values kept of an n-element vector."""
        if self.k is not None:
            return min(self.k, n)
        assert self.ratio is not None  # check_ratio_k gives one of the two
        return min(n, max(1, int(round(self.ratio * n)))) if n else 0

    def describe(self):
        return f"ratio={self.ratio}" if self.k is None else f"k={self.k}"



def select_topk(codec: Codec, x: np.ndarray, state, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of x, or of residual + x with error feedback (fused kernel). Without error
    feedback it refuses a non-finite x: NaN and Inf rank above every finite magnitude, so
    one is among the k kept values if x holds any (``k`` >= 1)."""
    if state is not None:
        return K.topk_ef(x, state.residual, k)
    idx, vals = K.topk(x, k)
    if not np.isfinite(vals).all() or (k == 0 and x.size and not np.isfinite(K.l2_norm(x))):
        refuse_nonfinite(codec)
    return idx, vals


def decode_indices(name: str, rice: memoryview, k: int, n: int, b: int) -> np.ndarray:
    if k > n:
        raise CorruptUpdateError(f"'{name}' update keeps k={k} of only n={n} values")
    if b > 31:
        raise CorruptUpdateError(f"'{name}' update has Rice parameter {b} > 31")
    return K.rice_decode(np.frombuffer(rice, dtype=np.uint8), k, n, b)


def index_bytes_bound(n: int, k: int) -> int:
    """Upper bound of the Rice-coded index bytes: k codes of b+1 bits plus at
    most n >> b unary ones in total (the gaps sum to less than n)."""
    b = K.rice_param(n, k)
    return (k * (b + 1) + (n >> b) + 7) // 8

