// Blockwise symmetric absmax quantization to int8 / int4 and back.
//
// Each block is independent, so blocks are spread over threads and the
// result does not depend on the thread count. The inner loops are written to
// vectorize: the absmax is an integer max over bit patterns (which also
// detects NaN/Inf), rounding uses the add-and-subtract magic-number trick.
#include <cmath>
#include <limits>

#include "fedhpc.hpp"

namespace fedhpc {
namespace {

// Adding then subtracting 1.5 * 2^23 rounds a float with |y| < 2^22 to an
// integer, ties to even (the current rounding mode), like numpy.rint.
constexpr float kRoundMagic = 12582912.0f;
// Target elements per parallel work item, so tiny blocks are not scheduled one by one.
constexpr size_t kElementsPerTask = size_t{1} << 16;

// Bit pattern of max |x| over the span. As unsigned integers, the bits of
// |x| order like magnitudes with NaN above Inf above every finite value.
FEDHPC_INLINE uint32_t absmax_bits(const float* x, size_t n) {
  uint32_t m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, float_bits(x[i]) & 0x7fffffffu);
  return m;
}

FEDHPC_INLINE uint32_t absmax_bits(const Half* x, size_t n) {
  uint16_t m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, static_cast<uint16_t>(x[i].bits & 0x7fffu));
  return float_bits(Half{m}.to_float());
}

FEDHPC_INLINE void round_nearest(const float* x, size_t n, float inv, float qmax, int8_t* q) {
  for (size_t i = 0; i < n; ++i) {
    const float y = x[i] * inv;
    const float r = (y + kRoundMagic) - kRoundMagic;
    q[i] = static_cast<int8_t>(static_cast<int32_t>(std::min(std::max(r, -qmax), qmax)));
  }
}

// q = floor(x * inv + u), each operation rounded to float32 as in numpy;
// floor is rint minus one where rint rounded up.
FEDHPC_INLINE void round_stochastic(const float* x, const float* u, size_t n, float inv, int32_t qmax, int8_t* q) {
  for (size_t i = 0; i < n; ++i) {
    const float z = x[i] * inv + u[i];
    const float r = (z + kRoundMagic) - kRoundMagic;
    // The correction is done on integers: GCC does not if-convert a
    // conditional FP subtraction (it might trap), so the loop would not vectorize.
    const int32_t f = static_cast<int32_t>(r) - static_cast<int32_t>(r > z);
    q[i] = static_cast<int8_t>(std::min(std::max(f, -qmax), qmax));
  }
}

FEDHPC_INLINE void fill_uniform(uint64_t seed, size_t first, size_t n, float* u) {
  for (size_t i = 0; i < n; ++i) u[i] = uniform_at(seed, first + i);
}

// Writes q[0..n) of global elements first.. as 4-bit codes q + 8. An element
// at an odd index fills the high nibble of a byte whose low nibble the same
// thread wrote just before (work items start at even indices).
FEDHPC_INLINE void store_nibbles(uint8_t* codes, size_t first, const int8_t* q, size_t n) {
  size_t i = 0;
  if (first & 1) {
    uint8_t& byte = codes[first >> 1];
    byte = static_cast<uint8_t>((byte & 0x0fu) | ((q[0] + 8) << 4));
    i = 1;
  }
  for (; i + 1 < n; i += 2) {
    codes[(first + i) >> 1] = static_cast<uint8_t>((q[i] + 8) | ((q[i + 1] + 8) << 4));
  }
  if (i < n) codes[(first + i) >> 1] = static_cast<uint8_t>(q[i] + 8);  // high nibble: next element or padding
}

struct QuantizeParams {
  int bits;
  float qmax;
  bool stochastic;
  uint64_t seed;
};

// Quantizes elements [first, first + n) of x, one block, into codes and *scale.
template <class T>
FEDHPC_INLINE void quantize_block(const T* x, size_t first, size_t n, const QuantizeParams& p, uint8_t* codes,
                                  float* scale) {
  const uint32_t amax_bits = absmax_bits(x + first, n);
  const float amax = bits_float(amax_bits);
  const float inv = p.qmax / amax;
  // A non-finite block gets scale NaN so that dequantizing shows the problem;
  // inv overflows for an all-zero (or subnormal-scale) block: scale 0.
  const bool nonfinite = amax_bits >= 0x7f800000u;
  const bool degenerate = nonfinite || std::isinf(inv);
  *scale = nonfinite ? std::numeric_limits<float>::quiet_NaN() : degenerate ? 0.0f : amax / p.qmax;

  float fbuf[kSpan];
  float ubuf[kSpan];
  int8_t qbuf[kSpan];
  for (size_t off = 0; off < n; off += kSpan) {
    const size_t len = std::min(kSpan, n - off);
    const size_t at = first + off;
    int8_t* q = p.bits == 8 ? reinterpret_cast<int8_t*>(codes) + at : qbuf;
    if (degenerate) {
      std::fill(q, q + len, int8_t{0});
    } else if (p.stochastic) {
      fill_uniform(p.seed, at, len, ubuf);
      round_stochastic(as_floats(x + at, len, fbuf), ubuf, len, inv, static_cast<int32_t>(p.qmax), q);
    } else {
      round_nearest(as_floats(x + at, len, fbuf), len, inv, p.qmax, q);
    }
    if (p.bits == 4) store_nibbles(codes, at, q, len);
  }
}

}  // namespace

size_t quantized_bytes(size_t n, int bits) { return bits == 8 ? n : (n + 1) / 2; }

template <class T>
void quantize(const T* x, size_t n, int bits, size_t block, bool stochastic, uint64_t seed, uint8_t* codes,
              float* scales) {
  const QuantizeParams p{bits, bits == 8 ? 127.0f : 7.0f, stochastic, seed};
  const size_t nblocks = (n + block - 1) / block;
  // With 4-bit codes and an odd block size two consecutive blocks share a
  // byte; scheduling blocks in pairs keeps every shared byte in one thread.
  const size_t blocks_per_unit = (bits == 4 && block % 2 == 1) ? 2 : 1;
  const size_t unit = block * blocks_per_unit;
  const size_t units_per_task = std::max<size_t>(1, kElementsPerTask / unit);
  const size_t blocks_per_task = units_per_task * blocks_per_unit;
  parallel_chunks(nblocks, blocks_per_task, [&](size_t b_lo, size_t b_hi) {
    dispatch_simd([&]() FEDHPC_SIMD_BODY {
      for (size_t b = b_lo; b < b_hi; ++b) {
        const size_t first = b * block;
        quantize_block(x, first, std::min(block, n - first), p, codes, scales + b);
      }
    });
  });
}

template void quantize<float>(const float*, size_t, int, size_t, bool, uint64_t, uint8_t*, float*);
template void quantize<Half>(const Half*, size_t, int, size_t, bool, uint64_t, uint8_t*, float*);

void dequantize(const uint8_t* codes, const float* scales, size_t n, int bits, size_t block, float* out) {
  const size_t nblocks = (n + block - 1) / block;
  const size_t blocks_per_task = std::max<size_t>(1, kElementsPerTask / block);
  parallel_chunks(nblocks, blocks_per_task, [&](size_t b_lo, size_t b_hi) {
    dispatch_simd([&]() FEDHPC_SIMD_BODY {
      for (size_t b = b_lo; b < b_hi; ++b) {
        const float s = scales[b];
        size_t i = b * block;
        const size_t end = std::min(n, i + block);
        if (bits == 8) {
          for (; i < end; ++i) out[i] = static_cast<float>(static_cast<int8_t>(codes[i])) * s;
          continue;
        }
        if (i < end && (i & 1)) {
          out[i] = static_cast<float>((codes[i >> 1] >> 4) - 8) * s;
          ++i;
        }
        for (; i + 1 < end; i += 2) {
          const uint8_t byte = codes[i >> 1];
          out[i] = static_cast<float>((byte & 0x0f) - 8) * s;
          out[i + 1] = static_cast<float>((byte >> 4) - 8) * s;
        }
        if (i < end) out[i] = static_cast<float>((codes[i >> 1] & 0x0f) - 8) * s;
      }
    });
  });
}

void uniform(uint64_t seed, size_t n, float* out) {
  parallel_chunks(n, kElementsPerTask, [&](size_t lo, size_t hi) {
    dispatch_simd([&]() FEDHPC_SIMD_BODY { fill_uniform(seed, lo, hi - lo, out + lo); });
  });
}

}  // namespace fedhpc
