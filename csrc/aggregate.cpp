// Server-side aggregation: weighted accumulation (dense and sparse),
// coordinate-wise robust statistics, norms and pairwise distances.
//
// Double-precision sums use a fixed summation order that does not depend on
// the thread count: 8 interleaved lanes inside a fixed-size chunk (this
// vectorizes without reassociating), chunk results added in index order.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "fedhpc.hpp"

namespace fedhpc {
namespace {

constexpr size_t kStreamChunk = size_t{1} << 16;  // elements per work item of streaming kernels
constexpr size_t kColumnTile = 64;                // columns per median / trimmed-mean work item
constexpr size_t kNormChunk = size_t{1} << 16;    // l2_norm: one partial sum per chunk
constexpr size_t kDistTile = 2048;                // sq_dists: one lane sum per tile and pair
constexpr size_t kMaxDistGroups = 256;            // sq_dists: partial sums kept per pair
constexpr size_t kMaxDistPartials = size_t{1} << 23;

// sum of term(i), i in [0, n): lane l accumulates the i with i % 8 == l, in
// order; the lanes are then added pairwise.
template <class Term>
FEDHPC_INLINE double lane_sum(size_t n, const Term& term) {
  double lane[8] = {};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (size_t l = 0; l < 8; ++l) lane[l] += term(i + l);
  }
  for (; i < n; ++i) lane[i % 8] += term(i);
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// out[c] = reduce(column c, rows) for every column of a (rows, n) stack; the
// column is first copied to a contiguous buffer that reduce may reorder.
template <class Reduce>
void reduce_columns(const float* stack, size_t rows, size_t n, float* out, const Reduce& reduce) {
  const int threads = num_threads();
  std::vector<float> scratch(static_cast<size_t>(threads) * rows * kColumnTile);
  const int64_t ntiles = static_cast<int64_t>((n + kColumnTile - 1) / kColumnTile);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t tile = 0; tile < ntiles; ++tile) {
    float* buf = scratch.data() + static_cast<size_t>(omp_get_thread_num()) * rows * kColumnTile;
    const size_t c0 = static_cast<size_t>(tile) * kColumnTile;
    const size_t width = std::min(kColumnTile, n - c0);
    for (size_t r = 0; r < rows; ++r) {
      const float* src = stack + r * n + c0;
      for (size_t c = 0; c < width; ++c) buf[c * rows + r] = src[c];
    }
    for (size_t c = 0; c < width; ++c) out[c0 + c] = reduce(buf + c * rows, rows);
  }
}

bool any_nan(const float* v, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (std::isnan(v[i])) return true;
  }
  return false;
}

}  // namespace

template <class T>
void axpy(float* acc, const T* x, size_t n, float w) {
  parallel_chunks(n, kStreamChunk, [&](size_t lo, size_t hi) {
    dispatch_simd([&]() FEDHPC_SIMD_BODY {
      float buf[kSpan];
      for (size_t s = lo; s < hi; s += kSpan) {
        const size_t len = std::min(kSpan, hi - s);
        const float* xf = as_floats(x + s, len, buf);
        float* a = acc + s;
        for (size_t i = 0; i < len; ++i) a[i] = a[i] + w * xf[i];
      }
    });
  });
}

template void axpy<float>(float*, const float*, size_t, float);
template void axpy<Half>(float*, const Half*, size_t, float);

void sparse_axpy(float* acc, const uint32_t* idx, const float* vals, size_t k, float w) {
  // idx is strictly ascending (checked by the caller): no two writes collide.
  parallel_chunks(k, kStreamChunk, [&](size_t lo, size_t hi) {
    for (size_t j = lo; j < hi; ++j) acc[idx[j]] = acc[idx[j]] + w * vals[j];
  });
}

void median(const float* stack, size_t rows, size_t n, float* out) {
  reduce_columns(stack, rows, n, out, [](float* v, size_t m) {
    if (any_nan(v, m)) return std::numeric_limits<float>::quiet_NaN();
    const size_t mid = m / 2;
    std::nth_element(v, v + mid, v + m);
    if (m % 2 == 1) return v[mid];
    const float lower = *std::max_element(v, v + mid);
    return (lower + v[mid]) / 2.0f;  // numpy: float32 mean of the two middle values
  });
}

void trimmed_mean(const float* stack, size_t rows, size_t n, size_t trim, float* out) {
  reduce_columns(stack, rows, n, out, [trim](float* v, size_t m) {
    if (any_nan(v, m)) return std::numeric_limits<float>::quiet_NaN();
    std::sort(v, v + m);
    double sum = 0.0;  // in ascending order, so the result is reproducible with numpy
    for (size_t r = trim; r < m - trim; ++r) sum += v[r];
    return static_cast<float>(sum / static_cast<double>(m - 2 * trim));
  });
}

// Bulyan's second stage: per column, the mean of the beta values nearest the
// column's median (the median as median() gives it). In the sorted column those
// values are a window; it grows from the median outwards, taking the nearer
// neighbour (distances in double; a tie takes the smaller value), and is added
// in ascending order in double.
void closest_mean(const float* stack, size_t rows, size_t n, size_t beta, float* out) {
  reduce_columns(stack, rows, n, out, [beta](float* v, size_t m) {
    if (any_nan(v, m)) return std::numeric_limits<float>::quiet_NaN();
    std::sort(v, v + m);
    const float med = m % 2 == 1 ? v[m / 2] : (v[m / 2 - 1] + v[m / 2]) / 2.0f;
    size_t lo = static_cast<size_t>(std::lower_bound(v, v + m, med) - v), hi = lo;
    while (hi - lo < beta) {
      if (lo == 0) {
        ++hi;
      } else if (hi == m) {
        --lo;
      } else if (static_cast<double>(med) - v[lo - 1] <= static_cast<double>(v[hi]) - med) {
        --lo;
      } else {
        ++hi;
      }
    }
    double sum = 0.0;
    for (size_t r = lo; r < hi; ++r) sum += v[r];
    return static_cast<float>(sum / static_cast<double>(beta));
  });
}

// out[r] = sum over the chunks of kNormChunk columns, in order, of the lane sum
// of (x_r - point)^2 in double: the same bits whatever the thread count.
void sq_dists_to(const float* stack, size_t rows, size_t n, const float* point, double* out) {
  const size_t chunks = (n + kNormChunk - 1) / kNormChunk;
  std::vector<double> partial(rows * chunks, 0.0);
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t item = 0; item < static_cast<int64_t>(rows * chunks); ++item) {
    const size_t r = static_cast<size_t>(item) / chunks, lo = (static_cast<size_t>(item) % chunks) * kNormChunk;
    const float* x = stack + r * n + lo;
    const float* p = point + lo;
    dispatch_simd([&]() FEDHPC_SIMD_BODY {
      partial[static_cast<size_t>(item)] = lane_sum(std::min(kNormChunk, n - lo), [&](size_t i) FEDHPC_SIMD_BODY {
        const double d = static_cast<double>(x[i]) - static_cast<double>(p[i]);
        return d * d;
      });
    });
  }
  for (size_t r = 0; r < rows; ++r) {
    double total = 0.0;
    for (size_t c = 0; c < chunks; ++c) total += partial[r * chunks + c];
    out[r] = total;
  }
}

double l2_norm(const float* x, size_t n) {
  std::vector<double> partial((n + kNormChunk - 1) / kNormChunk);
  parallel_chunks(n, kNormChunk, [&](size_t lo, size_t hi) {
    dispatch_simd([&]() FEDHPC_SIMD_BODY {
      partial[lo / kNormChunk] = lane_sum(hi - lo, [&](size_t i) FEDHPC_SIMD_BODY {
        const double v = x[lo + i];
        return v * v;
      });
    });
  });
  double total = 0.0;
  for (const double p : partial) total += p;
  return std::sqrt(total);
}

// D[i][j] = sum over tiles of kDistTile columns of the lane sum of
// (x_i - x_j)^2 in double. Tiles are grouped (the grouping depends on n and
// the number of rows only); each group keeps one partial per pair, adding its
// tiles in order, and the groups are added in order. A tile of all rows stays
// in cache while every pair is computed from it.
void sq_dists(const float* stack, size_t rows, size_t n, double* out) {
  std::fill(out, out + rows * rows, 0.0);
  const size_t pairs = rows < 2 ? 0 : rows * (rows - 1) / 2;
  if (pairs == 0 || n == 0) return;
  const size_t ntiles = (n + kDistTile - 1) / kDistTile;
  const size_t max_groups = std::min({ntiles, kMaxDistGroups, std::max<size_t>(1, kMaxDistPartials / pairs)});
  const size_t tiles_per_group = (ntiles + max_groups - 1) / max_groups;
  const size_t groups = (ntiles + tiles_per_group - 1) / tiles_per_group;
  std::vector<double> partial(groups * pairs, 0.0);
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int64_t g = 0; g < static_cast<int64_t>(groups); ++g) {
    double* acc = partial.data() + static_cast<size_t>(g) * pairs;
    const size_t tile_end = std::min(ntiles, (static_cast<size_t>(g) + 1) * tiles_per_group);
    for (size_t tile = static_cast<size_t>(g) * tiles_per_group; tile < tile_end; ++tile) {
      const size_t c0 = tile * kDistTile;
      const size_t len = std::min(kDistTile, n - c0);
      dispatch_simd([&]() FEDHPC_SIMD_BODY {
        size_t p = 0;
        for (size_t i = 0; i < rows; ++i) {
          const float* a = stack + i * n + c0;
          for (size_t j = i + 1; j < rows; ++j, ++p) {
            const float* b = stack + j * n + c0;
            acc[p] += lane_sum(len, [&](size_t t) FEDHPC_SIMD_BODY {
              const double d = static_cast<double>(a[t]) - static_cast<double>(b[t]);
              return d * d;
            });
          }
        }
      });
    }
  }
  size_t p = 0;
  for (size_t i = 0; i < rows; ++i) {
    for (size_t j = i + 1; j < rows; ++j, ++p) {
      double total = 0.0;
      for (size_t g = 0; g < groups; ++g) total += partial[g * pairs + p];
      out[i * rows + j] = total;
      out[j * rows + i] = total;
    }
  }
}

}  // namespace fedhpc
