// The GPU cache's insert kernel: one warp per row; lane 0 counts the miss in the frequency sketch,
// takes the set's lock and decides with policy.hpp's insert_into_set (the code the host simulator
// runs), the warp writes the row. Lookups on other streams may read the set meanwhile, so a slot is
// written as a seqlock writer: its word emptied (fence), the row written (fence), then the new word
// (tag and meta). Lookups change a word's meta only by atomicCAS from the word they read, so they
// cannot bring back a word the insert replaced.
#pragma once

#include <cstdint>

#include "gpu_cache/detail/lookup.cuh"
#include "gpu_cache/detail/rows.cuh"
#include "gpu_cache/policy.hpp"

// Resident blocks of 256 threads per SM the insert kernel is compiled for (its register budget); 1
// lets the compiler take what it likes. Only to measure the alternatives:
// pip install -C cmake.define.TRITONREC_INSERT_MIN_BLOCKS=4 .
#ifndef TRITONREC_INSERT_MIN_BLOCKS
#define TRITONREC_INSERT_MIN_BLOCKS 1
#endif

namespace tritonrec::detail {

constexpr int kInsertThreads = 256;

struct InsertKernelParams {
  unsigned long long* words;  // (sets, kWays) slot words
  int32_t* locks;            // (sets,)
  int64_t sets;
  int64_t dim;
  Eviction policy;
  const int64_t* keys;  // (n,)
  const float* values;  // (n, dim)
  int64_t n;
  uint32_t tick;
  FrequencySketch sketch;  // counters == nullptr: no admission
};

template <typename T>
__global__ void __launch_bounds__(kInsertThreads, TRITONREC_INSERT_MIN_BLOCKS) insert_kernel(InsertKernelParams p, T* __restrict__ rows) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; i < p.n; i += warps) {
    const auto [set, tag] = slot_key(p.keys[i], p.sets);
    if (tag == kEmptyTag) continue;  // never cached (warp-uniform: one key a warp)
    unsigned long long* line = p.words + set * kWays;
    int way = 0;
    uint64_t new_word = 0;  // lane 0: the slot's word once its row is in
    if (lane == 0) {
      if (p.sketch.counters != nullptr) {
        p.sketch.count(static_cast<int64_t>(tag));
      }
      while (atomicCAS(p.locks + set, 0, 1) != 0) {
      }
      __threadfence();
      uint64_t tags[kWays];
      uint32_t meta[kWays];
      for (int w = 0; w < kWays; ++w) {  // through L2: other SMs wrote these under the lock
        const uint64_t word = __ldcg(line + w);
        tags[w] = word_tag(word);
        meta[w] = word_meta(word);
      }
      way = insert_into_set(tags, meta, kWays, tag, p.policy, p.tick, p.sketch.counters != nullptr ? &p.sketch : nullptr);
      if (way >= 0) {
        new_word = slot_word(tag, meta[way]);
        __stcg(line + way, static_cast<unsigned long long>(kEmptyTag));  // no lookup can match the slot while its row changes
        __threadfence();
      }
    }
    way = __shfl_sync(0xFFFFFFFFu, way, 0);
    if (way < 0) {  // admission refused it: nothing to write
      if (lane == 0) atomicExch(p.locks + set, 0);
      continue;
    }
    T* dst = rows + (set * kWays + way) * p.dim;
    const float* src = p.values + i * p.dim;
    for (int64_t d = lane; d < p.dim; d += 32) __stcg(dst + d, from_float<T>(src[d]));
    __threadfence();
    __syncwarp();
    if (lane == 0) {
      __stcg(line + way, static_cast<unsigned long long>(new_word));
      __threadfence();
    }
    if (lane == 0) atomicExch(p.locks + set, 0);
  }
}

}  // namespace tritonrec::detail

namespace tritonrec::detail {

/// Halves every counter of `a` (n,): the sketch's aging.
__global__ void halve_kernel(uint32_t* a, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    a[i] >>= 1;
  }
}

/// Halves the LFU use count of every held slot of `words` (n,): by atomicCAS from the word read, so a
/// word that an insert or a lookup changed meanwhile is left as they wrote it.
__global__ void halve_counts_kernel(unsigned long long* words, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t word = __ldcg(words + i);
    const uint64_t tag = word_tag(word);
    if (tag != kEmptyTag && word_meta(word) != 0) atomicCAS(words + i, word, slot_word(tag, word_meta(word) >> 1));
  }
}

}  // namespace tritonrec::detail
