// fp16 / bf16 conversions. fp16 uses the F16C instructions when the CPU has
// them; those quiet signalling NaNs while numpy keeps NaN payloads as they
// are, so NaN lanes are redone in software to stay bit-identical to numpy.
#include <immintrin.h>

#include "fedhpc.hpp"

namespace fedhpc {
namespace {

constexpr size_t kCastChunk = size_t{1} << 16;  // elements per parallel work item

FEDHPC_TARGET_AVX2 void fp16_encode_f16c(const float* x, uint16_t* h, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(h + i),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0) {
      for (size_t j = i; j < i + 8; ++j) h[j] = float_to_half_bits(x[j]);
    }
  }
  for (; i < n; ++i) h[i] = float_to_half_bits(x[i]);
}

FEDHPC_TARGET_AVX2 void fp16_decode_f16c(const uint16_t* h, float* x, size_t n) {
  const __m128i magnitude_mask = _mm_set1_epi16(0x7fff);
  const __m128i inf_bits = _mm_set1_epi16(0x7c00);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i));
    _mm256_storeu_ps(x + i, _mm256_cvtph_ps(v));
    const __m128i is_nan = _mm_cmpgt_epi16(_mm_and_si128(v, magnitude_mask), inf_bits);
    if (_mm_movemask_epi8(is_nan) != 0) {
      for (size_t j = i; j < i + 8; ++j) x[j] = half_bits_to_float(h[j]);
    }
  }
  for (; i < n; ++i) x[i] = half_bits_to_float(h[i]);
}

}  // namespace

void fp16_encode_span(const float* x, uint16_t* h, size_t n) {
  if (use_avx2()) {
    fp16_encode_f16c(x, h, n);
  } else {
    for (size_t i = 0; i < n; ++i) h[i] = float_to_half_bits(x[i]);
  }
}

void fp16_decode_span(const uint16_t* h, float* x, size_t n) {
  if (use_avx2()) {
    fp16_decode_f16c(h, x, n);
  } else {
    for (size_t i = 0; i < n; ++i) x[i] = half_bits_to_float(h[i]);
  }
}

void to_fp16(const float* x, uint16_t* h, size_t n) {
  parallel_chunks(n, kCastChunk, [&](size_t lo, size_t hi) { fp16_encode_span(x + lo, h + lo, hi - lo); });
}

void from_fp16(const uint16_t* h, float* x, size_t n) {
  parallel_chunks(n, kCastChunk, [&](size_t lo, size_t hi) { fp16_decode_span(h + lo, x + lo, hi - lo); });
}

void to_bf16(const float* x, uint16_t* h, size_t n) {
  parallel_chunks(n, kCastChunk, [&](size_t lo, size_t hi) {
    dispatch_simd([&]() FEDHPC_SIMD_BODY {
      for (size_t i = lo; i < hi; ++i) h[i] = float_to_bf16_bits(x[i]);
    });
  });
}

void from_bf16(const uint16_t* h, float* x, size_t n) {
  parallel_chunks(n, kCastChunk, [&](size_t lo, size_t hi) {
    dispatch_simd([&]() FEDHPC_SIMD_BODY {
      for (size_t i = lo; i < hi; ++i) x[i] = bf16_bits_to_float(h[i]);
    });
  });
}

}  // namespace fedhpc
