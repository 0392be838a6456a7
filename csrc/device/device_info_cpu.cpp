#include "device/device_info.hpp"

namespace tritonrec {

DeviceCount cuda_device_count() noexcept {
  return DeviceCount{0, "embedding_cache._core was built without CUDA (TRITONREC_CUDA=OFF or no nvcc)"};
}

}  // namespace tritonrec
