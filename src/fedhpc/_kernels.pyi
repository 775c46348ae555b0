"""Type stub of the private compiled module ``fedhpc._kernels``.

Every kernel checks its arguments before touching memory and raises
``ValueError`` (never crashes) on a wrong dtype, a non-contiguous array, a
wrong shape or an out-of-range parameter. Kernels release the GIL and run
with OpenMP threads (``set_num_threads``). Arrays are 1-D and C-contiguous
unless stated. Results never depend on the number of threads.

Defined behaviour for non-finite input:
* casts keep NaN as NaN and +-Inf as +-Inf (fp16 overflow rounds to Inf);
* blockwise quantization gives a block that holds NaN/Inf the scale NaN and
  all-zero codes, so dequantizing yields NaN for that whole block: a
  non-finite update stays visible instead of being silently clipped;
* top-k ranks by the bit pattern of |x|, so NaN ranks above +Inf, which ranks
  above every finite value;
* median/trimmed mean give NaN for a coordinate where any input is NaN;
* l2_norm is non-finite iff some input is non-finite (accumulates in double).
"""

import numpy as np
import numpy.typing as npt

def set_num_threads(n: int) -> None:
    """Set the OpenMP thread count used by every kernel (n >= 1)."""
def get_num_threads() -> int: ...
def cuda_device_count() -> int:
    """Number of CUDA devices visible; 0 without a GPU, a driver, or a CUDA build."""
def built_with_cuda() -> bool: ...

# ---- casts -----------------------------------------------------------------
def to_fp16(x: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """float32 -> IEEE binary16 bits, round to nearest even (as numpy astype(float16))."""
def from_fp16(h: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]: ...
def to_bf16(x: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """float32 -> bfloat16 bits, round to nearest even; NaN stays a quiet NaN."""
def from_bf16(h: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]: ...

# ---- blockwise quantization -------------------------------------------------
def quantize(
    x: npt.NDArray[np.float32] | npt.NDArray[np.float16],
    bits: int,
    block: int,
    stochastic: bool = False,
    seed: int = 0,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """Blockwise symmetric absmax quantization to ``bits`` in {8, 4}.

    Returns ``(codes, scales)``; ``scales[b] = absmax(block b) / qmax`` with
    qmax = 127 (8 bits) or 7 (4 bits), one float32 per block of ``block``
    values (the last block may be short). For 8 bits, ``codes`` is n bytes
    holding int8 values in [-127, 127]. For 4 bits, ``codes`` is ceil(n/2)
    bytes; value i lives in byte i//2, low nibble for even i, high nibble for
    odd i, stored as ``q + 8`` (so 1..15; an odd n leaves the last high nibble 0).
    q = rint(x * inv) (round half to even) with ``inv = qmax / absmax`` computed
    in float32, or with ``stochastic`` q = floor(x * inv + u) where
    u = uniform(seed, i) (see ``uniform``) for global index i; q is clipped to
    [-qmax, qmax]. A block of zeros has scale 0 and codes 0.
    """
def dequantize(
    codes: npt.NDArray[np.uint8], scales: npt.NDArray[np.float32], n: int, bits: int, block: int
) -> npt.NDArray[np.float32]:
    """Inverse of ``quantize``: x[i] = q[i] * scales[i // block] (float32 multiply)."""
def uniform(seed: int, n: int) -> npt.NDArray[np.float32]:
    """The counter-based uniforms in [0, 1) used by stochastic rounding:
    u[i] = (splitmix64(seed + (i + 1) * 0x9E3779B97F4A7C15) >> 40) * 2**-24."""

# ---- sparsification ---------------------------------------------------------
def topk(x: npt.NDArray[np.float32], k: int) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.float32]]:
    """Exact top-k by magnitude. Returns (indices ascending, x[indices]).
    Ties in |x| are broken by lower index, so the result is deterministic.
    0 <= k <= n; n < 2**32."""
def topk_ef(
    update: npt.NDArray[np.float32], residual: npt.NDArray[np.float32], k: int
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.float32]]:
    """Top-k fused with error feedback, in place on ``residual``:
    residual += update; (idx, vals) = topk(residual, k); residual[idx] = 0.
    Returns (idx, vals) like ``topk``."""
def randk_indices(n: int, k: int, seed: int) -> npt.NDArray[np.uint32]:
    """k distinct indices in [0, n), ascending, a deterministic function of (n, k, seed)."""
def gather(x: npt.NDArray[np.float32], idx: npt.NDArray[np.uint32]) -> npt.NDArray[np.float32]:
    """x[idx] with bounds checked."""

# ---- index coding -----------------------------------------------------------
def rice_param(n: int, k: int) -> int:
    """The Rice parameter b used for k ascending indices in [0, n)."""
def rice_encode(idx: npt.NDArray[np.uint32], b: int) -> npt.NDArray[np.uint8]:
    """Strictly ascending indices -> Golomb-Rice coded gaps, parameter b in [0, 31].
    gap_0 = idx_0, gap_j = idx_j - idx_{j-1} - 1; each gap is written as
    (gap >> b) one-bits, a zero-bit, then the low b bits (MSB first); bits fill
    bytes MSB first; the last byte is zero-padded."""
def rice_decode(buf: npt.NDArray[np.uint8] | bytes, k: int, n: int, b: int) -> npt.NDArray[np.uint32]:
    """Inverse of ``rice_encode``; raises ValueError if the stream is truncated,
    has trailing non-padding bytes, or decodes to an index >= n."""

# ---- aggregation ------------------------------------------------------------
def axpy(acc: npt.NDArray[np.float32], x: npt.NDArray[np.float32] | npt.NDArray[np.float16], w: float) -> None:
    """acc += w * x in place (float32 accumulate)."""
def sparse_axpy(acc: npt.NDArray[np.float32], idx: npt.NDArray[np.uint32], vals: npt.NDArray[np.float32], w: float) -> None:
    """acc[idx] += w * vals in place; idx strictly ascending and < len(acc)."""
def median(stack: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Coordinate-wise median of a C-contiguous (K, n) array (mean of the two middle
    values for even K, as numpy.median)."""
def trimmed_mean(stack: npt.NDArray[np.float32], trim: int) -> npt.NDArray[np.float32]:
    """Coordinate-wise mean after dropping the ``trim`` smallest and largest of K values
    (0 <= 2*trim < K), summed in double."""
def l2_norm(x: npt.NDArray[np.float32]) -> float:
    """Euclidean norm accumulated in double."""
def sq_dists(stack: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """(K, K) pairwise squared Euclidean distances of the rows (double), for Krum."""

# ---- integrity --------------------------------------------------------------
def crc32c(data: bytes | bytearray | memoryview | npt.NDArray[np.uint8], crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of the bytes, continuing from ``crc``; hardware
    instructions when the CPU has SSE4.2."""
