"""The exact integer ring: kernels against the NumPy references, the accumulator
against a float64 reference, and the properties aggregation relies on."""

import math

import numpy as np
import pytest

import reference as ref
from fedhpc import kernels as K
from fedhpc.ring import SUM_BOUND, Accumulator, FoldError, Ring

pytestmark = pytest.mark.unit

FACTOR = 2.0**40


def test_fold_matches_the_reference_dense_sparse_and_subtract():
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 65536 + 3, 200_000):
        acc = rng.integers(-(1 << 62), 1 << 62, n, dtype=np.int64)
        vals = rng.normal(0, 1e-2, n).astype(np.float32)
        for subtract in (False, True):
            got = acc.copy()
            kind, at, sumsq = K.ring_fold(got, vals, FACTOR, 1e18, None, subtract)
            if n <= 65536 + 3:  # the pure-Python reference is slow
                assert (kind, at) == (0, n)
                np.testing.assert_array_equal(got, ref.ring_fold(acc, vals, FACTOR, 1e18, None, subtract)[2])
            assert math.sqrt(sumsq) == K.l2_norm(vals)  # the same order as l2_norm
        idx = np.sort(rng.choice(max(n, 1), min(n, 500), replace=False)).astype(np.uint32)[: min(n, 500)]
        if n:
            sub = rng.normal(0, 1, idx.size).astype(np.float32)
            got = acc.copy()
            assert K.ring_fold(got, sub, FACTOR, 1e18, idx)[0] == 0
            np.testing.assert_array_equal(got, ref.ring_fold(acc, sub, FACTOR, 1e18, idx)[2])


def test_fold_wraps_modulo_two_to_the_64_and_ties_round_to_even():
    acc = np.array([np.iinfo(np.int64).max, np.iinfo(np.int64).min, 0, 0, 0], dtype=np.int64)
    vals = np.array([1.0, -1.0, 0.5, 1.5, -2.5], dtype=np.float32)
    K.ring_fold(acc, vals, 1.0, 10.0)
    assert acc.tolist() == [np.iinfo(np.int64).min, np.iinfo(np.int64).max, 0, 2, -2]


@pytest.mark.parametrize("bad, kind", [(np.nan, 1), (np.inf, 1), (-np.inf, 1), (3e6, 2), (-3e6, 2)])
def test_a_refused_fold_leaves_the_sum_exactly_as_it_was(bad, kind):
    rng = np.random.default_rng(1)
    n = 3 * 65536 + 11  # several chunks, so some have folded when one fails
    acc = rng.integers(-(1 << 40), 1 << 40, n, dtype=np.int64)
    before = acc.copy()
    vals = rng.normal(0, 1, n).astype(np.float32)
    vals[2 * 65536 + 5] = bad
    got = K.ring_fold(acc, vals, FACTOR, 2e6 * FACTOR)
    assert got[:2] == (kind, 2 * 65536 + 5)
    np.testing.assert_array_equal(acc, before)


def test_fold_and_mean_give_the_same_bits_for_any_thread_count():
    rng = np.random.default_rng(2)
    vals = rng.normal(0, 1, 300_000).astype(np.float32)
    before = K.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            K.set_num_threads(t)
            acc = np.zeros(vals.size, np.int64)
            sumsq = K.ring_fold(acc, vals, FACTOR, 1e18)[2]
            out = np.empty(vals.size, np.float32)
            K.ring_mean(acc, out, 1 / FACTOR)
            results.append((acc.tobytes(), sumsq, out.tobytes()))
    finally:
        K.set_num_threads(before)
    assert results[0] == results[1] == results[2]


def test_mean_matches_the_reference_with_and_without_coverage():
    rng = np.random.default_rng(3)
    acc = rng.integers(-(1 << 50), 1 << 50, 1000, dtype=np.int64)
    cov = rng.integers(0, 3, 1000, dtype=np.int64) * (1 << 40)
    for coverage in (None, cov):
        out = np.empty(1000, np.float32)
        K.ring_mean(acc, out, 1 / FACTOR / 3.0, coverage)
        ref.assert_same_floats(out, ref.ring_mean(acc, 1 / FACTOR / 3.0, coverage))


@pytest.mark.parametrize("call, message", [
    (lambda: K.ring_fold(np.zeros(3, np.int32), np.zeros(3, np.float32), 1.0, 1.0), "acc must have dtype int64"),
    (lambda: K.ring_fold(np.zeros(3, np.int64), np.zeros(4, np.float32), 1.0, 1.0), "same length"),
    (lambda: K.ring_fold(np.zeros(3, np.int64), np.zeros(2, np.float32), 1.0, 1.0,
                         np.array([2, 1], np.uint32)), "strictly ascending"),
    (lambda: K.ring_fold(np.zeros(3, np.int64), np.zeros(1, np.float32), 1.0, 1.0,
                         np.array([3], np.uint32)), "out of range"),
    (lambda: K.ring_fold(np.zeros(3, np.int64), np.zeros(3, np.float32), np.nan, 1.0), "factor"),
    (lambda: K.ring_fold(np.zeros(3, np.int64), np.zeros(3, np.float32), 1.0, 1e19), "limit"),
    (lambda: K.ring_mean(np.zeros(3, np.int64), np.zeros(2, np.float32), 1.0), "same length"),
])
def test_ring_kernels_refuse_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def deltas(k: int, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # magnitudes from 1e-6 to 1e-1, as the coordinates of real updates spread
    return [(rng.normal(0, 1, n) * 10.0 ** rng.uniform(-6, -1, n)).astype(np.float32) for _ in range(k)]


def test_the_sum_is_the_same_bits_in_any_order_and_grouping():
    ring = Ring(40, 16)
    ds = deltas(16, 5000, 4)
    coefs = np.random.default_rng(5).uniform(0.01, 0.2, 16)
    whole = Accumulator(ring, 5000)
    for d, c in zip(ds, coefs):
        whole.fold(d, c)
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(16)
        parts = [Accumulator(ring, 5000) for _ in range(3)]
        for j, i in enumerate(order):
            parts[j % 3].fold(ds[i], coefs[i])
        total = parts[0].acc + parts[1].acc + parts[2].acc  # what an MPI SUM of int64 does
        assert total.tobytes() == whole.acc.tobytes()


def test_the_mean_is_at_least_as_accurate_as_a_float32_sum():
    """Against a float64 reference, the ring's mean is closer than the float32
    weighted sum the strategies used before it."""
    n, k = 20_000, 50
    ds = deltas(k, n, 6)
    coefs = np.random.default_rng(7).uniform(1, 100, k)
    coefs = coefs / coefs.sum()
    want = sum(c * d.astype(np.float64) for c, d in zip(coefs, ds)) / math.fsum(coefs)
    acc = Accumulator(Ring(40, k), n)
    f32 = np.zeros(n, np.float32)
    for d, c in zip(ds, coefs):
        acc.fold(d, c)
        K.axpy(f32, d, float(c))
    ring_err = np.abs(acc.mean(math.fsum(coefs)) - want)
    f32_err = np.abs(f32 - want)
    assert ring_err.max() <= f32_err.max()
    assert np.sqrt(np.mean(ring_err**2)) <= np.sqrt(np.mean(f32_err**2))
    # and within one float32 rounding of the exact value, plus the ring's resolution per term
    assert np.all(ring_err <= np.abs(want) * 2.0**-24 + k * 2.0**-41)


def test_a_contribution_can_be_taken_out_exactly():
    ring = Ring(40, 4)
    a, b = deltas(2, 1000, 8)
    acc = Accumulator(ring, 1000, coverage=True)
    acc.fold(a, 0.25)
    before = (acc.acc.copy(), acc.coverage.copy())
    idx = np.arange(0, 1000, 3, dtype=np.uint32)
    acc.fold(b[idx], 0.5, idx)
    acc.fold(b[idx], 0.5, idx, subtract=True)
    assert acc.acc.tobytes() == before[0].tobytes() and acc.coverage.tobytes() == before[1].tobytes()


def test_values_beyond_the_range_or_not_finite_are_refused_and_not_folded():
    ring = Ring(40, 10)
    acc = Accumulator(ring, 4)
    bound = ring.bound(0.5)
    assert bound == SUM_BOUND / 10 / 2.0**40 / 0.5
    acc.fold(np.array([bound, -bound, 0, 1], np.float32) * np.float32(0.999), 0.5)
    before = acc.acc.copy()
    with pytest.raises(FoldError, match="beyond the aggregation range") as exc:
        acc.fold(np.array([0, bound * 1.01, 0, 0], np.float32), 0.5)
    assert exc.value.reason == "overflow"
    with pytest.raises(FoldError, match="NaN or infinite") as exc:
        acc.fold(np.array([0, 0, np.nan, 0], np.float32), 0.5)
    assert exc.value.reason == "nonfinite"
    np.testing.assert_array_equal(acc.acc, before)
    # ten contributions at the bound still decode to their true sum, not a wrapped value
    full = Accumulator(ring, 1)
    for _ in range(10):
        full.fold(np.array([bound], np.float32) * np.float32(0.9999), 1.0 / 2)
    assert full.mean(1.0)[0] == pytest.approx(10 * 0.5 * bound * 0.9999, rel=1e-6)


def test_the_first_dense_fold_writes_the_sum_without_reading_it_and_a_refused_one_leaves_it_empty():
    rng = np.random.default_rng(9)
    vals = rng.normal(0, 1, 70_000).astype(np.float32)
    garbage = rng.integers(-(1 << 62), 1 << 62, vals.size, dtype=np.int64)
    got = garbage.copy()
    assert K.ring_fold(got, vals, FACTOR, 1e18, None, False, True)[0] == 0
    np.testing.assert_array_equal(got, ref.ring_fold(np.zeros(vals.size, np.int64), vals, FACTOR, 1e18)[2])
    with pytest.raises(ValueError, match="assign is for a dense fold"):
        K.ring_fold(got, vals[:2], FACTOR, 1e18, np.array([0, 1], np.uint32), False, True)
    ring = Ring(40, 4)
    acc = Accumulator(ring, vals.size, coverage=True)
    bad = vals.copy()
    bad[66_000] = np.nan
    with pytest.raises(FoldError):
        acc.fold(bad, 0.5)  # the first fold, refused part-way: the sum is still empty
    acc.fold(vals, 0.5)
    fresh = Accumulator(ring, vals.size, coverage=True)
    fresh._materialize()  # zeros, then added to: what the assigning fold must equal
    fresh.fold(vals, 0.5)
    assert acc.acc.tobytes() == fresh.acc.tobytes() and acc.coverage.tobytes() == fresh.coverage.tobytes()
    acc.clear()
    assert not acc.acc.any() and not acc.coverage.any()  # an empty sum reads as zeros
