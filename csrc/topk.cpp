// Sparsification: exact top-k by magnitude (optionally fused with error
// feedback), random-k index sets, gathers and index validation.
//
// top-k is a threshold selection, not a sort. Keys are the bits of |x| as
// uint32 (NaN > Inf > finite, like magnitudes). A stratified sample gives a
// threshold t a little below the k-th largest key; one parallel pass collects,
// in index order, the indices with key > t and the lowest-index ones with
// key == t (so long runs of equal values, e.g. zeros, cost no memory); the
// exact k-th key is then found among the few candidates. Ties at the k-th key
// go to the lowest indices, so the result is a function of the input alone.
#include <cmath>
#include <functional>
#include <vector>

#include "fedhpc.hpp"

namespace fedhpc {
namespace {

// The sample: n/16 keys, at least min(n, kMinSample) and at most kSampleSize. A
// small model's top-k (a few 10k values, selected thousands of times a round by a
// rank of many clients) would otherwise pay for sorting a sample as large as itself.
constexpr size_t kSampleSize = 65536;
constexpr size_t kMinSample = 1024;
// Below this many candidates the k-th largest is found by nth_element on a copy,
// not by the radix select, whose two 64k-bin histograms cost more than the keys.
constexpr size_t kRadixMin = 65536;
constexpr uint64_t kSampleSeed = 0x5A3D1E5B0C7F9A21ull;  // fixed: sample positions depend on n only
constexpr size_t kCopyChunk = size_t{1} << 16;

FEDHPC_INLINE uint32_t magnitude_key(float v) { return float_bits(v) & 0x7fffffffu; }

// One key from each of kSampleSize equal strata of [0, n), at a pseudo-random
// offset so that periodic data does not alias with the stride. key_at(i)
// must not modify anything.
template <class KeyAt>
std::vector<uint32_t> sample_keys(size_t n, const KeyAt& key_at) {
  const size_t s = std::min(std::max(n / 16, std::min(n, kMinSample)), kSampleSize);
  std::vector<uint32_t> sample(s);
  // Stratum j is [j*n/s, (j+1)*n/s), stepped without a division per key (two 64-bit
  // divisions per key cost more than everything else the top-k of a small model does),
  // the offset in it by a multiply-high.
  const size_t step = n / s, step_rem = n % s;
  parallel_chunks(s, 4096, [&](size_t lo, size_t hi) {
    size_t first = lo * n / s, rem = lo * n % s;
    for (size_t j = lo; j < hi; ++j) {
      size_t next = first + step;
      rem += step_rem;
      if (rem >= s) {
        rem -= s;
        ++next;
      }
      const auto width = static_cast<unsigned __int128>(next - first);
      sample[j] = key_at(first + static_cast<size_t>((random_u64(kSampleSeed, j) * width) >> 64));
      first = next;
    }
  });
  return sample;
}

struct Threshold {
  uint32_t key;
  double fraction_above;  // estimated fraction of all keys above it
};

// Threshold for the given attempt: the sample key at a rank above the
// expected rank of the k-th largest key by a safety margin of about four
// standard deviations, widened 8x per failed attempt; 0 (everything) once
// the rank leaves the sample.
Threshold sample_threshold(std::vector<uint32_t>& sample, size_t n, size_t k, int attempt) {
  const auto s = static_cast<double>(sample.size());
  const double expected = static_cast<double>(k) * s / static_cast<double>(n);
  const double rank = (expected + 4.0 * std::sqrt(expected) + 8.0) * std::pow(8.0, attempt);
  if (rank >= s) return {0, 1.0};
  const auto nth = sample.begin() + static_cast<std::ptrdiff_t>(rank);
  std::nth_element(sample.begin(), nth, sample.end(), std::greater<uint32_t>());
  return {*nth, rank / s};
}

// What one pass with threshold t keeps, each list ascending.
struct Candidates {
  std::vector<uint32_t> above;  // every index with key > t
  std::vector<uint32_t> at;     // the lowest-index min(k, count_at) indices with key == t
  size_t count_at = 0;          // number of indices with key == t

  size_t reaching() const { return above.size() + count_at; }  // number of keys >= t
};

// One pass over [0, n). key_at(i) is called exactly once per i, so it may
// have side effects (the fused error-feedback update). Keys are computed in
// groups of kGroup with a vectorizable "any key >= t" test; only groups that
// pass (about k/n of them for ordinary data) are classified, branch-free, into
// batch buffers that are appended to the thread's lists.
template <class KeyAt>
Candidates collect_candidates(size_t n, size_t k, const Threshold& threshold, const KeyAt& key_at) {
  std::vector<Candidates> parts(static_cast<size_t>(num_threads()));
  parallel_region([&](int tid, int nth) {
    size_t lo, hi;
    split_range(n, tid, nth, lo, hi);
    Candidates& out = parts[static_cast<size_t>(tid)];
    // Reserving the expected size (untouched pages cost nothing) avoids
    // regrowing, which dominates for large k.
    out.above.reserve(static_cast<size_t>(1.25 * threshold.fraction_above * static_cast<double>(hi - lo)));
    const uint32_t t = threshold.key;
    dispatch_simd([&]() FEDHPC_SIMD_BODY {
      constexpr size_t kGroup = 16;
      constexpr size_t kBatch = 1024;
      uint32_t keys[kGroup];
      uint32_t above[kBatch];
      uint32_t at[kBatch];
      for (size_t base = lo; base < hi; base += kBatch) {
        const size_t end = std::min(hi, base + kBatch);
        size_t n_above = 0;
        size_t n_at = 0;
        const auto classify = [&](size_t i, uint32_t key) FEDHPC_SIMD_BODY {
          above[n_above] = static_cast<uint32_t>(i);
          at[n_at] = static_cast<uint32_t>(i);
          n_above += key > t;
          n_at += key == t;
        };
        size_t g = base;
        for (; g + kGroup <= end; g += kGroup) {
          uint32_t reach = 0;
          for (size_t j = 0; j < kGroup; ++j) {
            keys[j] = key_at(g + j);
            reach |= keys[j] >= t;
          }
          if (reach == 0) continue;
          for (size_t j = 0; j < kGroup; ++j) classify(g + j, keys[j]);
        }
        for (; g < end; ++g) classify(g, key_at(g));
        out.above.insert(out.above.end(), above, above + n_above);
        // No thread needs more than k ties: the global lowest k are among the
        // per-thread lowest k, concatenated in thread (= index) order.
        out.at.insert(out.at.end(), at, at + std::min(n_at, k - std::min(k, out.at.size())));
        out.count_at += n_at;
      }
    });
  });
  Candidates all;
  size_t total_above = 0;
  for (const Candidates& part : parts) total_above += part.above.size();
  all.above.reserve(total_above);
  for (const Candidates& part : parts) {
    all.above.insert(all.above.end(), part.above.begin(), part.above.end());
    all.at.insert(all.at.end(), part.at.begin(), part.at.end());
    all.count_at += part.count_at;
  }
  all.at.resize(std::min(all.at.size(), k));
  return all;
}

// The k-th largest of keys (1 <= k <= keys.size()): for many keys a radix select,
// one 16-bit histogram for the high half, one for the low half within the bucket.
uint32_t kth_largest(const std::vector<uint32_t>& keys, size_t k) {
  if (keys.size() < kRadixMin) {
    std::vector<uint32_t> copy(keys);
    const auto nth = copy.begin() + static_cast<std::ptrdiff_t>(k - 1);
    std::nth_element(copy.begin(), nth, copy.end(), std::greater<uint32_t>());
    return *nth;
  }
  std::vector<size_t> histogram(size_t{1} << 16);
  const auto find_bucket = [&](size_t& rank) {
    uint32_t bucket = 0xffffu;
    for (; histogram[bucket] < rank; --bucket) rank -= histogram[bucket];
    return bucket;
  };
  for (const uint32_t key : keys) ++histogram[key >> 16];
  size_t rank = k;
  const uint32_t high = find_bucket(rank);
  std::fill(histogram.begin(), histogram.end(), 0);
  for (const uint32_t key : keys) {
    if ((key >> 16) == high) ++histogram[key & 0xffffu];
  }
  return (high << 16) | find_bucket(rank);
}

// The exact top-k of x among `candidates` (ascending, holding every index
// whose key is >= the k-th largest key of x), written in index order.
void select_among(const float* x, const std::vector<uint32_t>& candidates, size_t k, uint32_t* idx, float* vals) {
  const size_t c = candidates.size();
  std::vector<uint32_t> keys(c);
  for (size_t j = 0; j < c; ++j) keys[j] = magnitude_key(x[candidates[j]]);
  const uint32_t t = c == k ? 0 : kth_largest(keys, k);
  const size_t above = static_cast<size_t>(std::count_if(keys.begin(), keys.end(), [t](uint32_t v) { return v > t; }));
  size_t ties_left = k - above;  // keys equal to t taken, lowest indices first
  size_t out = 0;
  for (size_t j = 0; j < c && out < k; ++j) {
    if (keys[j] > t || (keys[j] == t && ties_left > 0)) {
      if (keys[j] == t) --ties_left;
      idx[out] = candidates[j];
      vals[out] = x[candidates[j]];
      ++out;
    }
  }
}

void select_top(const float* x, const Candidates& c, size_t k, uint32_t* idx, float* vals) {
  if (c.above.size() >= k) {
    select_among(x, c.above, k, idx, vals);
    return;
  }
  // All keys above t, then the lowest-index keys equal to t.
  const size_t ties = k - c.above.size();
  std::merge(c.above.begin(), c.above.end(), c.at.begin(), c.at.begin() + static_cast<std::ptrdiff_t>(ties), idx);
  for (size_t j = 0; j < k; ++j) vals[j] = x[idx[j]];
}

// top-k of x (x is final after the first pass). first_key_at(i) is used for
// the first pass; it may update x[i] (error feedback), so the sample uses
// sample_key_at, which computes the same key without writing.
template <class SampleKeyAt, class FirstKeyAt>
void topk_select(const float* x, size_t n, size_t k, const SampleKeyAt& sample_key_at, const FirstKeyAt& first_key_at,
                 uint32_t* idx, float* vals) {
  std::vector<uint32_t> sample = sample_keys(n, sample_key_at);
  int attempt = 0;
  Candidates candidates = collect_candidates(n, k, sample_threshold(sample, n, k, attempt), first_key_at);
  while (candidates.reaching() < k) {  // the sample overestimated the threshold: retry lower (finally 0: all)
    candidates = collect_candidates(n, k, sample_threshold(sample, n, k, ++attempt),
                                    [x](size_t i) FEDHPC_SIMD_BODY { return magnitude_key(x[i]); });
  }
  select_top(x, candidates, k, idx, vals);
}

// Set of indices in [0, n) for Floyd's algorithm: a bitmap when it is small
// (at most 8 words per value, or 128 KiB), else an open-addressing hash set
// sized for k values. Either way the chosen indices are the same.
class IndexSet {
 public:
  IndexSet(uint64_t n, uint64_t k) {
    use_bitmap_ = n / 64 <= 8 * k || n <= (uint64_t{1} << 20);
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
  const auto key_at = [x](size_t i) FEDHPC_SIMD_BODY { return magnitude_key(x[i]); };
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
  const auto accumulate_key_at = [=](size_t i) FEDHPC_SIMD_BODY {
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
