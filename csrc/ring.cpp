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
// Adding 1.5 * 2^52 to a double y with |y| < 2^51 rounds it to an integer
// (ties to even, as nearbyint), which is then the difference of the bit
// patterns: a rounding that vectorizes, unlike the conversion to int64.
constexpr double kMagic = 6755399441055744.0;
constexpr double kMagicRange = 2251799813685248.0;  // 2^51

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
    dispatch_simd([&]() FEDHPC_SIMD_BODY {
      // the chunk's largest |value| (as bits, NaN and Inf above every finite one) says whether
      // every value can take the fast rounding; the chunk is then in cache for the fold
      uint32_t amax = 0;
      for (size_t j = lo; j < hi; ++j) amax = std::max(amax, float_bits(vals[j]) & 0x7fffffffu);
      const double ymax = static_cast<double>(bits_float(amax)) * factor;
      if (amax >= 0x7f800000u || !(ymax <= limit) || !(ymax < kMagicRange)) return;
      int64_t magic_bits;
      std::memcpy(&magic_bits, &kMagic, sizeof magic_bits);
      const auto add = [&](size_t j) FEDHPC_SIMD_BODY {
        const double v = static_cast<double>(vals[j]);
        const double r = v * factor + kMagic;
        int64_t bits;
        std::memcpy(&bits, &r, sizeof bits);
        const uint64_t q = static_cast<uint64_t>(bits - magic_bits);
        uint64_t& a = reinterpret_cast<uint64_t&>(acc[pos(j)]);
        const uint64_t base = assign ? 0 : a;
        a = subtract ? base - q : base + q;
        return v * v;
      };
      for (; i + 8 <= hi; i += 8) {
        for (size_t l = 0; l < 8; ++l) lane[l] += add(i + l);
      }
      for (; i < hi; ++i) lane[(i - lo) % 8] += add(i);
    });
    for (; i < hi; ++i) {  // the general path: from the first value the fast one did not take
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
