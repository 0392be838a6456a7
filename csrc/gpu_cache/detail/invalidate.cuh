// The GPU cache's invalidate kernel: one warp per key; the lane holding its tag empties its slot (by
// atomicCAS from the word read: a word an insert changed meanwhile holds another key).
#pragma once

#include <cstdint>

#include "gpu_cache/detail/lookup.cuh"
#include "gpu_cache/policy.hpp"

namespace tritonrec::detail {

__global__ void invalidate_kernel(unsigned long long* words, int64_t sets, const int64_t* keys, int64_t n) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; i < n; i += warps) {
    const auto [set, tag] = slot_key(keys[i], sets);
    if (lane < kWays && tag != kEmptyTag) {
      unsigned long long* word = words + set * kWays + lane;
      const uint64_t held = *word;
      if (word_tag(held) == tag) atomicCAS(word, held, static_cast<unsigned long long>(kEmptyTag));
    }
  }
}

}  // namespace tritonrec::detail
