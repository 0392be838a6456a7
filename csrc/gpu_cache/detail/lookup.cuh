// The GPU cache's lookup kernel: one half-warp per key; its 16 lanes probe the key's 16-way set
// (one 128-byte line of keys) at once and copy the row. Each half-warp handles kUnroll keys per
// step, issuing all their probes before using any, to keep more loads in flight.
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

/// One key's outcome: copy its row (hit) or zero it and list it (miss). `ballot` is the warp's.
template <typename T>
__device__ __forceinline__ void finish_key(const LookupKernelParams& p, const T* __restrict__ rows, int64_t i, int64_t set,
                                           unsigned ballot, int half, int l16) {
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

/// Keys per half-warp per step: all their probes are issued before any row is copied.
constexpr int kUnroll = 2;  // 4 measured slower on an H200 (register pressure)

template <typename T>
__global__ void lookup_kernel(LookupKernelParams p, const T* __restrict__ rows) {
  const int lane = threadIdx.x & 31;
  const int half = lane >> 4;  // which of the warp's two half-warps
  const int l16 = lane & 15;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  constexpr int kPerWarp = 2 * kUnroll;
  // a warp step covers kPerWarp keys: half-warp h takes keys kPerWarp * w + 2u + h
  for (int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; kPerWarp * w < p.n; w += warps) {
    int64_t index[kUnroll], set[kUnroll], key[kUnroll], held[kUnroll];
    bool valid[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      index[u] = kPerWarp * w + 2 * u + half;
      valid[u] = index[u] < p.n;
      key[u] = valid[u] ? p.keys[index[u]] : kEmptyKey;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      set[u] = set_of(key[u], p.sets);
      held[u] = valid[u] ? p.set_keys[set[u] * kWays + l16] : kEmptyKey;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const unsigned ballot = __ballot_sync(0xFFFFFFFFu, valid[u] && held[u] == key[u] && key[u] != kEmptyKey);
      if (valid[u]) finish_key(p, rows, index[u], set[u], ballot, half, l16);
    }
  }
}

}  // namespace tritonrec::detail
