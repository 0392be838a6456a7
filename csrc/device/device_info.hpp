// Device discovery for embedding_cache._core: how many CUDA devices the runtime sees.
#pragma once

#include <string>

namespace tritonrec {

/// Result of asking the CUDA runtime for its devices.
struct DeviceCount {
  int count = 0;        ///< Number of CUDA devices visible to this process (0 when none or on error).
  std::string error{};  ///< Empty on success; else the runtime's reason (e.g. no driver), or why the
                        ///< module cannot ask (built without CUDA).
};

/// Asks the CUDA runtime for the number of visible devices. Never throws; the reason for a count of
/// 0 is in `error`. Synchronous; touches no device memory.
DeviceCount cuda_device_count() noexcept;

}  // namespace tritonrec
