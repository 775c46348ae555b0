// CUDA runtime queries. Linked against the static runtime, so this works on
// hosts without a GPU or driver: any error there means "no device".
#include <cuda_runtime.h>

namespace fedhpc {

int cuda_device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later CUDA calls are not affected
    return 0;
  }
  return count;
}

}  // namespace fedhpc
