"""Plain NumPy / pure-Python references for the kernels in ``fedhpc._kernels``.

Each function follows the contract in ``src/fedhpc/_kernels.pyi`` literally and
is written for clarity, not speed. The tests compare the compiled kernels
against these, so nothing here may import ``fedhpc``.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
U32 = np.uint32
U64 = np.uint64
QMAX = {8: 127, 4: 7}


# ---- bit-level helpers -------------------------------------------------------
def bits32(x: np.ndarray) -> np.ndarray:
    """The uint32 bit patterns of a float32 array."""
    return np.ascontiguousarray(x, dtype=F32).view(U32)


def f32_from_bits(b) -> np.ndarray:
    return np.asarray(b, dtype=U32).view(F32)


def assert_same_floats(got, want, err_msg: str = "") -> None:
    """Bit-exact equality of float arrays, except that any NaN matches any NaN
    (NaN payloads are not part of the contract). Distinguishes -0.0 from 0.0."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    nan_g, nan_w = np.isnan(got), np.isnan(want)
    np.testing.assert_array_equal(nan_g, nan_w, err_msg=f"NaN positions differ {err_msg}")
    uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[got.dtype.itemsize]
    g, w = got[~nan_g].view(uint), want[~nan_w].view(uint)
    bad = np.flatnonzero(g != w)
    if bad.size:
        i = bad[0]
        raise AssertionError(
            f"{bad.size} of {g.size} values differ {err_msg}; first at non-NaN position {i}: "
            f"got {got[~nan_g][i]!r} ({int(g[i]):#x}), want {want[~nan_w][i]!r} ({int(w[i]):#x})"
        )


# ---- casts -------------------------------------------------------------------
def to_fp16(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(x, dtype=F32).astype(np.float16).view(np.uint16)


def from_fp16(h: np.ndarray) -> np.ndarray:
    return np.asarray(h, dtype=np.uint16).view(np.float16).astype(F32)


def to_bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even on the raw bits; NaN -> quiet NaN with its sign."""
    b = bits32(x).astype(np.uint64)  # headroom: no wrap on the rounding add
    rounded = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    quiet_nan = (b >> 16) | 0x0040
    return np.where(np.isnan(x), quiet_nan, rounded).astype(np.uint16)


def from_bf16(h: np.ndarray) -> np.ndarray:
    return (np.asarray(h, dtype=np.uint16).astype(U32) << 16).view(F32)


# ---- counter-based uniforms ----------------------------------------------------
GOLDEN = 0x9E3779B97F4A7C15


def splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 output function (finaliser) on uint64, wrapping."""
    z = np.asarray(z, dtype=U64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> U64(30))) * U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> U64(27))) * U64(0x94D049BB133111EB)
    return z ^ (z >> U64(31))


def uniform(seed: int, n: int) -> np.ndarray:
    """u[i] = (splitmix64(seed + (i + 1) * GOLDEN) >> 40) * 2**-24, all mod 2**64."""
    i1 = np.arange(1, n + 1, dtype=U64)
    with np.errstate(over="ignore"):
        z = np.full(n, seed % 2**64, dtype=U64) + i1 * U64(GOLDEN)
    return ((splitmix64(z) >> U64(40)).astype(np.float64) * 2.0**-24).astype(F32)


# ---- blockwise quantization ----------------------------------------------------
def quantize(x, bits: int, block: int, stochastic: bool = False, seed: int = 0):
    """Returns (codes, scales) exactly as the kernel must, all in float32."""
    x = np.asarray(x).astype(F32)
    n, qmax = x.size, QMAX[bits]
    nblocks = -(-n // block)
    q = np.zeros(n, dtype=np.int32)
    scales = np.zeros(nblocks, dtype=F32)
    u = uniform(seed, n) if stochastic else None
    for b in range(nblocks):
        lo, hi = b * block, min(n, (b + 1) * block)
        xb = x[lo:hi]
        if not np.all(np.isfinite(xb)):
            scales[b] = np.nan  # codes stay 0
            continue
        absmax = np.max(np.abs(xb))
        if absmax == 0:
            continue  # scale 0, codes 0
        scales[b] = absmax / F32(qmax)
        inv = F32(qmax) / absmax
        t = xb * inv  # float32 multiply
        qb = np.floor(t + u[lo:hi]) if stochastic else np.rint(t)  # float32 add
        q[lo:hi] = np.clip(qb, -qmax, qmax).astype(np.int32)
    return pack_codes(q, bits), scales


def pack_codes(q: np.ndarray, bits: int) -> np.ndarray:
    """int8: the two's complement byte; int4: q+8 nibbles, even index low."""
    q = np.asarray(q, dtype=np.int32)
    if bits == 8:
        return q.astype(np.int8).view(np.uint8)
    nib = (q + 8).astype(np.uint8)
    if nib.size % 2:
        nib = np.append(nib, np.uint8(0))  # odd n: last high nibble is 0
    return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8)


def unpack_codes(codes: np.ndarray, n: int, bits: int) -> np.ndarray:
    codes = np.asarray(codes, dtype=np.uint8)
    if bits == 8:
        return codes[:n].view(np.int8).astype(np.int32)
    nib = np.empty(2 * codes.size, dtype=np.int32)
    nib[0::2], nib[1::2] = codes & 0xF, codes >> 4
    return nib[:n] - 8


def dequantize(codes, scales, n: int, bits: int, block: int) -> np.ndarray:
    q = unpack_codes(codes, n, bits).astype(F32)
    with np.errstate(over="ignore", invalid="ignore"):
        return q * np.repeat(np.asarray(scales, dtype=F32), block)[:n]


# ---- sparsification ------------------------------------------------------------
def topk(x: np.ndarray, k: int):
    """Largest k of the bit pattern of |x|, ties -> lower index; indices ascending."""
    key = (bits32(x) & U32(0x7FFFFFFF)).astype(np.int64)
    order = np.lexsort((np.arange(x.size), -key))  # last key is primary
    idx = np.sort(order[:k]).astype(U32)
    return idx, x[idx]


def topk_ef(update: np.ndarray, residual: np.ndarray, k: int):
    """Returns (idx, vals, residual_after) without touching the inputs."""
    r = residual + update
    idx, vals = topk(r, k)
    r[idx] = 0
    return idx, vals, r


# ---- Golomb-Rice index coding ----------------------------------------------------
def rice_encode(idx, b: int) -> bytes:
    bitstr = []
    prev = -1
    for i in (int(v) for v in idx):
        gap = i - prev - 1
        prev = i
        bitstr.append("1" * (gap >> b) + "0" + (format(gap & ((1 << b) - 1), f"0{b}b") if b else ""))
    s = "".join(bitstr)
    s += "0" * (-len(s) % 8)
    return bytes(int(s[j : j + 8], 2) for j in range(0, len(s), 8))


def rice_decode(buf: bytes, k: int, b: int) -> np.ndarray:
    """Decoder for valid streams only (used to cross-check the reference encoder)."""
    s = "".join(format(byte, "08b") for byte in buf)
    pos, prev, out = 0, -1, []
    for _ in range(k):
        ones = s.index("0", pos) - pos
        pos += ones + 1
        low = int(s[pos : pos + b], 2) if b else 0
        pos += b
        prev = prev + 1 + ((ones << b) | low)
        out.append(prev)
    return np.array(out, dtype=U32)


def rice_bits(idx: np.ndarray, b: int) -> int:
    """Length in bits of the Rice code of ``idx`` with parameter ``b``."""
    idx = np.asarray(idx, dtype=np.int64)
    gaps = np.diff(idx, prepend=-1) - 1
    return int(np.sum(gaps >> b) + idx.size * (1 + b))


# ---- aggregation -----------------------------------------------------------------
def axpy(acc: np.ndarray, x: np.ndarray, w: float) -> np.ndarray:
    """In float64 (the kernel is compared with a float32-sized tolerance)."""
    return (acc.astype(np.float64) + w * np.asarray(x).astype(np.float64)).astype(F32)


def sparse_axpy(acc: np.ndarray, idx: np.ndarray, vals: np.ndarray, w: float) -> np.ndarray:
    out = acc.astype(np.float64)
    out[idx] += w * vals.astype(np.float64)
    return out.astype(F32)


def median(stack: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # two middle values near FLT_MAX average to Inf, as in numpy
        return np.median(stack, axis=0).astype(F32)


def trimmed_mean(stack: np.ndarray, trim: int) -> np.ndarray:
    K = stack.shape[0]
    kept = np.sort(stack.astype(np.float64), axis=0)[trim : K - trim]
    out = kept.mean(axis=0)
    out[np.isnan(stack).any(axis=0)] = np.nan  # NaN even if it would be trimmed
    return out.astype(F32)


def l2_norm(x: np.ndarray) -> float:
    return float(np.sqrt(np.sum(np.square(x.astype(np.float64)))))


def sq_dists(stack: np.ndarray) -> np.ndarray:
    s = stack.astype(np.float64)
    return np.array([[np.sum((a - b) ** 2) for b in s] for a in s]).reshape(len(s), len(s))


def sq_dists_to(stack: np.ndarray, point: np.ndarray) -> np.ndarray:
    return np.sum((stack.astype(np.float64) - point.astype(np.float64)) ** 2, axis=1)


def closest_mean(stack: np.ndarray, beta: int) -> np.ndarray:
    """Per column: the beta values nearest the float32 median (ties: the smaller value), their mean."""
    med = median(stack)
    out = np.empty(stack.shape[1], F32)
    for c in range(stack.shape[1]):
        col = stack[:, c].astype(np.float64)
        if np.isnan(col).any():
            out[c] = np.nan
            continue
        chosen = col[np.lexsort((col, np.abs(col - np.float64(med[c]))))[:beta]]
        out[c] = F32(np.sum(np.sort(chosen)) / beta)
    return out


# ---- integrity -------------------------------------------------------------------
CRC32C_POLY = 0x82F63B78  # reflected Castagnoli polynomial


def crc32c(data, crc: int = 0) -> int:
    """Bitwise CRC-32C, continuing from a previous result ``crc``."""
    crc ^= 0xFFFFFFFF
    for byte in bytes(data):
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (CRC32C_POLY & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def assert_arrays_identical(got, want) -> None:
    """Same dtype, same shape, equal elements (for integer / code arrays)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(got, want)


# ---- the fixed-point ring ------------------------------------------------------
def ring_fold(acc: np.ndarray, vals: np.ndarray, factor: float, limit: float, idx=None, subtract=False):
    """(kind, index, new acc) per the ``ring_fold`` contract, with Python integers modulo 2**64."""
    pos = range(vals.size) if idx is None else [int(i) for i in idx]
    out = [int(a) for a in acc]
    for i, p in enumerate(pos):
        v = float(vals[i])
        if not np.isfinite(v):
            return 1, i, acc.copy()
        y = v * factor
        if abs(y) > limit:
            return 2, i, acc.copy()
        q = int(np.rint(y))  # numpy's rint rounds ties to even, as nearbyint does
        out[p] = out[p] - q if subtract else out[p] + q
    wrapped = [((a + (1 << 63)) % (1 << 64)) - (1 << 63) for a in out]
    return 0, vals.size, np.array(wrapped, dtype=np.int64)


def ring_mean(acc: np.ndarray, inv: float, coverage=None) -> np.ndarray:
    if coverage is None:
        return (acc.astype(np.float64) * inv).astype(F32)
    out = np.zeros(acc.size, dtype=F32)
    pos = coverage > 0
    out[pos] = (acc[pos].astype(np.float64) / coverage[pos].astype(np.float64)).astype(F32)
    return out
