// Golomb-Rice coding of strictly ascending index sets (the gaps between
// consecutive indices are roughly geometric for top-k / random-k masks).
// Bit layout: per gap, (gap >> b) one-bits, a zero-bit, the low b bits MSB
// first; bits fill bytes MSB first and the last byte is zero-padded.
#include "fedhpc.hpp"

namespace fedhpc {
namespace {

FEDHPC_INLINE uint64_t gap_at(const uint32_t* idx, size_t j) {
  return j == 0 ? idx[0] : static_cast<uint64_t>(idx[j]) - idx[j - 1] - 1;
}

class BitWriter {
 public:
  explicit BitWriter(uint8_t* out) : out_(out) {}

  // Appends the low `len` bits of v (len <= 32, no bits set above), MSB first.
  void put(uint32_t v, unsigned len) {
    acc_ = (acc_ << len) | v;
    used_ += len;
    while (used_ >= 8) {
      used_ -= 8;
      *out_++ = static_cast<uint8_t>(acc_ >> used_);
    }
  }

  void put_ones(uint64_t count) {
    for (; count >= 32; count -= 32) put(0xffffffffu, 32);
    put((uint32_t{1} << count) - 1u, static_cast<unsigned>(count));
  }

  void flush() {
    if (used_ > 0) *out_++ = static_cast<uint8_t>(acc_ << (8 - used_));
  }

 private:
  uint8_t* out_;
  uint64_t acc_ = 0;  // pending bits in the low `used_` bits (upper bits are stale)
  unsigned used_ = 0;
};

class BitReader {
 public:
  BitReader(const uint8_t* buf, size_t len) : buf_(buf), len_(len), total_(uint64_t{8} * len) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return total_ - pos_; }
  void skip(uint64_t bits) { pos_ += bits; }

  // The 64 bits from the current position, MSB first; zeros past the end.
  uint64_t peek() const {
    const size_t byte = static_cast<size_t>(pos_ >> 3);
    const unsigned shift = static_cast<unsigned>(pos_ & 7);
    uint64_t w = 0;
    for (size_t j = 0; j < 8; ++j) w = (w << 8) | byte_at(byte + j);
    if (shift != 0) w = (w << shift) | (byte_at(byte + 8) >> (8 - shift));
    return w;
  }

 private:
  uint64_t byte_at(size_t i) const { return i < len_ ? buf_[i] : 0; }

  const uint8_t* buf_;
  size_t len_;
  uint64_t total_;
  uint64_t pos_ = 0;
};

}  // namespace

// b = floor(log2(mean gap)), the mean gap of k indices in [0, n) being
// (n - k) / k: close to the optimal Rice parameter for geometric gaps.
unsigned rice_param(uint64_t n, uint64_t k) {
  if (k == 0 || n <= k) return 0;
  const uint64_t mean_gap = (n - k) / k;
  if (mean_gap == 0) return 0;
  return std::min(31u, static_cast<unsigned>(63 - __builtin_clzll(mean_gap)));
}

uint64_t rice_encoded_bits(const uint32_t* idx, size_t k, unsigned b) {
  uint64_t bits = 0;
  for (size_t j = 0; j < k; ++j) bits += (gap_at(idx, j) >> b) + 1 + b;
  return bits;
}

void rice_encode(const uint32_t* idx, size_t k, unsigned b, uint8_t* out) {
  BitWriter writer(out);
  const uint64_t low_mask = (uint64_t{1} << b) - 1;
  for (size_t j = 0; j < k; ++j) {
    const uint64_t gap = gap_at(idx, j);
    writer.put_ones(gap >> b);
    writer.put(0, 1);
    writer.put(static_cast<uint32_t>(gap & low_mask), b);
  }
  writer.flush();
}

std::string rice_decode(const uint8_t* buf, size_t len, size_t k, uint64_t n, unsigned b, uint32_t* out) {
  BitReader reader(buf, len);
  const uint64_t max_quotient = n >> b;  // a longer run of ones gives a gap >= n
  uint64_t prev = 0;
  for (size_t j = 0; j < k; ++j) {
    const auto where = [&] { return " in code " + std::to_string(j) + " of " + std::to_string(k); };
    uint64_t quotient = 0;
    for (;;) {
      const uint64_t w = reader.peek();
      const unsigned ones = ~w == 0 ? 64u : static_cast<unsigned>(__builtin_clzll(~w));
      quotient += ones;
      if (quotient > max_quotient) return "unary run too long (index >= n)" + where();
      if (ones < 64) {
        if (reader.remaining() <= ones) return "stream truncated" + where();
        reader.skip(ones + 1);
        break;
      }
      reader.skip(64);
    }
    if (reader.remaining() < b) return "stream truncated" + where();
    const uint64_t low = b == 0 ? 0 : reader.peek() >> (64 - b);
    reader.skip(b);
    const uint64_t gap = (quotient << b) | low;
    const uint64_t value = j == 0 ? gap : prev + 1 + gap;
    if (value >= n) return "decoded index " + std::to_string(value) + " >= n = " + std::to_string(n) + where();
    out[j] = static_cast<uint32_t>(value);
    prev = value;
  }
  const uint64_t used_bytes = (reader.pos() + 7) / 8;
  if (len > used_bytes) return std::to_string(len - used_bytes) + " trailing byte(s) after the last code";
  const unsigned tail_bits = static_cast<unsigned>(reader.pos() & 7);
  if (tail_bits != 0 && (buf[used_bytes - 1] & (0xffu >> tail_bits)) != 0) return "nonzero padding bits";
  return {};
}

}  // namespace fedhpc
