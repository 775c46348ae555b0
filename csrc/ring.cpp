// The fixed-point ring of exact aggregation (see src/fedhpc/ring.py).
//
// A value x of a client weighted by c enters the ring as q = nearest integer
// to x * c * 2^S (ties to even), added modulo 2^64 into an int64 accumulator.
// Integer addition is associative and commutative, so a sum is the same bits
// for any arrival order, grouping or rank count, and a contribution can be
// taken out again exactly. The caller bounds |x * c * 2^S| (limit) so that the
// true sum of every contribution a round may hold fits in int64: a decoded sum
// is then never a wrapped value, while masks added on top (secure aggregation)
// may wrap freely and cancel.
#include <cmath>
#include <vector>

#include "fedhpc.hpp"

namespace fedhpc {
namespace {

// elements per work item; the same chunking and lanes as l2_norm, so the sum
// of squares of a dense fold is the one l2_norm computes
constexpr size_t kRingChunk = size_t{1} << 16;

// q for one value, or the failure: 1 = not finite, 2 = beyond the limit
FEDHPC_INLINE int to_fixed(float x, double factor, double limit, int64_t& q) {
  if (!std::isfinite(x)) return 1;
  const double y = static_cast<double>(x) * factor;
  if (!(std::fabs(y) <= limit)) return 2;
  q = static_cast<int64_t>(std::nearbyint(y));
  return 0;
}

// acc[pos(i)] += sign * q(vals[i]) for i in [lo, hi), modulo 2^64
template <class Pos>
FEDHPC_INLINE void add_fixed(int64_t* acc, const float* vals, size_t lo, size_t hi, const Pos& pos, double factor,
                             bool subtract) {
  for (size_t i = lo; i < hi; ++i) {
    const int64_t q = static_cast<int64_t>(std::nearbyint(static_cast<double>(vals[i]) * factor));
    uint64_t& a = reinterpret_cast<uint64_t&>(acc[pos(i)]);
    a = subtract ? a - static_cast<uint64_t>(q) : a + static_cast<uint64_t>(q);
  }
}

template <class Pos>
RingFold fold(int64_t* acc, const float* vals, size_t n, const Pos& pos, double factor, double limit, bool subtract,
              bool assign) {
  const size_t nchunks = (n + kRingChunk - 1) / kRingChunk;
  std::vector<size_t> stop(nchunks);
  std::vector<int> kind(nchunks, 0);
  std::vector<double> sums(nchunks, 0.0);
  parallel_chunks(n, kRingChunk, [&](size_t lo, size_t hi) {
    const size_t c = lo / kRingChunk;
    double lane[8] = {};
    size_t i = lo;
    for (; i < hi; ++i) {
      int64_t q;
      const int bad = to_fixed(vals[i], factor, limit, q);
      if (bad) {
        kind[c] = bad;
        break;
      }
      uint64_t& a = reinterpret_cast<uint64_t&>(acc[pos(i)]);
      const uint64_t base = assign ? 0 : a;
      a = subtract ? base - static_cast<uint64_t>(q) : base + static_cast<uint64_t>(q);
      lane[(i - lo) % 8] += static_cast<double>(vals[i]) * static_cast<double>(vals[i]);
    }
    stop[c] = i;
    sums[c] = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  });
  RingFold out{0, n, 0.0};
  for (size_t c = 0; c < nchunks; ++c) {
    if (kind[c]) {
      out = RingFold{kind[c], stop[c], 0.0};
      break;
    }
    out.sumsq += sums[c];
  }
  if (out.kind && !assign) {  // leave acc as it was: take out what every chunk had added (an assigned acc
                              // held nothing the caller keeps)
    parallel_chunks(n, kRingChunk, [&](size_t lo, size_t) {
      add_fixed(acc, vals, lo, stop[lo / kRingChunk], pos, factor, !subtract);
    });
  }
  return out;
}

}  // namespace

RingFold ring_fold(int64_t* acc, const float* vals, size_t n, const uint32_t* idx, double factor, double limit,
                   bool subtract, bool assign) {
  if (idx == nullptr) return fold(acc, vals, n, [](size_t i) { return i; }, factor, limit, subtract, assign);
  return fold(acc, vals, n, [idx](size_t i) { return static_cast<size_t>(idx[i]); }, factor, limit, subtract,
              false);
}

void ring_mean(const int64_t* acc, const int64_t* coverage, size_t n, double inv, float* out) {
  parallel_chunks(n, kRingChunk, [&](size_t lo, size_t hi) {
    if (coverage == nullptr) {
      for (size_t i = lo; i < hi; ++i) out[i] = static_cast<float>(static_cast<double>(acc[i]) * inv);
      return;
    }
    for (size_t i = lo; i < hi; ++i) {
      out[i] = coverage[i] > 0 ? static_cast<float>(static_cast<double>(acc[i]) / static_cast<double>(coverage[i]))
                               : 0.0f;
    }
  });
}

}  // namespace fedhpc
