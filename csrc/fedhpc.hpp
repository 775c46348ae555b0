// Shared declarations and helpers of the fedhpc compute kernels.
//
// Kernels take raw pointers to C-contiguous, aligned, already-validated
// buffers (the Python bindings in bindings.cpp do every check) and run with
// the OpenMP thread count set by set_num_threads(). Every kernel gives the
// same bits for any thread count: work is split so that each output element
// is computed by one fixed sequence of float operations.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>

// Clone of a function body for AVX2+F16C, selected at run time (see
// dispatch_simd); the general build stays portable x86-64.
#define FEDHPC_TARGET_AVX2 __attribute__((target("avx2,f16c")))
// Forces a helper into its caller so that it is vectorized with the caller's
// instruction set (baseline or AVX2 clone).
#define FEDHPC_INLINE inline __attribute__((always_inline))
// Marks the lambda passed to dispatch_simd: it must be inlined into both clones.
#define FEDHPC_SIMD_BODY __attribute__((always_inline))

namespace fedhpc {

// ---- threads ---------------------------------------------------------------

// The thread count every parallel region uses. A process-wide value rather
// than omp_set_num_threads(), whose setting only applies to the calling thread.
int num_threads();
void set_num_threads(int n);

// Runs body(lo, hi) over [0, n) cut into pieces of `chunk` elements, statically
// scheduled. Callers make body(lo, hi) depend on lo and hi only, so the
// result does not depend on the thread count. body must not throw.
template <class Body>
void parallel_chunks(size_t n, size_t chunk, const Body& body) {
  const size_t nchunks = (n + chunk - 1) / chunk;
  if (nchunks <= 1) {
    if (n > 0) body(size_t{0}, n);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t c = 0; c < static_cast<int64_t>(nchunks); ++c) {
    const size_t lo = static_cast<size_t>(c) * chunk;
    body(lo, std::min(n, lo + chunk));
  }
}

// Runs body(thread_id, team_size) on every thread of one OpenMP team and
// rethrows the first exception afterwards: an exception escaping an OpenMP
// region would terminate the process. body must not use OpenMP barriers or
// worksharing (a throwing thread would leave the others waiting).
template <class Body>
void parallel_region(const Body& body) {
  std::exception_ptr error;
#pragma omp parallel num_threads(num_threads())
  {
    try {
      body(omp_get_thread_num(), omp_get_num_threads());
    } catch (...) {
#pragma omp critical(fedhpc_parallel_region_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

// [lo, hi) of thread `tid` out of `nth` for n items, in thread order.
inline void split_range(size_t n, int tid, int nth, size_t& lo, size_t& hi) {
  lo = n * static_cast<size_t>(tid) / static_cast<size_t>(nth);
  hi = n * static_cast<size_t>(tid + 1) / static_cast<size_t>(nth);
}

// ---- instruction-set dispatch ----------------------------------------------

// True when the CPU has AVX2 and F16C and the environment variable
// FEDHPC_DISABLE_SIMD is unset (or "0"); the variable lets tests run the
// portable paths, which must give identical results.
bool use_avx2();
// True when the CPU has SSE4.2 (crc32 instruction), with the same override.
bool use_sse42();

template <class Body>
FEDHPC_TARGET_AVX2 void run_avx2_clone(const Body& body) {
  body();
}

// Runs `body` (a lambda marked FEDHPC_SIMD_BODY) compiled for AVX2 when the
// CPU has it, else its baseline build. Without -ffast-math and with
// -ffp-contract=off both builds do the same IEEE operations in the same
// order, so they give identical results.
template <class Body>
void dispatch_simd(const Body& body) {
  if (use_avx2()) {
    run_avx2_clone(body);
  } else {
    body();
  }
}

// ---- bit patterns, fp16 and bf16 -------------------------------------------

FEDHPC_INLINE uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

FEDHPC_INLINE float bits_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// float32 -> IEEE binary16 bits, round to nearest even, bit-identical to
// numpy's astype(float16) including NaN payloads (numpy keeps the top 10
// payload bits and never turns a NaN into Inf; it does not quiet sNaN).
FEDHPC_INLINE uint16_t float_to_half_bits(float x) {
  const uint32_t f = float_bits(x);
  const uint32_t sign = (f >> 16) & 0x8000u;
  const uint32_t a = f & 0x7fffffffu;
  if (a >= 0x7f800000u) {
    if (a == 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u);
    const uint32_t payload = (a & 0x7fffffu) >> 13;
    return static_cast<uint16_t>(sign | 0x7c00u | (payload != 0 ? payload : 1u));
  }
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to Inf
  if (a >= 0x38800000u) {  // normal half: round at bit 13, a carry bumps the exponent
    const uint32_t rounded = a + 0xfffu + ((a >> 13) & 1u);
    return static_cast<uint16_t>(sign | ((rounded >> 13) - (112u << 10)));
  }
  if (a <= 0x33000000u) return static_cast<uint16_t>(sign);  // <= 2^-25: rounds to (even) zero
  // Subnormal half: value * 2^24 = m >> (126 - e), rounded to nearest even.
  const uint32_t e = a >> 23;
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - e;  // 14..24
  const uint32_t rounded = (m + (1u << (shift - 1)) - 1u + ((m >> shift) & 1u)) >> shift;
  return static_cast<uint16_t>(sign | rounded);
}

// binary16 bits -> float32, exact; NaN payloads are kept as numpy does.
FEDHPC_INLINE float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu;
  const uint32_t m = h & 0x3ffu;
  if (e == 0x1fu) return bits_float(sign | 0x7f800000u | (m << 13));
  if (e != 0) return bits_float(sign | ((e + 112u) << 23) | (m << 13));
  const float magnitude = static_cast<float>(m) * 0x1p-24f;  // subnormal or zero, exact
  return sign ? -magnitude : magnitude;
}

// float32 -> bfloat16 bits, round to nearest even; a NaN keeps its sign and
// top payload bits and is made quiet (what AVX512-BF16 hardware does).
FEDHPC_INLINE uint16_t float_to_bf16_bits(float x) {
  const uint32_t f = float_bits(x);
  if ((f & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((f >> 16) | 0x0040u);
  return static_cast<uint16_t>((f + 0x7fffu + ((f >> 16) & 1u)) >> 16);
}

FEDHPC_INLINE float bf16_bits_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

// numpy float16 element: the bits of an IEEE binary16 value.
struct Half {
  uint16_t bits;
  float to_float() const { return half_bits_to_float(bits); }
};
static_assert(sizeof(Half) == 2, "Half must match numpy float16 storage");

// Serial span conversions (F16C when available, bit-identical software
// otherwise); building blocks of the parallel casts and of kernels that
// read float16 input.
void fp16_encode_span(const float* x, uint16_t* h, size_t n);
void fp16_decode_span(const uint16_t* h, float* x, size_t n);

// Elements of float16 input converted per step by kernels that compute in
// float32 (a stack buffer of this size stays in L1).
constexpr size_t kSpan = 1024;

// x[0..n) as float32: float input is used in place, float16 input is
// converted into `buf` (n <= kSpan). Lets kernels be written once for both.
FEDHPC_INLINE const float* as_floats(const float* x, size_t, float*) { return x; }
FEDHPC_INLINE const float* as_floats(const Half* x, size_t n, float* buf) {
  fp16_decode_span(reinterpret_cast<const uint16_t*>(x), buf, n);
  return buf;
}

// ---- counter-based random numbers --------------------------------------------

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

// The splitmix64 output function (Steele, Lea, Flood 2014) applied to z.
FEDHPC_INLINE uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The i-th random draw of stream `seed`: splitmix64(seed + (i + 1) * golden).
// Counter-based, so any element can be computed independently (any thread,
// any order, or on a GPU).
FEDHPC_INLINE uint64_t random_u64(uint64_t seed, uint64_t i) { return splitmix64(seed + (i + 1) * kGolden); }

// u[i] in [0, 1) with 24 random bits: exactly representable in float32.
FEDHPC_INLINE float uniform_at(uint64_t seed, uint64_t i) {
  return static_cast<float>(static_cast<int32_t>(random_u64(seed, i) >> 40)) * 0x1p-24f;
}

// ---- kernels -----------------------------------------------------------------
// Sizes are element counts. Output buffers are preallocated by the caller.

// casts.cpp
void to_fp16(const float* x, uint16_t* h, size_t n);
void from_fp16(const uint16_t* h, float* x, size_t n);
void to_bf16(const float* x, uint16_t* h, size_t n);
void from_bf16(const uint16_t* h, float* x, size_t n);

// quantize.cpp; codes holds quantized_bytes(n, bits) bytes, scales ceil(n/block).
size_t quantized_bytes(size_t n, int bits);
template <class T>
void quantize(const T* x, size_t n, int bits, size_t block, bool stochastic, uint64_t seed, uint8_t* codes,
              float* scales);
void dequantize(const uint8_t* codes, const float* scales, size_t n, int bits, size_t block, float* out);
void uniform(uint64_t seed, size_t n, float* out);

// topk.cpp; idx/vals hold k entries.
void topk(const float* x, size_t n, size_t k, uint32_t* idx, float* vals);
void topk_ef(const float* update, float* residual, size_t n, size_t k, uint32_t* idx, float* vals);
void randk_indices(uint64_t n, uint64_t k, uint64_t seed, uint32_t* out);
void gather(const float* x, const uint32_t* idx, size_t k, float* out);
// First position j with idx[j] >= n or (strictly_ascending and j > 0 and
// idx[j] <= idx[j-1]); k when every index is valid.
size_t first_invalid_index(const uint32_t* idx, size_t k, uint64_t n, bool strictly_ascending);

// coding.cpp
unsigned rice_param(uint64_t n, uint64_t k);
uint64_t rice_encoded_bits(const uint32_t* idx, size_t k, unsigned b);
void rice_encode(const uint32_t* idx, size_t k, unsigned b, uint8_t* out);
// Returns an empty string on success, else why the stream is invalid.
std::string rice_decode(const uint8_t* buf, size_t len, size_t k, uint64_t n, unsigned b, uint32_t* out);

// aggregate.cpp
template <class T>
void axpy(float* acc, const T* x, size_t n, float w);
void sparse_axpy(float* acc, const uint32_t* idx, const float* vals, size_t k, float w);
void median(const float* stack, size_t rows, size_t n, float* out);
void trimmed_mean(const float* stack, size_t rows, size_t n, size_t trim, float* out);
double l2_norm(const float* x, size_t n);
void sq_dists(const float* stack, size_t rows, size_t n, double* out);
void closest_mean(const float* stack, size_t rows, size_t n, size_t beta, float* out);
void sq_dists_to(const float* stack, size_t rows, size_t n, const float* point, double* out);

// ---- the fixed-point ring (ring.cpp) ----------------------------------------

// Outcome of ring_fold: kind 0 = folded; 1 = vals[index] is not finite; 2 =
// |vals[index] * factor| > limit. On failure acc is left unchanged.
struct RingFold {
  int kind;
  size_t index;
  double sumsq;  // sum of vals[i]^2 in l2_norm's order (when folded)
};
// acc[pos] += (or -=) nearbyint(vals[i] * factor) modulo 2^64, pos = idx[i]
// (idx strictly ascending) or i when idx is null. With assign (dense only)
// acc[i] = (-)q: the first fold into a sum that is empty, without reading it;
// on failure acc then holds garbage the caller must treat as empty.
RingFold ring_fold(int64_t* acc, const float* vals, size_t n, const uint32_t* idx, double factor, double limit,
                   bool subtract, bool assign);
// out = acc * inv, or acc / coverage where coverage > 0 (0 elsewhere), in double, rounded to float32.
void ring_mean(const int64_t* acc, const int64_t* coverage, size_t n, double inv, float* out);

// checksum.cpp
uint32_t crc32c(const uint8_t* data, size_t n, uint32_t crc);

// seeds.cpp: NumPy's SeedSequence(parts).generate_state(2, uint64)[0]
uint64_t seed_sequence_u64(const uint64_t* parts, size_t n);

// cuda/device.cu (0 when built without CUDA, see bindings.cpp)
int cuda_device_count() noexcept;

}  // namespace fedhpc
