#include "device/device_info.hpp"

#include <cuda_runtime_api.h>

namespace tritonrec {

DeviceCount cuda_device_count() noexcept {
  DeviceCount result;
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    result.error = std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
    (void)cudaGetLastError();  // clear the sticky error so later calls start clean
    return result;
  }
  result.count = count;
  return result;
}

}  // namespace tritonrec
