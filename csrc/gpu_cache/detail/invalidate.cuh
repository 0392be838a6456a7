// The GPU cache's invalidate kernel: one warp per key; the lane holding it empties its slot.
#pragma once

#include <cstdint>

#include "gpu_cache/detail/lookup.cuh"
#include "gpu_cache/policy.hpp"

namespace tritonrec::detail {

__global__ void invalidate_kernel(int64_t* set_keys, int64_t sets, const int64_t* keys, int64_t n) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; i < n; i += warps) {
    const int64_t key = keys[i];
    const int64_t set = set_of(key, sets);
    if (lane < kWays && key != kEmptyKey && set_keys[set * kWays + lane] == key) set_keys[set * kWays + lane] = kEmptyKey;
  }
}

}  // namespace tritonrec::detail
