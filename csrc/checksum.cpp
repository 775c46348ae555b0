// CRC-32C (Castagnoli; reflected polynomial 0x82F63B78, init and final xor
// ~0), with zlib.crc32-style continuation. Uses the SSE4.2 crc32 instruction
// when available, else slicing-by-8 tables. Large buffers are split over
// threads and the pieces joined with the CRC combination identity
// crc(A || B) = crc(A) * x^(8|B|) mod P  xor  crc(B), which is exact.
#include <nmmintrin.h>

#include <array>
#include <vector>

#include "fedhpc.hpp"

namespace fedhpc {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;
constexpr size_t kMinBytesPerThread = size_t{1} << 20;

struct SliceTables {
  uint32_t t[8][256];
};

constexpr SliceTables make_slice_tables() {
  SliceTables tables{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int bit = 0; bit < 8; ++bit) c = (c & 1u) ? (c >> 1) ^ kPoly : c >> 1;
    tables.t[0][i] = c;
  }
  for (int s = 1; s < 8; ++s) {
    for (uint32_t i = 0; i < 256; ++i) {
      const uint32_t prev = tables.t[s - 1][i];
      tables.t[s][i] = (prev >> 8) ^ tables.t[0][prev & 0xffu];
    }
  }
  return tables;
}

constexpr SliceTables kSlice = make_slice_tables();

// Polynomial product a * b modulo P, bit-reflected (bit 31 is x^0).
constexpr uint32_t multiply_mod_p(uint32_t a, uint32_t b) {
  uint32_t product = 0;
  for (uint32_t m = 1u << 31; m != 0; m >>= 1) {
    if (a & m) product ^= b;
    b = (b & 1u) ? (b >> 1) ^ kPoly : b >> 1;
  }
  return product;
}

// kPowers[i] = x^(2^i) mod P.
constexpr std::array<uint32_t, 64> make_powers() {
  std::array<uint32_t, 64> powers{};
  powers[0] = 1u << 30;  // x^1
  for (size_t i = 1; i < powers.size(); ++i) powers[i] = multiply_mod_p(powers[i - 1], powers[i - 1]);
  return powers;
}

constexpr std::array<uint32_t, 64> kPowers = make_powers();

// x^(8 * bytes) mod P: shifts a CRC over `bytes` zero bytes.
uint32_t x_pow_8n(uint64_t bytes) {
  uint32_t p = 1u << 31;  // x^0
  for (size_t i = 3; bytes != 0; bytes >>= 1, ++i) {
    if (bytes & 1u) p = multiply_mod_p(kPowers[i], p);
  }
  return p;
}

uint64_t load_le64(const uint8_t* p) {
  uint64_t w = 0;
  for (int j = 0; j < 8; ++j) w |= static_cast<uint64_t>(p[j]) << (8 * j);
  return w;
}

// Both update functions work on the inverted register (no pre/post xor).
uint32_t update_tables(uint32_t c, const uint8_t* p, size_t n) {
  const auto& t = kSlice.t;
  for (; n >= 8; p += 8, n -= 8) {
    const uint64_t w = load_le64(p) ^ c;
    c = t[7][w & 0xff] ^ t[6][(w >> 8) & 0xff] ^ t[5][(w >> 16) & 0xff] ^ t[4][(w >> 24) & 0xff] ^
        t[3][(w >> 32) & 0xff] ^ t[2][(w >> 40) & 0xff] ^ t[1][(w >> 48) & 0xff] ^ t[0][w >> 56];
  }
  for (; n > 0; ++p, --n) c = t[0][(c ^ *p) & 0xffu] ^ (c >> 8);
  return c;
}

// The crc32 instruction has a latency of 3 cycles and a throughput of 1, so
// one dependency chain runs at a third of its speed: blocks are cut into three
// stripes summed as independent chains from zero, then joined by linearity,
// crc(c, A||B||C) = shift(crc(c, A), 2S) ^ shift(crc(0, B), S) ^ crc(0, C).
constexpr size_t kStripe = 4096;

__attribute__((target("sse4.2"))) uint32_t update_sse42(uint32_t c, const uint8_t* p, size_t n) {
  static const uint32_t shift1 = x_pow_8n(kStripe), shift2 = x_pow_8n(2 * kStripe);
  for (; n >= 3 * kStripe; p += 3 * kStripe, n -= 3 * kStripe) {
    uint64_t a = c, b = 0, d = 0;
    for (size_t i = 0; i < kStripe; i += 8) {
      uint64_t wa, wb, wd;
      std::memcpy(&wa, p + i, sizeof wa);
      std::memcpy(&wb, p + kStripe + i, sizeof wb);
      std::memcpy(&wd, p + 2 * kStripe + i, sizeof wd);
      a = _mm_crc32_u64(a, wa);
      b = _mm_crc32_u64(b, wb);
      d = _mm_crc32_u64(d, wd);
    }
    c = multiply_mod_p(shift2, static_cast<uint32_t>(a)) ^ multiply_mod_p(shift1, static_cast<uint32_t>(b)) ^
        static_cast<uint32_t>(d);
  }
  uint64_t c64 = c;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t w;
    std::memcpy(&w, p, sizeof w);
    c64 = _mm_crc32_u64(c64, w);
  }
  uint32_t c32 = static_cast<uint32_t>(c64);
  for (; n > 0; ++p, --n) c32 = _mm_crc32_u8(c32, *p);
  return c32;
}

uint32_t crc32c_serial(const uint8_t* data, size_t n, uint32_t crc) {
  return ~(use_sse42() ? update_sse42(~crc, data, n) : update_tables(~crc, data, n));
}

}  // namespace

uint32_t crc32c(const uint8_t* data, size_t n, uint32_t crc) {
  const size_t threads = std::min(static_cast<size_t>(num_threads()), n / kMinBytesPerThread);
  if (threads <= 1) return crc32c_serial(data, n, crc);
  const size_t chunk = (n + threads - 1) / threads;
  const size_t parts = (n + chunk - 1) / chunk;
  std::vector<uint32_t> part_crc(parts);
  parallel_chunks(n, chunk, [&](size_t lo, size_t hi) {
    part_crc[lo / chunk] = crc32c_serial(data + lo, hi - lo, lo == 0 ? crc : 0u);
  });
  uint32_t result = part_crc[0];
  for (size_t j = 1; j < parts; ++j) {
    const size_t len = std::min(n, (j + 1) * chunk) - j * chunk;
    result = multiply_mod_p(x_pow_8n(len), result) ^ part_crc[j];
  }
  return result;
}

}  // namespace fedhpc
