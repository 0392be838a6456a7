// The GPU cache's lookup kernel: one half-warp per key; its 16 lanes probe the key's 16-way set
// (one 128-byte line of keys) at once and copy the row.
#pragma once

#include <cstdint>

#include "gpu_cache/detail/rows.cuh"
#include "gpu_cache/policy.hpp"

namespace tritonrec::detail {

constexpr int kWays = 16;

struct LookupKernelParams {
  const int64_t* set_keys;  // (sets, kWays)
  uint32_t* meta;           // (sets, kWays)
  int64_t sets;
  int64_t dim;
  Eviction policy;
  const int64_t* keys;  // (n,)
  int64_t n;
  float* out;            // (n, dim)
  int32_t* miss_index;   // (n,)
  int32_t* miss_count;   // scalar, zeroed before the launch
  uint32_t tick;
};

template <typename T>
__global__ void lookup_kernel(LookupKernelParams p, const T* __restrict__ rows) {
  const int lane = threadIdx.x & 31;
  const int half = lane >> 4;  // which of the warp's two keys
  const int l16 = lane & 15;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; 2 * w < p.n; w += warps) {
    const int64_t i = 2 * w + half;
    const bool valid = i < p.n;
    const int64_t key = valid ? p.keys[i] : kEmptyKey;
    const int64_t set = set_of(key, p.sets);
    const int64_t held = valid ? p.set_keys[set * kWays + l16] : kEmptyKey;
    const unsigned ballot = __ballot_sync(0xFFFFFFFFu, valid && held == key && key != kEmptyKey);
    if (!valid) continue;
    const unsigned match = (ballot >> (16 * half)) & 0xFFFFu;
    float* dst = p.out + i * p.dim;
    if (match) {
      const int way = __ffs(match) - 1;
      const int64_t slot = set * kWays + way;
      copy_row_out(rows + slot * p.dim, dst, p.dim, l16, 16);
      if (l16 == way) {
        // LRU's new meta does not depend on the old one: write without reading (one less random read)
        p.meta[slot] = p.policy == Eviction::kLru ? p.tick : touched_meta(p.policy, p.meta[slot], p.tick);
      }
    } else {
      for (int64_t d = l16; d < p.dim; d += 16) dst[d] = 0.0f;
      if (l16 == 0) p.miss_index[atomicAdd(p.miss_count, 1)] = static_cast<int32_t>(i);
    }
  }
}

}  // namespace tritonrec::detail
