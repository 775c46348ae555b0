// Sparsification: exact top-k by magnitude (optionally fused with error
// feedback), random-k index sets, gathers and index validation.
//
// top-k is a threshold selection, not a sort. Keys are the bits of |x| as
// uint32 (NaN > Inf > finite, like magnitudes). A strided sample gives a
// threshold a little below the k-th largest key; one parallel pass collects
// the indices whose key reaches it (in index order); the exact k-th key is
// then selected among those few candidates. Ties at the k-th key go to the
// lowest indices, so the result is a function of the input alone.
#include <cmath>
#include <functional>
#include <vector>

#include "fedhpc.hpp"

namespace fedhpc {
namespace {

constexpr size_t kSampleSize = 65536;
constexpr size_t kScanBatch = 1024;  // candidates are gathered branch-free in batches of this size
constexpr size_t kCopyChunk = size_t{1} << 16;

FEDHPC_INLINE uint32_t magnitude_key(float v) { return float_bits(v) & 0x7fffffffu; }

// Strided sample of the keys; key_at(i) must not modify anything.
template <class KeyAt>
std::vector<uint32_t> sample_keys(size_t n, const KeyAt& key_at) {
  const size_t s = std::min(n, kSampleSize);
  std::vector<uint32_t> sample(s);
  parallel_chunks(s, 4096, [&](size_t lo, size_t hi) {
    for (size_t j = lo; j < hi; ++j) sample[j] = key_at(j * n / s);
  });
  return sample;
}

// Threshold for the given attempt: the sample key at a rank above the
// expected rank of the k-th largest key by a safety margin of about four
// standard deviations, widened 8x per failed attempt; 0 (everything) once
// the rank leaves the sample.
uint32_t sample_threshold(std::vector<uint32_t>& sample, size_t n, size_t k, int attempt) {
  const double expected = static_cast<double>(k) * static_cast<double>(sample.size()) / static_cast<double>(n);
  const double rank = (expected + 4.0 * std::sqrt(expected) + 8.0) * std::pow(8.0, attempt);
  if (rank >= static_cast<double>(sample.size())) return 0;
  const auto nth = sample.begin() + static_cast<std::ptrdiff_t>(rank);
  std::nth_element(sample.begin(), nth, sample.end(), std::greater<uint32_t>());
  return *nth;
}

// All i in [0, n) with key_at(i) >= t, ascending. key_at(i) is called exactly
// once per i, so it may have side effects (the fused error-feedback update).
template <class KeyAt>
std::vector<uint32_t> collect_candidates(size_t n, uint32_t t, const KeyAt& key_at) {
  std::vector<std::vector<uint32_t>> parts(static_cast<size_t>(num_threads()));
  parallel_region([&](int tid, int nth) {
    size_t lo, hi;
    split_range(n, tid, nth, lo, hi);
    std::vector<uint32_t>& out = parts[static_cast<size_t>(tid)];
    uint32_t batch[kScanBatch];
    for (size_t base = lo; base < hi; base += kScanBatch) {
      const size_t len = std::min(kScanBatch, hi - base);
      size_t count = 0;
      for (size_t j = 0; j < len; ++j) {
        batch[count] = static_cast<uint32_t>(base + j);
        count += key_at(base + j) >= t;
      }
      out.insert(out.end(), batch, batch + count);
    }
  });
  size_t total = 0;
  for (const auto& part : parts) total += part.size();
  std::vector<uint32_t> all;
  all.reserve(total);
  for (const auto& part : parts) all.insert(all.end(), part.begin(), part.end());
  return all;
}

// The exact top-k of x among `candidates` (ascending, containing every index
// whose key is >= the k-th largest key of x), written in index order.
void select_top(const float* x, const std::vector<uint32_t>& candidates, size_t k, uint32_t* idx, float* vals) {
  const size_t c = candidates.size();
  if (c == k) {
    for (size_t j = 0; j < k; ++j) {
      idx[j] = candidates[j];
      vals[j] = x[candidates[j]];
    }
    return;
  }
  std::vector<uint32_t> keys(c);
  for (size_t j = 0; j < c; ++j) keys[j] = magnitude_key(x[candidates[j]]);
  const auto kth = keys.begin() + static_cast<std::ptrdiff_t>(k - 1);
  std::nth_element(keys.begin(), kth, keys.end(), std::greater<uint32_t>());
  const uint32_t t = *kth;
  const size_t above = static_cast<size_t>(std::count_if(keys.begin(), kth, [t](uint32_t v) { return v > t; }));
  size_t ties_left = k - above;  // keys equal to t taken, lowest indices first
  size_t out = 0;
  for (size_t j = 0; j < c && out < k; ++j) {
    const uint32_t i = candidates[j];
    const uint32_t key = magnitude_key(x[i]);
    if (key > t || (key == t && ties_left > 0)) {
      if (key == t) --ties_left;
      idx[out] = i;
      vals[out] = x[i];
      ++out;
    }
  }
}

// top-k of x (x is final after the first pass). first_key_at(i) is used for
// the sample and the first pass; it may update x[i] (error feedback), so the
// sample uses sample_key_at, which computes the same key without writing.
template <class SampleKeyAt, class FirstKeyAt>
void topk_select(const float* x, size_t n, size_t k, const SampleKeyAt& sample_key_at, const FirstKeyAt& first_key_at,
                 uint32_t* idx, float* vals) {
  std::vector<uint32_t> sample = sample_keys(n, sample_key_at);
  int attempt = 0;
  std::vector<uint32_t> candidates = collect_candidates(n, sample_threshold(sample, n, k, attempt), first_key_at);
  while (candidates.size() < k) {  // the sample overestimated the threshold: retry lower (finally 0: all)
    const uint32_t t = sample_threshold(sample, n, k, ++attempt);
    candidates = collect_candidates(n, t, [x](size_t i) { return magnitude_key(x[i]); });
  }
  select_top(x, candidates, k, idx, vals);
}

// Set of indices in [0, n) for Floyd's algorithm: a bitmap when n is small
// or k dense enough, else an open-addressing hash set sized for k values.
class IndexSet {
 public:
  IndexSet(uint64_t n, uint64_t k) {
    use_bitmap_ = n <= (uint64_t{1} << 27) || n / 64 <= k;
    if (use_bitmap_) {
      bitmap_.assign(static_cast<size_t>((n + 63) / 64), 0);
    } else {
      size_t capacity = 16;
      while (capacity < 2 * k) capacity *= 2;
      slots_.assign(capacity, kEmpty);
      mask_ = capacity - 1;
    }
  }
  bool uses_bitmap() const { return use_bitmap_; }
  const std::vector<uint64_t>& bitmap() const { return bitmap_; }

  // Inserts v; returns false if it was already present.
  bool insert(uint64_t v) {
    if (use_bitmap_) {
      uint64_t& word = bitmap_[static_cast<size_t>(v >> 6)];
      const uint64_t bit = uint64_t{1} << (v & 63);
      const bool fresh = (word & bit) == 0;
      word |= bit;
      return fresh;
    }
    for (size_t s = static_cast<size_t>(splitmix64(v)) & mask_;; s = (s + 1) & mask_) {
      if (slots_[s] == v) return false;
      if (slots_[s] == kEmpty) {
        slots_[s] = v;
        return true;
      }
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  bool use_bitmap_;
  std::vector<uint64_t> bitmap_;
  std::vector<uint64_t> slots_;
  size_t mask_ = 0;
};

}  // namespace

void topk(const float* x, size_t n, size_t k, uint32_t* idx, float* vals) {
  if (k == 0) return;
  const auto key_at = [x](size_t i) { return magnitude_key(x[i]); };
  topk_select(x, n, k, key_at, key_at, idx, vals);
}

void topk_ef(const float* update, float* residual, size_t n, size_t k, uint32_t* idx, float* vals) {
  if (k == 0) {
    parallel_chunks(n, kCopyChunk, [&](size_t lo, size_t hi) {
      for (size_t i = lo; i < hi; ++i) residual[i] = residual[i] + update[i];
    });
    return;
  }
  const auto sample_key_at = [=](size_t i) { return magnitude_key(residual[i] + update[i]); };
  const auto accumulate_key_at = [=](size_t i) {
    const float r = residual[i] + update[i];
    residual[i] = r;
    return magnitude_key(r);
  };
  topk_select(residual, n, k, sample_key_at, accumulate_key_at, idx, vals);
  parallel_chunks(k, kCopyChunk, [&](size_t lo, size_t hi) {
    for (size_t j = lo; j < hi; ++j) residual[idx[j]] = 0.0f;
  });
}

// Floyd's algorithm: for step c = 0..k-1 with j = n - k + c, draw
// t = floor(random_u64(seed, c) * (j + 1) / 2^64) in [0, j]; insert t, or j if
// t is already in the set. Then sort.
void randk_indices(uint64_t n, uint64_t k, uint64_t seed, uint32_t* out) {
  if (k == 0) return;
  IndexSet set(n, k);
  for (uint64_t c = 0; c < k; ++c) {
    const uint64_t j = n - k + c;
    const uint64_t t = static_cast<uint64_t>(
        (static_cast<unsigned __int128>(random_u64(seed, c)) * static_cast<unsigned __int128>(j + 1)) >> 64);
    uint64_t chosen = t;
    if (!set.insert(t)) {
      chosen = j;
      set.insert(j);
    }
    out[c] = static_cast<uint32_t>(chosen);
  }
  if (!set.uses_bitmap()) {
    std::sort(out, out + k);
    return;
  }
  size_t pos = 0;
  const std::vector<uint64_t>& words = set.bitmap();
  for (size_t w = 0; w < words.size(); ++w) {
    for (uint64_t bits = words[w]; bits != 0; bits &= bits - 1) {
      out[pos++] = static_cast<uint32_t>(w * 64 + static_cast<size_t>(__builtin_ctzll(bits)));
    }
  }
}

void gather(const float* x, const uint32_t* idx, size_t k, float* out) {
  parallel_chunks(k, kCopyChunk, [&](size_t lo, size_t hi) {
    for (size_t j = lo; j < hi; ++j) out[j] = x[idx[j]];
  });
}

size_t first_invalid_index(const uint32_t* idx, size_t k, uint64_t n, bool strictly_ascending) {
  const size_t chunk = kCopyChunk;
  const int64_t nchunks = static_cast<int64_t>((k + chunk - 1) / chunk);
  size_t first = k;
#pragma omp parallel for schedule(static) reduction(min : first) num_threads(num_threads())
  for (int64_t c = 0; c < nchunks; ++c) {
    const size_t lo = static_cast<size_t>(c) * chunk;
    const size_t hi = std::min(k, lo + chunk);
    for (size_t j = lo; j < hi; ++j) {
      if (idx[j] >= n || (strictly_ascending && j > 0 && idx[j] <= idx[j - 1])) {
        first = std::min(first, j);
        break;
      }
    }
  }
  return first;
}

}  // namespace fedhpc
