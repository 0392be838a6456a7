// The GPU cache's insert kernel: one warp per row; lane 0 takes the set's lock and picks the way
// with policy.hpp's choose_way (the code the host simulator runs), the warp writes the row.
#pragma once

#include <cstdint>

#include "gpu_cache/detail/lookup.cuh"
#include "gpu_cache/detail/rows.cuh"
#include "gpu_cache/policy.hpp"

namespace tritonrec::detail {

struct InsertKernelParams {
  int64_t* set_keys;  // (sets, kWays)
  uint32_t* meta;     // (sets, kWays)
  int32_t* locks;     // (sets,)
  int64_t sets;
  int64_t dim;
  Eviction policy;
  const int64_t* keys;  // (n,)
  const float* values;  // (n, dim)
  int64_t n;
  uint32_t tick;
};

template <typename T>
__global__ void insert_kernel(InsertKernelParams p, T* __restrict__ rows) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; i < p.n; i += warps) {
    const int64_t key = p.keys[i];
    const int64_t set = set_of(key, p.sets);
    int way = 0;
    if (lane == 0) {
      while (atomicCAS(p.locks + set, 0, 1) != 0) {
      }
      __threadfence();
      int64_t keys[kWays];
      uint32_t meta[kWays];
      for (int w = 0; w < kWays; ++w) {  // through L2: other SMs wrote these under the lock
        keys[w] = __ldcg(p.set_keys + set * kWays + w);
        meta[w] = __ldcg(p.meta + set * kWays + w);
      }
      way = choose_way(keys, meta, kWays, key);
      __stcg(p.set_keys + set * kWays + way, key);
      __stcg(p.meta + set * kWays + way, inserted_meta(p.policy, p.tick));
    }
    way = __shfl_sync(0xFFFFFFFFu, way, 0);
    T* dst = rows + (set * kWays + way) * p.dim;
    const float* src = p.values + i * p.dim;
    for (int64_t d = lane; d < p.dim; d += 32) dst[d] = from_float<T>(src[d]);
    __threadfence();
    __syncwarp();
    if (lane == 0) atomicExch(p.locks + set, 0);
  }
}

}  // namespace tritonrec::detail
