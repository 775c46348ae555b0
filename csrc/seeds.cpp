// Seed derivation: NumPy's SeedSequence (numpy/random/bit_generator.pyx) for a
// sequence of non-negative integers, bit for bit, so that every stream of a run
// keeps its seed while a rank with thousands of clients a round stops paying
// ~40 us of Python per SeedSequence.
#include <vector>

#include "fedhpc.hpp"

namespace fedhpc {
namespace {

constexpr uint32_t kInitA = 0x43b0d7e5u;
constexpr uint32_t kMultA = 0x931e8875u;
constexpr uint32_t kInitB = 0x8b51f9ddu;
constexpr uint32_t kMultB = 0x58f38dedu;
constexpr uint32_t kMixMultL = 0xca01f9ddu;
constexpr uint32_t kMixMultR = 0x4973f715u;
constexpr int kXShift = 16;
constexpr size_t kPool = 4;

uint32_t hashmix(uint32_t value, uint32_t& hash_const) {
  value ^= hash_const;
  hash_const *= kMultA;
  value *= hash_const;
  value ^= value >> kXShift;
  return value;
}

uint32_t mix(uint32_t x, uint32_t y) {
  uint32_t result = kMixMultL * x - kMixMultR * y;
  result ^= result >> kXShift;
  return result;
}

}  // namespace

uint64_t seed_sequence_u64(const uint64_t* parts, size_t n) {
  // each integer becomes its 32-bit words, least significant first (0 is one word)
  std::vector<uint32_t> entropy;
  for (size_t i = 0; i < n; ++i) {
    uint64_t v = parts[i];
    do {
      entropy.push_back(static_cast<uint32_t>(v));
      v >>= 32;
    } while (v != 0);
  }
  uint32_t pool[kPool];
  uint32_t hash_const = kInitA;
  for (size_t i = 0; i < kPool; ++i) pool[i] = hashmix(i < entropy.size() ? entropy[i] : 0u, hash_const);
  for (size_t src = 0; src < kPool; ++src) {
    for (size_t dst = 0; dst < kPool; ++dst) {
      if (src != dst) pool[dst] = mix(pool[dst], hashmix(pool[src], hash_const));
    }
  }
  for (size_t src = kPool; src < entropy.size(); ++src) {
    for (size_t dst = 0; dst < kPool; ++dst) pool[dst] = mix(pool[dst], hashmix(entropy[src], hash_const));
  }
  // generate_state(2, uint64)[0]: the first two output words, little-endian
  uint32_t words[2];
  uint32_t out_const = kInitB;
  for (size_t i = 0; i < 2; ++i) {
    uint32_t v = pool[i % kPool] ^ out_const;
    out_const *= kMultB;
    v *= out_const;
    v ^= v >> kXShift;
    words[i] = v;
  }
  return static_cast<uint64_t>(words[0]) | (static_cast<uint64_t>(words[1]) << 32);
}

}  // namespace fedhpc
