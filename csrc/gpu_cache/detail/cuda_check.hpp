// Host-side helpers of the GPU cache's CUDA calls: errors as exceptions, and the current device for a scope.
#pragma once

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace tritonrec::detail {

/// Throws std::runtime_error naming `what` and the error when `status` is not cudaSuccess (the
/// runtime's last error is cleared first, so that later calls do not report it again).
inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorName(status) + ": " + cudaGetErrorString(status));
  }
}

/// Makes `device` current for a scope and restores the previous device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { (void)cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace tritonrec::detail
