"""Type stub of the private compiled module ``fedhpc._kernels``.

Every kernel checks its arguments before touching memory and raises
``ValueError`` (never crashes) on a wrong dtype, a non-contiguous array, a
wrong shape or an out-of-range parameter. Kernels release the GIL and run
with OpenMP threads (``set_num_threads``). Arrays are 1-D and C-contiguous
unless stated. Results never depend on the number of threads.

Argument details (clarifications of the rules above):
* arrays are never converted: the dtype must match exactly (native byte
  order), and the array must be C-contiguous and aligned; arrays written in
  place must be writeable. An argument that is not a numpy array at all
  raises ``TypeError`` (no matching signature).
* arrays written in place (``acc``, ``residual``) must not partially overlap
  an input; being the very same array as the elementwise input is allowed
  (``axpy(a, a, w)``, ``topk_ef(r, r, k)``).
* ``seed`` is an integer in [0, 2**64); ``crc`` an integer in [0, 2**32).
* index arrays are uint32, so arrays that are indexed must be shorter than
  2**32 and ``n`` arguments of index functions are < 2**32 (<= 2**32 for the
  Rice coder).
* setting the environment variable ``FEDHPC_DISABLE_SIMD=1`` before import
  makes the kernels use their portable code paths instead of AVX2/F16C/SSE4.2
  ones; both give bit-identical results (for testing).

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
    """Set the OpenMP thread count used by every kernel (1 <= n <= 4096).

    Process-wide: it applies to kernel calls from every Python thread. The
    default is OpenMP's (``OMP_NUM_THREADS``, else the number of cores)."""
def get_num_threads() -> int: ...
def cuda_device_count() -> int:
    """Number of CUDA devices visible; 0 without a GPU, a driver, or a CUDA build."""
def built_with_cuda() -> bool: ...

# ---- casts -----------------------------------------------------------------
def to_fp16(x: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """float32 -> IEEE binary16 bits, round to nearest even (as numpy astype(float16)).

    Bit-identical to numpy for every input, NaN payloads included: a NaN keeps
    its sign and the top 10 payload bits (0x7c01 | sign if those are all zero);
    signalling NaNs are not quieted."""
def from_fp16(h: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]:
    """binary16 bits -> float32, exact; bit-identical to numpy (NaN payloads kept)."""
def to_bf16(x: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """float32 -> bfloat16 bits, round to nearest even; NaN stays a quiet NaN.

    Finite values that round past the largest bfloat16 become +-Inf. A NaN
    becomes ``(bits >> 16) | 0x0040``: sign and top payload bits kept, quiet
    bit set (what AVX512-BF16 hardware does)."""
def from_bf16(h: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]:
    """bfloat16 bits -> float32 bits ``h << 16``, exact."""

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

    Precisely (all operations float32, so a NumPy reference is bit-identical):
    float16 input is first converted exactly to float32; ``x * inv + u`` is
    two roundings (no FMA); "codes 0" means q = 0 (stored nibble 8 for 4
    bits). A block holding NaN or Inf gets scale NaN and q = 0. When
    ``qmax / absmax`` overflows to Inf (absmax == 0, or a block whose values
    are all below about 3.7e-37 for 8 bits / 2.1e-38 for 4 bits) the block
    gets scale 0 and q = 0. bits must be 8 or 4, block >= 1.
    """
def dequantize(
    codes: npt.NDArray[np.uint8], scales: npt.NDArray[np.float32], n: int, bits: int, block: int
) -> npt.NDArray[np.float32]:
    """Inverse of ``quantize``: x[i] = q[i] * scales[i // block] (float32 multiply).

    ``codes`` must hold exactly n (8 bits) or ceil(n/2) (4 bits) bytes and
    ``scales`` exactly ceil(n / block) values; every nibble decodes as
    nibble - 8, every byte (8 bits) as its int8 value."""
def uniform(seed: int, n: int) -> npt.NDArray[np.float32]:
    """The counter-based uniforms in [0, 1) used by stochastic rounding:
    u[i] = (splitmix64(seed + (i + 1) * 0x9E3779B97F4A7C15) >> 40) * 2**-24.

    Arithmetic is modulo 2**64 and splitmix64 is the output function
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
    return z ^ (z >> 31)."""

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
    Returns (idx, vals) like ``topk``.

    ``vals`` are the float32 sums residual + update (before zeroing). With
    k = 0 the accumulation still happens. ``update`` may be ``residual``
    itself but must not partially overlap it."""
def randk_indices(n: int, k: int, seed: int) -> npt.NDArray[np.uint32]:
    """k distinct indices in [0, n), ascending, a deterministic function of (n, k, seed).

    0 <= k <= n < 2**32. Exact algorithm (Floyd's sampling), so that other
    implementations (CUDA, NumPy) reproduce it: for c = 0 .. k-1, with
    j = n - k + c and r = splitmix64(seed + (c + 1) * 0x9E3779B97F4A7C15)
    (as in ``uniform``, modulo 2**64), draw t = (r * (j + 1)) >> 64 (the high
    64 bits of the 128-bit product, so 0 <= t <= j); add t to the set, or j if
    t is already in it. The set is returned sorted."""
def gather(x: npt.NDArray[np.float32], idx: npt.NDArray[np.uint32]) -> npt.NDArray[np.float32]:
    """x[idx] with bounds checked (any order, repeats allowed; an index >= len(x) raises ValueError)."""

# ---- index coding -----------------------------------------------------------
def rice_param(n: int, k: int) -> int:
    """The Rice parameter b used for k ascending indices in [0, n).

    b = floor(log2((n - k) // k)) clamped to [0, 31] (the mean gap), and 0
    when k == 0 or (n - k) // k == 0. Requires 0 <= k <= n <= 2**32."""
def rice_encode(idx: npt.NDArray[np.uint32], b: int) -> npt.NDArray[np.uint8]:
    """Strictly ascending indices -> Golomb-Rice coded gaps, parameter b in [0, 31].
    gap_0 = idx_0, gap_j = idx_j - idx_{j-1} - 1; each gap is written as
    (gap >> b) one-bits, a zero-bit, then the low b bits (MSB first); bits fill
    bytes MSB first; the last byte is zero-padded.

    The result has exactly ceil(total bits / 8) bytes (none for an empty idx).
    Indices that are not strictly ascending raise ValueError."""
def rice_decode(buf: npt.NDArray[np.uint8] | bytes, k: int, n: int, b: int) -> npt.NDArray[np.uint32]:
    """Inverse of ``rice_encode``; raises ValueError if the stream is truncated,
    has trailing non-padding bytes, or decodes to an index >= n.

    ``buf`` is bytes, a bytearray, a 1-D contiguous memoryview of unsigned
    bytes, or a 1-D C-contiguous uint8 array. 0 <= k <= n <= 2**32, b in [0, 31]. Also
    rejected: a run of one-bits longer than n >> b, padding bits (after the
    last code, within the last byte) that are not zero, and any byte after the
    one holding the last code. So exactly the output of ``rice_encode`` decodes."""

# ---- aggregation ------------------------------------------------------------
def axpy(acc: npt.NDArray[np.float32], x: npt.NDArray[np.float32] | npt.NDArray[np.float16], w: float) -> None:
    """acc += w * x in place (float32 accumulate).

    w is rounded to float32 first and acc[i] = acc[i] + float32(w) * x[i] with
    two float32 roundings (no FMA): bit-identical to numpy
    ``acc += np.float32(w) * x``. float16 x is converted exactly to float32."""
def sparse_axpy(acc: npt.NDArray[np.float32], idx: npt.NDArray[np.uint32], vals: npt.NDArray[np.float32], w: float) -> None:
    """acc[idx] += w * vals in place; idx strictly ascending and < len(acc).

    Same arithmetic as ``axpy``; len(idx) == len(vals); idx and vals must not
    overlap acc."""
def median(stack: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Coordinate-wise median of a C-contiguous (K, n) array (mean of the two middle
    values for even K, as numpy.median).

    K >= 1. For even K the result is (lower + upper) / 2 in float32, exactly
    what numpy.median returns for float32 input."""
def trimmed_mean(stack: npt.NDArray[np.float32], trim: int) -> npt.NDArray[np.float32]:
    """Coordinate-wise mean after dropping the ``trim`` smallest and largest of K values
    (0 <= 2*trim < K), summed in double.

    The kept values are summed in ascending order in double, divided by
    K - 2*trim in double and rounded to float32: bit-identical to
    ``(np.sort(s, 0)[trim:K-trim].astype(np.float64).sum(0) / (K - 2*trim)).astype(np.float32)``."""
def l2_norm(x: npt.NDArray[np.float32]) -> float:
    """Euclidean norm accumulated in double.

    Fixed summation order: per chunk of 65536 values, eight double lanes
    (lane i % 8) accumulate x[i]**2 in index order and are combined as
    ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)); the chunk sums are
    added in order; then sqrt. 0.0 for an empty array."""
def sq_dists(stack: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """(K, K) pairwise squared Euclidean distances of the rows (double), for Krum.

    Each term is (double(a) - double(b))**2; the summation order is fixed
    (eight lanes per tile of 2048 columns, tiles and tile groups added in
    order; the grouping depends on K and n only). The diagonal is 0 and the
    matrix is exactly symmetric. K = 0 gives a (0, 0) array."""
def sq_dists_to(stack: npt.NDArray[np.float32], point: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """(K,) squared Euclidean distances (double) of the rows of a C-contiguous (K, n) array
    to ``point`` (n float32 values), for the geometric median and centered clipping.

    Each row's sum has l2_norm's fixed order (eight lanes per chunk of 65536
    values, chunks added in order) over (double(x) - double(p))**2."""
def closest_mean(stack: npt.NDArray[np.float32], beta: int) -> npt.NDArray[np.float32]:
    """Coordinate-wise mean of the ``beta`` values nearest the coordinate's median
    (1 <= beta <= K), Bulyan's second stage.

    The median is ``median``'s; nearness is |double(v) - double(median)|, a
    tie going to the smaller value; the chosen values are summed in ascending
    order in double, divided by beta and rounded to float32. NaN in a column
    gives NaN."""

# ---- integrity --------------------------------------------------------------
def ring_fold(acc: npt.NDArray[np.int64], vals: npt.NDArray[np.float32], factor: float, limit: float,
              idx: npt.NDArray[np.uint32] | None = None, subtract: bool = False,
              assign: bool = False) -> tuple[int, int, float]:
    """acc[pos] += nearbyint(vals[i] * factor) modulo 2**64 in place (``subtract``: -=),
    pos = idx[i] (strictly ascending, < len(acc)) or i when idx is None (then
    len(vals) == len(acc)); ties round to even. ``assign`` (idx None only):
    acc[i] = (-)q without reading acc, the first fold into an empty sum; a
    refused assigning fold leaves acc undefined (still to be treated as empty).

    Returns (kind, index, sumsq): kind 0 = folded, sumsq = sum of vals[i]**2 in
    ``l2_norm``'s order; kind 1 = vals[index] is NaN/Inf; kind 2 =
    |vals[index] * factor| > limit. On kind 1 or 2 acc is left unchanged
    (unless ``assign``).
    factor must be finite and > 0, limit in (0, 9.2e18]. Same bits for any
    thread count."""
def ring_mean(acc: npt.NDArray[np.int64], out: npt.NDArray[np.float32], inv: float,
              coverage: npt.NDArray[np.int64] | None = None) -> None:
    """out[i] = float32(double(acc[i]) * inv), or with coverage
    float32(double(acc[i]) / double(coverage[i])) where coverage[i] > 0 and 0
    elsewhere. All arrays have the same length; out must not overlap the others."""
def seed_sequence(parts: list[int]) -> int:
    """``numpy.random.SeedSequence(parts).generate_state(2, np.uint64)[0]``, bit for bit,
    for integers in [0, 2**64) (ValueError otherwise)."""

def crc32c(data: bytes | bytearray | memoryview | npt.NDArray[np.uint8], crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of the bytes, continuing from ``crc``; hardware
    instructions when the CPU has SSE4.2.

    Reflected polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF,
    so crc32c(b"123456789") == 0xE3069283 and
    crc32c(b, crc32c(a)) == crc32c(a + b) (like zlib.crc32). ``data`` is
    bytes, a bytearray, a 1-D contiguous memoryview of unsigned bytes (format
    "B"), or a 1-D C-contiguous uint8 array; view other arrays as bytes first,
    e.g. ``arr.ravel().view(np.uint8)`` for a contiguous arr."""
