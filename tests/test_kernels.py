"""The compiled kernels (``fedhpc._kernels``) against the NumPy references in
``tests/reference.py``, following the contract in ``src/fedhpc/_kernels.pyi``.

Bit-exact where the contract fixes the arithmetic (casts, quantization codes and
scales, top-k, Rice coding, CRC, the uniforms), tight tolerances where only the
summation order is free (means, norms, distances).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import reference as R
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedhpc import _kernels as K

pytestmark = pytest.mark.unit

F32, F16, U8, U16, U32 = np.float32, np.float16, np.uint8, np.uint16, np.uint32
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = st.integers(0, 2**63 - 1)
EMPTY = np.zeros(0, F32)
# aggregation weights; float32-representable, so float32 and double kernels agree
WEIGHTS = st.floats(-10, 10, width=32, allow_subnormal=False)


# ---- strategies and helpers ------------------------------------------------------
def floats32(max_abs: float | None = None) -> st.SearchStrategy:
    """Finite float32 values, mixed with a few repeated ones so ties are common."""
    kw = {}
    if max_abs is not None:
        kw = dict(min_value=-float(F32(max_abs)), max_value=float(F32(max_abs)))
    any_float = st.floats(width=32, allow_nan=False, allow_infinity=False, **kw)
    return any_float | st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, -2.0])


def f32_arrays(max_size: int = 300, max_abs: float | None = None, min_size: int = 0):
    return hnp.arrays(F32, st.integers(min_size, max_size), elements=floats32(max_abs))


def stacks(max_k: int = 9, max_n: int = 40, max_abs: float | None = None):
    shape = st.tuples(st.integers(1, max_k), st.integers(0, max_n))
    return hnp.arrays(F32, shape, elements=floats32(max_abs))


def no_tiny(x: np.ndarray) -> np.ndarray:
    """Zero out |x| < 1e-30. A block whose absmax is below qmax / FLT_MAX makes the
    contract's float32 ``inv = qmax / absmax`` overflow (see test_quantize_tiny_block)."""
    x = np.array(x)
    x[np.abs(x.astype(F32)) < 1e-30] = 0
    return x


def strided(a: np.ndarray) -> np.ndarray:
    """The same values as ``a`` (1-D) in a non-contiguous view."""
    s = np.zeros(2 * a.size, a.dtype)
    s[::2] = a
    return s[::2]


def random_bit_patterns(n: int, seed: int = 0) -> np.ndarray:
    """Float32 values with uniformly random bit patterns (NaN, Inf, subnormal...)."""
    return np.random.default_rng(seed).integers(0, 2**32, n, dtype=np.uint64).astype(U32).view(F32)


def sorted_subset(n: int, k: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False)).astype(U32)


def same_result(a, b) -> bool:
    """Bit-exact equality of kernel results (arrays, floats, ints or tuples of them)."""
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same_result(x, y) for x, y in zip(a, b))
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture
def threads():
    """Lets a test change the thread count; restores it afterwards."""
    before = K.get_num_threads()
    yield K.set_num_threads
    K.set_num_threads(before)


# ---- runtime queries -------------------------------------------------------------
def test_set_get_num_threads(threads):
    for n in (1, 3, 2):
        threads(n)
        assert K.get_num_threads() == n
    with pytest.raises(ValueError):
        threads(0)


def test_cuda_queries_are_consistent():
    count, built = K.cuda_device_count(), K.built_with_cuda()
    assert isinstance(count, int) and isinstance(built, bool) and count >= 0
    if not built:
        assert count == 0


# ---- casts -----------------------------------------------------------------------
ALL_U16 = np.arange(2**16, dtype=np.uint32).astype(U16)
CAST_SPECIALS = np.array(
    [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 65504.0, 65519.99, 65520.0, -65520.0, 2.0**-24,
     2.0**-25, 3 * 2.0**-25, 2.0**-14, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 3 * 2.0**-8,
     np.finfo(F32).max, -np.finfo(F32).max, np.finfo(F32).tiny, 1e-45, -1e-45, 3.3895314e38],
    dtype=F32,
)
CAST_INPUTS = np.concatenate([CAST_SPECIALS, random_bit_patterns(1 << 18)])


@pytest.mark.parametrize(
    "kernel, ref", [(K.from_fp16, R.from_fp16), (K.from_bf16, R.from_bf16)], ids=["fp16", "bf16"]
)
def test_from_half_exhaustive(kernel, ref):
    R.assert_same_floats(kernel(ALL_U16), ref(ALL_U16))


def test_to_fp16_matches_numpy():
    got, want = K.to_fp16(CAST_INPUTS), R.to_fp16(CAST_INPUTS)
    nan = np.isnan(CAST_INPUTS)
    R.assert_arrays_identical(got[~nan], want[~nan])
    assert np.all(np.isnan(got[nan].view(F16))), "NaN must stay NaN"


def test_to_bf16_round_to_nearest_even():
    got, want = K.to_bf16(CAST_INPUTS), R.to_bf16(CAST_INPUTS)
    nan = np.isnan(CAST_INPUTS)
    R.assert_arrays_identical(got[~nan], want[~nan])
    assert np.all(np.isnan(R.from_bf16(got[nan]))), "NaN must stay NaN"
    assert np.all(got[nan] & 0x0040), "NaN must become a quiet NaN"
    np.testing.assert_array_equal(got[nan] >> 15, R.bits32(CAST_INPUTS[nan]) >> 31, "NaN sign")


@PROPERTY
@given(x=f32_arrays())
@example(x=EMPTY)
def test_casts_small_arrays(x):
    R.assert_arrays_identical(K.to_fp16(x), R.to_fp16(x))
    R.assert_arrays_identical(K.to_bf16(x), R.to_bf16(x))
    R.assert_same_floats(K.from_fp16(R.to_fp16(x)), R.from_fp16(R.to_fp16(x)))
    R.assert_same_floats(K.from_bf16(R.to_bf16(x)), R.from_bf16(R.to_bf16(x)))


# ---- uniforms and blockwise quantization ---------------------------------------------
@PROPERTY
@given(seed=SEEDS, n=st.integers(0, 2000))
def test_uniform_matches_splitmix64_formula(seed, n):
    u = K.uniform(seed, n)
    R.assert_same_floats(u, R.uniform(seed, n))
    assert np.all((u >= 0) & (u < 1))


def test_uniform_full_uint64_seed():
    R.assert_same_floats(K.uniform(2**64 - 1, 100), R.uniform(2**64 - 1, 100))


def check_quantize(x, bits, block, stochastic, seed):
    codes, scales = K.quantize(x, bits, block, stochastic, seed)
    want_codes, want_scales = R.quantize(x, bits, block, stochastic, seed)
    R.assert_arrays_identical(codes, want_codes)
    R.assert_same_floats(scales, want_scales)
    n = x.size
    R.assert_same_floats(K.dequantize(codes, scales, n, bits, block), R.dequantize(codes, scales, n, bits, block))
    return codes, scales


@PROPERTY
@given(
    x=f32_arrays(),
    bits=st.sampled_from([8, 4]),
    block=st.sampled_from([1, 2, 3, 7, 32, 64, 1000]),
    stochastic=st.booleans(),
    seed=SEEDS,
)
@example(x=EMPTY, bits=4, block=3, stochastic=True, seed=1)
def test_quantize_matches_reference(x, bits, block, stochastic, seed):
    check_quantize(no_tiny(x), bits, block, stochastic, seed)


@PROPERTY
@given(
    x=hnp.arrays(F16, st.integers(0, 200), elements=st.floats(width=16, allow_nan=False, allow_infinity=False)),
    bits=st.sampled_from([8, 4]),
    stochastic=st.booleans(),
    seed=SEEDS,
)
def test_quantize_float16_input(x, bits, stochastic, seed):
    codes, scales = K.quantize(x, bits, 16, stochastic, seed)
    want_codes, want_scales = R.quantize(x.astype(F32), bits, 16, stochastic, seed)
    R.assert_arrays_identical(codes, want_codes)
    R.assert_same_floats(scales, want_scales)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("n, block", [(1, 1), (7, 1), (7, 3), (9, 2), (33, 32), (1001, 64), (5, 1000), (4096, 256)])
def test_quantize_shapes(n, block, bits, stochastic):
    x = np.random.default_rng(n).standard_normal(n).astype(F32)
    codes, scales = check_quantize(x, bits, block, stochastic, seed=n)
    assert codes.shape == ((n if bits == 8 else (n + 1) // 2),)
    assert scales.shape == (-(-n // block),)
    if bits == 4 and n % 2:
        assert codes[-1] >> 4 == 0, "odd n: the last high nibble must be 0"


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("stochastic", [False, True])
def test_quantize_nonfinite_and_zero_blocks(bits, stochastic):
    block = 4
    x = np.array(
        [1, np.nan, 2, 3,  # NaN block
         -np.inf, 0, 0, 0,  # Inf block
         np.inf, 1, 1, 1,
         0, -0.0, 0, 0,  # zero block
         0.5, -1, 0.25, 2],  # ordinary block
        dtype=F32,
    )
    codes, scales = check_quantize(x, bits, block, stochastic, seed=3)
    assert np.all(np.isnan(scales[:3])) and scales[3] == 0 and scales[4] == F32(2) / F32(R.QMAX[bits])
    np.testing.assert_array_equal(R.unpack_codes(codes, x.size, bits)[:16], 0)
    y = K.dequantize(codes, scales, x.size, bits, block)
    assert np.all(np.isnan(y[:12])) and np.all(np.isfinite(y[12:]))
    R.assert_same_floats(y[12:16], np.zeros(4, F32))


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("stochastic", [False, True])
def test_quantize_tiny_block_codes_stay_in_range(bits, stochastic):
    """absmax of 1e-38 overflows inv = qmax/absmax in float32; the codes must still be
    valid clipped values (the contract leaves their exact values open)."""
    x = np.array([1e-38, 0, -5e-39, 1e-45, 0, 0], F32)
    codes, scales = K.quantize(x, bits, 3, stochastic, 5)
    assert np.all(np.isfinite(scales))
    if bits == 8:
        assert not np.any(codes == 0x80), "int8 code -128 is out of range"
    else:
        nibbles = np.stack([codes & 0xF, codes >> 4], 1).ravel()
        assert np.all((nibbles >= 1) & (nibbles <= 15))


@PROPERTY
@given(
    x=f32_arrays(max_abs=1e30, min_size=1),
    bits=st.sampled_from([8, 4]),
    block=st.sampled_from([1, 3, 32]),
    stochastic=st.booleans(),
    seed=SEEDS,
)
def test_dequantize_round_trip_error(x, bits, block, stochastic, seed):
    """|x - dequantize(quantize(x))| <= scale/2 (nearest) or < scale (stochastic),
    up to float32 rounding of inv, x*inv, x*inv + u and q*scale."""
    x = no_tiny(x)
    codes, scales = K.quantize(x, bits, block, stochastic, seed)
    y = K.dequantize(codes, scales, x.size, bits, block)
    bound = np.repeat(scales, block)[: x.size].astype(np.float64) * ((1.0 if stochastic else 0.5) + 1e-4)
    err = np.abs(y.astype(np.float64) - x)
    assert np.all(err <= bound), (x[err > bound], y[err > bound])


def test_stochastic_rounding_is_unbiased():
    x = np.linspace(-1, 1, 97, dtype=F32)  # absmax 1, int4: scale 1/7
    n_seeds = 2000
    mean = np.zeros(x.size)
    for seed in range(n_seeds):
        codes, scales = K.quantize(x, 4, x.size, True, seed)
        mean += K.dequantize(codes, scales, x.size, 4, x.size)
    mean /= n_seeds
    tol = 5 * (1 / 7) / 2 / np.sqrt(n_seeds)  # 5 sigma of a mean of Bernoulli * scale
    assert np.max(np.abs(mean - x)) < tol
    codes, scales = K.quantize(x, 4, x.size)
    nearest = K.dequantize(codes, scales, x.size, 4, x.size)
    assert np.max(np.abs(nearest - x)) > 2 * tol, "the test must be able to see a rounding bias"


def test_quantize_seed_semantics():
    x = np.random.default_rng(0).standard_normal(4096).astype(F32)
    a, b, c = (K.quantize(x, 8, 64, True, s) for s in (7, 7, 8))
    assert same_result(a, b)
    assert not np.array_equal(a[0], c[0])
    assert same_result(K.quantize(x, 8, 64, False, 7), K.quantize(x, 8, 64, False, 8))


@pytest.mark.parametrize(
    "call",
    [
        lambda: K.quantize(np.ones(8, F32), 2, 4),
        lambda: K.quantize(np.ones(8, F32), 16, 4),
        lambda: K.quantize(np.ones(8, F32), 8, 0),
        lambda: K.dequantize(np.zeros(7, U8), np.ones(2, F32), 8, 8, 4),  # codes too short
        lambda: K.dequantize(np.zeros(3, U8), np.ones(2, F32), 8, 4, 4),  # int4 codes too short
        lambda: K.dequantize(np.zeros(8, U8), np.ones(1, F32), 8, 8, 4),  # scales too short
        lambda: K.dequantize(np.zeros(8, U8), np.ones(2, F32), 8, 3, 4),  # bits
        lambda: K.dequantize(np.zeros(8, U8), np.ones(2, F32), 8, 8, 0),  # block
    ],
)
def test_quantize_bad_parameters(call):
    with pytest.raises(ValueError):
        call()


# ---- top-k, error feedback, rand-k, gather ------------------------------------------
def check_topk(x, k):
    idx, vals = K.topk(x, k)
    want_idx, want_vals = R.topk(x, k)
    R.assert_arrays_identical(idx, want_idx)
    R.assert_arrays_identical(vals.view(U32), want_vals.view(U32))


@PROPERTY
@given(x=f32_arrays(), data=st.data())
@example(x=EMPTY, data=None)
def test_topk_matches_reference(x, data):
    k = data.draw(st.integers(0, x.size)) if data is not None else 0
    check_topk(x, k)


@pytest.mark.parametrize(
    "x, k, want_idx",
    [
        (np.full(10, 3.0, F32), 4, [0, 1, 2, 3]),  # all equal: lowest indices
        (np.array([-2, 2, -2, 2, 1], F32), 3, [0, 1, 2]),  # equal magnitudes, both signs
        (np.array([0.0, -0.0, 0.0], F32), 2, [0, 1]),  # -0 ties with +0
        (np.array([1, -np.inf, 5, np.nan, np.inf, -7], F32), 3, [1, 3, 4]),  # NaN > Inf > finite
        (np.array([3, 1, 2], F32), 3, [0, 1, 2]),  # k = n
        (np.array([3, 1, 2], F32), 0, []),  # k = 0
    ],
)
def test_topk_edge_cases(x, k, want_idx):
    idx, vals = K.topk(x, k)
    R.assert_arrays_identical(idx, np.array(want_idx, U32))
    R.assert_arrays_identical(vals.view(U32), x[idx].view(U32))
    check_topk(x, k)


def test_topk_nan_ranked_by_bit_pattern():
    x = R.f32_from_bits([0x7FC00001, 0xFFC00002, 0x7F800000, 0x7FC00000, 0x3F800000])
    for k in range(6):
        check_topk(x, k)
    assert K.topk(x, 1)[0].tolist() == [1]  # |-NaN(payload 2)| has the largest bit pattern


@pytest.mark.parametrize("k", [1, 1000, (1 << 20) // 3, (1 << 20) + 2])
def test_topk_large_with_many_ties(k):
    x = np.random.default_rng(k).integers(-50, 51, (1 << 20) + 3).astype(F32)
    check_topk(x, k)


def test_topk_k_greater_than_n():
    with pytest.raises(ValueError):
        K.topk(np.ones(5, F32), 6)


@PROPERTY
@given(data=st.data(), n=st.integers(0, 200))
def test_topk_ef_matches_reference(data, n):
    update = data.draw(hnp.arrays(F32, n, elements=floats32(1e30)))
    residual = data.draw(hnp.arrays(F32, n, elements=floats32(1e30)))
    k = data.draw(st.integers(0, n))
    want_idx, want_vals, want_residual = R.topk_ef(update, residual, k)
    idx, vals = K.topk_ef(update, residual, k)  # updates residual in place
    R.assert_arrays_identical(idx, want_idx)
    R.assert_same_floats(vals, want_vals)
    R.assert_same_floats(residual, want_residual)


def test_topk_ef_error_feedback_transmits_all_mass():
    rng = np.random.default_rng(1)
    n, k = 1000, 25
    residual = np.zeros(n, F32)
    sent, total = np.zeros(n), np.zeros(n)
    for step in range(200):
        update = rng.standard_normal(n).astype(F32) if step < 40 else np.zeros(n, F32)
        total += update
        idx, vals = K.topk_ef(update, residual, k)
        sent[idx] += vals
        np.testing.assert_allclose(sent + residual, total, atol=1e-3)  # nothing is lost
    assert np.all(residual == 0), "after the updates stop, the residual drains to zero"
    np.testing.assert_allclose(sent, total, atol=1e-3)


@pytest.mark.parametrize(
    "residual",
    [np.zeros(9, F32), np.zeros(11, F32), np.zeros(10), strided(np.zeros(10, F32))],
    ids=["short", "long", "float64", "strided"],
)
def test_topk_ef_bad_residual(residual):
    before = residual.copy()
    with pytest.raises(ValueError):
        K.topk_ef(np.ones(10, F32), residual, 3)
    np.testing.assert_array_equal(residual, before)


@PROPERTY
@given(data=st.data(), n=st.integers(0, 100_000), seed=SEEDS)
def test_randk_indices_properties(data, n, seed):
    k = data.draw(st.integers(0, min(n, 5000)))
    idx = K.randk_indices(n, k, seed)
    assert idx.dtype == U32 and idx.shape == (k,)
    assert np.all(np.diff(idx.astype(np.int64)) > 0), "distinct and ascending"
    assert k == 0 or idx[-1] < n
    R.assert_arrays_identical(K.randk_indices(n, k, seed), idx)


@pytest.mark.parametrize("n, k", [(0, 0), (10, 0), (1, 1), (10, 10), (1000, 1000)])
def test_randk_edge_cases(n, k):
    R.assert_arrays_identical(K.randk_indices(n, k, 3), np.arange(k, dtype=U32))


def test_randk_k_greater_than_n():
    with pytest.raises(ValueError):
        K.randk_indices(5, 6, 0)


def test_randk_seed_changes_the_sample():
    samples = {K.randk_indices(1000, 100, seed).tobytes() for seed in range(50)}
    assert len(samples) == 50


@pytest.mark.parametrize("n, k", [(20, 1), (20, 5), (20, 10), (20, 15), (20, 19), (500, 3)])
def test_randk_uniform_coverage(n, k):
    """Every index is drawn with probability k/n (chi-square-like, generous bound)."""
    n_seeds = 4000
    counts = np.zeros(n)
    for seed in range(n_seeds):
        counts[K.randk_indices(n, k, seed)] += 1
    p = k / n
    stat = np.sum((counts - n_seeds * p) ** 2) / (n_seeds * p * (1 - p))
    assert stat < (n - 1) + 8 * np.sqrt(2 * (n - 1)), stat


@pytest.mark.parametrize("n, k", [(10**6, 10**4), (10**5, 9 * 10**4), (2**32 - 1, 10**4)])
def test_randk_large_spread(n, k):
    """Sparse and dense samples spread evenly over 50 equal bins."""
    idx = K.randk_indices(n, k, 11)
    counts = np.bincount(idx.astype(np.int64) * 50 // n, minlength=50)
    p = k / n
    expected, var = k / 50, (n / 50) * p * (1 - p)
    assert np.sum((counts - expected) ** 2 / var) < 49 + 8 * np.sqrt(98)


@PROPERTY
@given(x=f32_arrays(min_size=1), data=st.data())
def test_gather_matches_numpy(x, data):
    idx = data.draw(hnp.arrays(U32, st.integers(0, 50), elements=st.integers(0, x.size - 1)))
    R.assert_arrays_identical(K.gather(x, idx).view(U32), x[idx].view(U32))


@pytest.mark.parametrize("idx", [[10], [0, 3, 2**32 - 1]])
def test_gather_out_of_range(idx):
    with pytest.raises(ValueError):
        K.gather(np.ones(10, F32), np.array(idx, U32))


# ---- Rice coding ------------------------------------------------------------------
@st.composite
def index_sets(draw, max_n=3000, max_k=200):
    n = draw(st.integers(1, max_n))
    idx = draw(st.sets(st.integers(0, n - 1), max_size=min(n, max_k)))
    return n, np.array(sorted(idx), dtype=U32)


@PROPERTY
@given(nidx=index_sets(), b=st.integers(0, 12))
def test_rice_matches_reference(nidx, b):
    n, idx = nidx
    enc = K.rice_encode(idx, b)
    want = R.rice_encode(idx, b)
    R.assert_arrays_identical(enc, np.frombuffer(want, U8))
    R.assert_arrays_identical(K.rice_decode(enc, idx.size, n, b), idx)
    R.assert_arrays_identical(K.rice_decode(want, idx.size, n, b), idx)  # bytes input


@pytest.mark.parametrize(
    "idx, b, n",
    [
        ([], 0, 1),  # k = 0
        ([], 5, 0),
        ([0], 0, 1),
        (list(range(100)), 0, 100),  # k = n: all gaps 0
        ([0, 2**32 - 2], 31, 2**32 - 1),  # largest gap and parameter
        ([2**32 - 2], 31, 2**32 - 1),
        ([7, 8, 9, 1000], 7, 1001),
    ],
)
def test_rice_edge_cases(idx, b, n):
    idx = np.array(idx, U32)
    enc = K.rice_encode(idx, b)
    R.assert_arrays_identical(enc, np.frombuffer(R.rice_encode(idx, b), U8))
    R.assert_arrays_identical(K.rice_decode(enc, idx.size, n, b), idx)


def test_reference_rice_coder_round_trips():
    idx = sorted_subset(5000, 300, 0)
    for b in (0, 3, 8):
        R.assert_arrays_identical(R.rice_decode(R.rice_encode(idx, b), idx.size, b), idx)


@pytest.mark.parametrize("n, k", [(10**6, 10**4), (10**6, 1), (4096, 4096), (10**7, 123)])
def test_rice_large_round_trip_with_rice_param(n, k):
    idx = sorted_subset(n, k, k)
    b = K.rice_param(n, k)
    enc = K.rice_encode(idx, b)
    assert enc.size == -(-R.rice_bits(idx, b) // 8)
    R.assert_arrays_identical(K.rice_decode(enc, k, n, b), idx)


@pytest.mark.parametrize("n, k", [(1, 1), (10, 1), (10, 10), (1000, 7), (10**6, 1), (10**6, 10**3), (2**32 - 1, 5)])
def test_rice_param_in_range(n, k):
    b = K.rice_param(n, k)
    assert isinstance(b, int) and 0 <= b <= 31


@pytest.mark.parametrize("n, k", [(10**6, 10), (10**6, 10**3), (10**6, 10**5), (10**5, 25_000), (10**4, 10**3)])
def test_rice_param_is_near_optimal(n, k):
    """A quality check: the chosen b codes a uniform random index set almost as
    compactly as the best b (within 25 %)."""
    idx = sorted_subset(n, k, 1)
    best = min(R.rice_bits(idx, b) for b in range(32))
    assert R.rice_bits(idx, K.rice_param(n, k)) <= 1.25 * best + 8


@pytest.mark.parametrize(
    "idx, b",
    [([3, 2], 2), ([1, 1], 2), ([0, 5, 4, 9], 0), ([1, 2], 32)],
    ids=["descending", "duplicate", "unsorted", "b=32"],
)
def test_rice_encode_bad_input(idx, b):
    with pytest.raises(ValueError):
        K.rice_encode(np.array(idx, U32), b)


RICE_IDX = np.array([3, 17, 18, 90, 200], U32)
RICE_ENC = R.rice_encode(RICE_IDX, 4)


@pytest.mark.parametrize(
    "buf, k, n, b",
    [
        (RICE_ENC[:-1], 5, 1000, 4),  # truncated
        (RICE_ENC, 7, 1000, 4),  # asks for more indices than the bits hold
        (RICE_ENC + b"\xff", 5, 1000, 4),  # trailing garbage
        (RICE_ENC, 5, 200, 4),  # index 200 >= n
        (b"\xff" * 16, 1, 10**6, 4),  # never-ending unary part
        (b"\xff", 0, 10, 4),  # k = 0 but bytes left
        (RICE_ENC, 5, 1000, 32),  # b out of range
    ],
    ids=["truncated", "k-too-large", "trailing", "index>=n", "all-ones", "k=0-trailing", "b=32"],
)
def test_rice_decode_rejects_bad_streams(buf, k, n, b):
    with pytest.raises(ValueError):
        K.rice_decode(buf, k, n, b)
    with pytest.raises(ValueError):
        K.rice_decode(np.frombuffer(buf, U8), k, n, b)


# ---- aggregation ------------------------------------------------------------------
def assert_axpy_close(got, acc, x, w, want):
    """Within two float32 roundings (of w*x and of the sum) of the float64 result."""
    assert got.dtype == F32 and got.shape == want.shape
    scale = np.abs(acc.astype(np.float64)) + np.abs(w * x.astype(np.float64))
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err <= 2**-22 * scale + 1e-44), (got[err > 2**-22 * scale], want[err > 2**-22 * scale])


@PROPERTY
@given(data=st.data(), n=st.integers(0, 300), w=WEIGHTS, half=st.booleans())
def test_axpy_matches_reference(data, n, w, half):
    acc = data.draw(hnp.arrays(F32, n, elements=floats32(1e30)))
    x = data.draw(hnp.arrays(F32, n, elements=floats32(65504 if half else 1e30)))
    if half:
        x = x.astype(F16)
    before, want = acc.copy(), R.axpy(acc, x, w)
    assert K.axpy(acc, x, w) is None
    assert_axpy_close(acc, before, x, w, want)


def test_axpy_exact_on_dyadic_values():
    acc = np.arange(-8, 8, dtype=F32)
    x = np.arange(16, dtype=F32)
    K.axpy(acc, x, 0.5)
    R.assert_same_floats(acc, np.arange(-8, 8, dtype=F32) + 0.5 * np.arange(16, dtype=F32))
    K.axpy(acc, x.astype(F16), -2.0)
    R.assert_same_floats(acc, np.arange(-8, 8, dtype=F32) - 1.5 * np.arange(16, dtype=F32))


@PROPERTY
@given(nidx=index_sets(max_n=500), w=WEIGHTS, data=st.data())
def test_sparse_axpy_matches_reference(nidx, w, data):
    n, idx = nidx
    acc = data.draw(hnp.arrays(F32, n, elements=floats32(1e30)))
    vals = data.draw(hnp.arrays(F32, idx.size, elements=floats32(1e30)))
    before, want = acc.copy(), R.sparse_axpy(acc, idx, vals, w)
    K.sparse_axpy(acc, idx, vals, w)
    dense_vals = np.zeros(n, F32)
    dense_vals[idx] = vals
    assert_axpy_close(acc, before, dense_vals, w, want)


@pytest.mark.parametrize(
    "idx, nvals",
    [([0, 1, 5, 3], 4), ([0, 2, 2], 3), ([1, 4, 10], 3), ([0, 2**32 - 1], 2), ([1, 2], 3)],
    ids=["unsorted", "duplicate", "index=n", "index=2**32-1", "length-mismatch"],
)
def test_sparse_axpy_bad_indices_leave_acc_untouched(idx, nvals):
    acc = np.zeros(10, F32)
    with pytest.raises(ValueError):
        K.sparse_axpy(acc, np.array(idx, U32), np.ones(nvals, F32), 1.0)
    assert np.all(acc == 0), "the arguments must be checked before writing"


@PROPERTY
@given(stack=stacks())
@example(stack=np.zeros((3, 0), F32))
def test_median_matches_numpy(stack):
    got = K.median(stack)
    assert got.dtype == F32 and got.shape == (stack.shape[1],)
    np.testing.assert_allclose(got, R.median(stack), rtol=2**-22, atol=3e-45)


@pytest.mark.parametrize("K_", [1, 2, 5, 6])
def test_median_nan_and_inf(K_):
    stack = np.ones((K_, 4), F32) * np.arange(K_, dtype=F32)[:, None]
    stack[0, 0] = np.nan
    stack[-1, 1] = np.inf
    stack[:, 2] = -np.inf
    got = K.median(np.ascontiguousarray(stack))
    want = R.median(stack)
    assert np.isnan(got[0])
    np.testing.assert_array_equal(got, want)


@PROPERTY
@given(stack=stacks(), data=st.data())
@example(stack=np.zeros((5, 0), F32), data=None)
def test_trimmed_mean_matches_reference(stack, data):
    K_ = stack.shape[0]
    trim = data.draw(st.integers(0, (K_ - 1) // 2)) if data is not None else 2
    got = K.trimmed_mean(stack, trim)
    assert got.dtype == F32 and got.shape == (stack.shape[1],)
    want = R.trimmed_mean(stack, trim)
    scale = np.max(np.abs(stack.astype(np.float64)), axis=0, initial=0)
    tol = 2**-23 * np.abs(want) + 1e-14 * scale + 1e-44  # one float32 rounding of a double sum
    assert np.all(np.abs(got.astype(np.float64) - want) <= tol)


def test_trimmed_mean_nan_and_inf():
    stack = np.array([[np.nan, np.inf, 1, np.inf], [1, 1, 2, 1], [2, 2, 3, -np.inf], [3, 3, 4, 1]], F32)
    got = K.trimmed_mean(stack, 1)
    R.assert_same_floats(got, R.trimmed_mean(stack, 1))
    assert np.isnan(got[0]), "NaN propagates even when it would be trimmed"
    assert got[1] == 2.5 and got[2] == 2.5 and got[3] == 1.0


@pytest.mark.parametrize("K_, trim", [(4, 2), (5, 3), (1, 1), (3, -1)])
def test_trimmed_mean_bad_trim(K_, trim):
    with pytest.raises((ValueError, TypeError)) as info:
        K.trimmed_mean(np.ones((K_, 3), F32), trim)
    if trim >= 0:
        assert info.type is ValueError


@PROPERTY
@given(x=f32_arrays())
@example(x=EMPTY)
def test_l2_norm_matches_reference(x):
    got = K.l2_norm(x)
    assert isinstance(got, float)
    assert got == pytest.approx(R.l2_norm(x), rel=1e-12, abs=0)


@pytest.mark.parametrize(
    "x, want",
    [
        ([3, 4], 5.0),
        ([3e38, 3e38, 3e38, 3e38], 6e38),  # finite thanks to the double accumulator
        ([1e-30] * 4, 2e-30),  # squares underflow float32 but not double
        ([1, np.inf], np.inf),
        ([1, -np.inf], np.inf),
        ([1, np.nan, np.inf], np.nan),
    ],
)
def test_l2_norm_special_values(x, want):
    got = K.l2_norm(np.array(x, F32))
    assert got == pytest.approx(want, rel=1e-7, nan_ok=True)


@PROPERTY
@given(stack=stacks(max_k=8, max_n=50, max_abs=1e15))
def test_sq_dists_matches_reference(stack):
    got = K.sq_dists(stack)
    want = R.sq_dists(stack)
    assert got.dtype == np.float64 and got.shape == want.shape
    norms = np.sum(stack.astype(np.float64) ** 2, axis=1)
    tol = 1e-12 * (norms[:, None] + norms[None, :]) + 1e-300
    assert np.all(np.abs(got - want) <= tol)


def test_sq_dists_small_example():
    stack = np.array([[0, 0], [3, 4], [1, 1]], F32)
    np.testing.assert_array_equal(K.sq_dists(stack), [[0, 25, 2], [25, 0, 13], [2, 13, 0]])


@PROPERTY
@given(stack=stacks(max_k=8, max_n=50, max_abs=1e15), data=st.data())
def test_sq_dists_to_matches_reference(stack, data):
    point = data.draw(hnp.arrays(F32, stack.shape[1], elements=floats32(1e15)))
    got = K.sq_dists_to(stack, point)
    want = R.sq_dists_to(stack, point)
    assert got.dtype == np.float64 and got.shape == (stack.shape[0],)
    scale = np.sum(stack.astype(np.float64) ** 2, axis=1) + np.sum(point.astype(np.float64) ** 2)
    assert np.all(np.abs(got - want) <= 1e-12 * scale + 1e-300)


def test_sq_dists_to_is_the_pairwise_row_across_chunks():
    """Over several 65,536-value chunks the distance to a row equals that row of sq_dists."""
    stack = np.random.default_rng(0).standard_normal((4, 200_003)).astype(F32)
    np.testing.assert_allclose(K.sq_dists_to(stack, stack[2]), K.sq_dists(stack)[2], rtol=1e-12)
    assert K.sq_dists_to(stack, stack[2])[2] == 0.0
    with pytest.raises(ValueError, match="point has 3 values"):
        K.sq_dists_to(stack, np.zeros(3, F32))


@PROPERTY
@given(stack=stacks(), data=st.data())
def test_closest_mean_matches_reference(stack, data):
    beta = data.draw(st.integers(1, stack.shape[0]))
    got = K.closest_mean(stack, beta)
    want = R.closest_mean(stack, beta)
    scale = np.max(np.abs(stack.astype(np.float64)), axis=0, initial=0)
    tol = 2**-23 * np.abs(want.astype(np.float64)) + 1e-14 * scale + 1e-44  # one float32 rounding of a double sum
    assert got.dtype == F32 and np.all(np.abs(got.astype(np.float64) - want) <= tol)


def test_closest_mean_edge_cases():
    # median 2 of [0, 1, 3, 10]... even count: (1 + 3) / 2 = 2; nearest two are 1 and 3 (a tie: both at 1)
    stack = np.array([[0, 5, 1, np.nan], [1, 5, 2, 1], [3, 5, 3, 2], [10, 5, 100, 3]], F32)
    got = K.closest_mean(stack, 2)
    assert got[0] == 2.0 and got[1] == 5.0 and got[2] == 2.5 and np.isnan(got[3])
    # a tie at the window's edge takes the smaller value: median 2 of [1, 2, 3], beta 2 -> 1 and 2
    assert K.closest_mean(np.array([[1], [2], [3]], F32), 2)[0] == 1.5
    assert K.closest_mean(np.array([[1], [2], [3]], F32), 3)[0] == 2.0  # beta = K: the mean
    for beta in (0, 5):
        with pytest.raises(ValueError, match="beta must satisfy"):
            K.closest_mean(np.ones((4, 3), F32), beta)


# ---- CRC-32C ------------------------------------------------------------------------
def test_crc32c_check_value():
    assert K.crc32c(b"123456789") == R.crc32c(b"123456789") == 0xE3069283
    assert K.crc32c(b"") == 0


@PROPERTY
@given(data=st.binary(max_size=300), crc=st.integers(0, 2**32 - 1))
def test_crc32c_matches_reference(data, crc):
    assert K.crc32c(data, crc) == R.crc32c(data, crc)


def test_crc32c_input_types_and_alignment():
    raw = np.random.default_rng(2).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    want = R.crc32c(raw)
    for buf in (raw, bytearray(raw), memoryview(raw), np.frombuffer(raw, U8)):
        assert K.crc32c(buf) == want
    for offset in range(1, 9):  # unaligned starts and every tail length
        view = memoryview(raw)[offset : offset + 100 + offset]
        assert K.crc32c(view) == R.crc32c(view)


@pytest.mark.parametrize("n", [3 * 4096 - 1, 3 * 4096, 3 * 4096 + 13, 6 * 4096 + 8])
def test_crc32c_of_interleaved_stripes_matches_reference(n):
    """Buffers long enough for the three-stripe path (and its tail), unaligned, with a starting crc."""
    raw = np.random.default_rng(n).integers(0, 256, n + 1, dtype=np.uint8).tobytes()
    view = memoryview(raw)[1:]
    assert K.crc32c(view, 0x1234567) == R.crc32c(view, 0x1234567)


def test_crc32c_continuation():
    raw = np.random.default_rng(3).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    whole = K.crc32c(raw)
    for cut in (0, 1, 7, 4096, len(raw) - 3, len(raw)):
        assert K.crc32c(raw[cut:], K.crc32c(raw[:cut])) == whole


# ---- argument checking -------------------------------------------------------------
def _variants(good: np.ndarray, *dtypes, writable: bool = False) -> dict:
    """Invalid versions of a valid argument: other dtypes, strided, wrong rank."""
    bad = {np.dtype(d).name: good.astype(d) for d in dtypes}
    if good.ndim == 1:
        bad["strided"] = strided(good)
        bad["2-D"] = good.reshape(1, -1)
    else:
        bad["strided"] = np.zeros((good.shape[0], 2 * good.shape[1]), good.dtype)[:, ::2]
        bad["fortran"] = np.asfortranarray(good)
        bad["1-D"] = good.ravel()
    if writable:
        bad["read-only"] = good.copy()
        bad["read-only"].flags.writeable = False
    return bad


_X = np.arange(1, 11, dtype=F32)  # 10 values
_IDX = np.array([1, 4, 7], U32)
_RICE = np.frombuffer(RICE_ENC, U8)
_STACK = np.arange(15, dtype=F32).reshape(3, 5)
# (name, call taking the argument under test, a valid argument, its invalid variants)
ARG_CASES = [
    ("to_fp16", K.to_fp16, _X, _variants(_X, np.float64, np.int32, F16)),
    ("to_bf16", K.to_bf16, _X, _variants(_X, np.float64, np.int32)),
    ("from_fp16", K.from_fp16, _X.astype(U16), _variants(_X.astype(U16), np.int16, U32, F16)),
    ("from_bf16", K.from_bf16, _X.astype(U16), _variants(_X.astype(U16), np.int16, U32)),
    ("quantize", lambda a: K.quantize(a, 8, 4), _X, _variants(_X, np.float64, np.int32)),
    ("quantize-stochastic", lambda a: K.quantize(a, 4, 4, True, 1), _X, _variants(_X, np.float64, np.int32)),
    ("dequantize-codes", lambda a: K.dequantize(a, np.ones(3, F32), 10, 8, 4), np.zeros(10, U8),
     _variants(np.zeros(10, U8), np.int8, U16)),
    ("dequantize-scales", lambda a: K.dequantize(np.zeros(10, U8), a, 10, 8, 5), np.ones(2, F32),
     _variants(np.ones(2, F32), np.float64)),
    ("topk", lambda a: K.topk(a, 3), _X, _variants(_X, np.float64, np.int32)),
    ("topk_ef-update", lambda a: K.topk_ef(a, np.zeros(10, F32), 3), _X, _variants(_X, np.float64, F16)),
    ("topk_ef-residual", lambda a: K.topk_ef(np.ones(10, F32), a, 3), _X,
     _variants(_X, np.float64, np.int32, writable=True)),
    ("gather-x", lambda a: K.gather(a, _IDX), _X, _variants(_X, np.float64)),
    ("gather-idx", lambda a: K.gather(_X, a), _IDX, _variants(_IDX[:2], np.int64, np.int32, np.uint64)),
    ("rice_encode", lambda a: K.rice_encode(a, 3), _IDX[:2], _variants(_IDX[:2], np.int64, np.int32)),
    ("rice_decode", lambda a: K.rice_decode(a, 5, 1000, 4), _RICE, _variants(_RICE, np.int8, U16)),
    ("axpy-acc", lambda a: K.axpy(a, _X, 2.0), _X.copy(), _variants(_X, np.float64, F16, writable=True)),
    ("axpy-x", lambda a: K.axpy(np.zeros(10, F32), a, 2.0), _X, _variants(_X, np.float64, np.int32)),
    ("axpy-length", lambda a: K.axpy(np.zeros(10, F32), a, 2.0), _X, {"short": _X[:9], "long": np.ones(11, F32)}),
    ("sparse_axpy-acc", lambda a: K.sparse_axpy(a, _IDX, np.ones(3, F32), 1.0), _X.copy(),
     _variants(_X, np.float64, writable=True)),
    ("sparse_axpy-idx", lambda a: K.sparse_axpy(np.zeros(10, F32), a, np.ones(2, F32), 1.0), _IDX[:2],
     _variants(_IDX[:2], np.int64, np.int32)),
    ("sparse_axpy-vals", lambda a: K.sparse_axpy(np.zeros(10, F32), np.arange(10, dtype=U32), a, 1.0), _X,
     _variants(_X, np.float64, F16)),
    ("median", K.median, _STACK, _variants(_STACK, np.float64)),
    ("trimmed_mean", lambda a: K.trimmed_mean(a, 1), _STACK, _variants(_STACK, np.float64)),
    ("l2_norm", K.l2_norm, _X, _variants(_X, np.float64, np.int32)),
    ("sq_dists", K.sq_dists, _STACK, _variants(_STACK, np.float64)),
    ("crc32c", K.crc32c, np.arange(10, dtype=U8), {"strided": strided(np.arange(10, dtype=U8)),
                                                   "uint16": np.arange(10, dtype=U16)}),
]


@pytest.mark.parametrize(
    "call, good, bad",
    [pytest.param(c, g, b, id=f"{name}-{v}") for name, c, g, bads in ARG_CASES for v, b in bads.items()],
)
def test_bad_arguments_raise_value_error(call, good, bad):
    call(good.copy())  # the call itself is valid: the error must come from the variant
    with pytest.raises(ValueError):
        call(bad)


# ---- threads ------------------------------------------------------------------------
_BIG_N = (1 << 20) + 37


@pytest.fixture(scope="module")
def big():
    rng = np.random.default_rng(42)
    x = rng.standard_normal(_BIG_N).astype(F32)
    x[::97] = 1.5  # plenty of ties
    return {"x": x, "stack": rng.standard_normal((7, 1 << 17)).astype(F32), "bytes": x.tobytes()}


def _topk_ef(x):
    residual = np.roll(x, 1)
    return tuple(K.topk_ef(x, residual, 5000)) + (residual,)


THREAD_CASES = {
    "topk-small-k": lambda d: K.topk(d["x"], 1000),
    "topk-large-k": lambda d: K.topk(d["x"], _BIG_N // 3),
    "topk_ef": lambda d: _topk_ef(d["x"]),
    "quantize-int8": lambda d: K.quantize(d["x"], 8, 256),
    "quantize-int8-stochastic": lambda d: K.quantize(d["x"], 8, 100, True, 9),
    "quantize-int4-stochastic": lambda d: K.quantize(d["x"], 4, 33, True, 9),
    "to_bf16": lambda d: K.to_bf16(d["x"]),
    "l2_norm": lambda d: K.l2_norm(d["x"]),
    "median": lambda d: K.median(d["stack"]),
    "trimmed_mean": lambda d: K.trimmed_mean(d["stack"], 2),
    "sq_dists": lambda d: K.sq_dists(d["stack"]),
    "randk": lambda d: K.randk_indices(10**6, 10**5, 4),
    "crc32c": lambda d: K.crc32c(d["bytes"]),
}


def _check_big_topk_ef(x):
    residual = np.roll(x, 1)
    want = R.topk_ef(x, residual, 5000)
    got = K.topk_ef(x, residual, 5000)
    R.assert_arrays_identical(got[0], want[0])
    R.assert_same_floats(got[1], want[1])
    R.assert_same_floats(residual, want[2])


def _check_big_l2(x):
    assert K.l2_norm(x) == pytest.approx(R.l2_norm(x), rel=1e-12)


def _check_big_stack(stack):
    np.testing.assert_allclose(K.median(stack), R.median(stack), rtol=2**-22)
    np.testing.assert_allclose(K.trimmed_mean(stack, 2), R.trimmed_mean(stack, 2), rtol=2**-23, atol=1e-12)
    np.testing.assert_allclose(K.sq_dists(stack), R.sq_dists(stack), rtol=1e-12)


LARGE_CASES = {
    "quantize-int8": lambda d: check_quantize(d["x"], 8, 256, False, 0),
    "quantize-int8-stochastic": lambda d: check_quantize(d["x"], 8, 333, True, 9),
    "quantize-int4-stochastic": lambda d: check_quantize(d["x"], 4, 100, True, 2**40 + 1),
    "topk_ef": lambda d: _check_big_topk_ef(d["x"]),
    "l2_norm": lambda d: _check_big_l2(d["x"]),
    "stack-reductions": lambda d: _check_big_stack(d["stack"]),
    "uniform": lambda d: R.assert_same_floats(K.uniform(77, _BIG_N), R.uniform(77, _BIG_N)),
}


@pytest.mark.parametrize("name", LARGE_CASES)
def test_large_inputs_match_reference(name, big):
    """Sizes that take the kernels' parallel paths, against the references."""
    LARGE_CASES[name](big)


@pytest.mark.parametrize("name", THREAD_CASES)
def test_results_independent_of_thread_count(name, big, threads):
    results = []
    for n in (1, 2, 3):
        threads(n)
        results.append(THREAD_CASES[name](big))
    assert same_result(results[0], results[1]) and same_result(results[0], results[2])


def test_concurrent_calls_from_python_threads(big):
    jobs = [lambda s=s: K.quantize(big["x"], 4, 64, True, s) for s in range(4)]
    jobs += [lambda k=k: K.topk(big["x"], k) for k in (10, 10**4, 10**5)]
    sequential = [job() for job in jobs]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda job: job(), jobs))
    assert all(same_result(a, b) for a, b in zip(sequential, concurrent))


def test_kernels_release_the_gil(threads):
    """While one Python thread is inside a long kernel call, the main thread keeps
    running Python code. With the GIL held it could only run before and after."""
    threads(1)
    for rows in (128, 256, 512, 1024):  # sq_dists costs rows**2 * 2**14: find a slow call
        stack = np.ones((rows, 1 << 14), F32)
        start = time.perf_counter()
        K.sq_dists(stack)
        if time.perf_counter() - start >= 0.2:
            break
    else:
        pytest.skip("no kernel call long enough to observe")

    span, stamps = {}, []

    def worker():
        span["t0"] = time.perf_counter()
        K.sq_dists(stack)
        span["t1"] = time.perf_counter()

    th = threading.Thread(target=worker)
    th.start()
    while th.is_alive():
        stamps.append(time.perf_counter())
        time.sleep(0.001)
    th.join()
    t0, t1 = span["t0"], span["t1"]
    margin = (t1 - t0) / 4
    inside = [s for s in stamps if t0 + margin < s < t1 - margin]
    assert inside, "the main thread was blocked for the whole kernel call: the GIL is held"


def test_seed_sequence_is_numpys_bit_for_bit():
    """derive_seed's kernel is NumPy's SeedSequence: every stream of a run keeps its seed."""
    rng = np.random.default_rng(11)
    cases = [[], [0], [2**32 - 1], [2**32], [2**64 - 1], [2**63 - 1, 5, 7, 3], [1, 2, 3, 4, 5, 6, 7, 8, 9]]
    cases += [[int(v) for v in rng.integers(0, 2**63, rng.integers(1, 8))] for _ in range(300)]
    for parts in cases:
        assert K.seed_sequence(parts) == int(np.random.SeedSequence(parts).generate_state(2, np.uint64)[0]), parts
    for bad in ([-1], [2**64], [1.5]):
        with pytest.raises((ValueError, TypeError)):
            K.seed_sequence(bad)
