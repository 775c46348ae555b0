// Process-wide settings shared by all kernels: thread count and CPU features.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "fedhpc.hpp"

namespace fedhpc {
namespace {

std::atomic<int> g_num_threads{0};  // 0: not set yet, use the OpenMP default

bool simd_disabled_by_env() {
  const char* v = std::getenv("FEDHPC_DISABLE_SIMD");
  return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}

}  // namespace

int num_threads() {
  const int n = g_num_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : omp_get_max_threads();
}

void set_num_threads(int n) { g_num_threads.store(n, std::memory_order_relaxed); }

bool use_avx2() {
  static const bool enabled = [] {
    __builtin_cpu_init();
    return !simd_disabled_by_env() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  }();
  return enabled;
}

bool use_sse42() {
  static const bool enabled = [] {
    __builtin_cpu_init();
    return !simd_disabled_by_env() && __builtin_cpu_supports("sse4.2");
  }();
  return enabled;
}

}  // namespace fedhpc
