// Replacement decisions of the set-associative caches (GPU cache and its host twin).
//
// The same functions run in the CUDA kernels and in the host simulator that the CPU tests drive
// with access traces, so the decision code tested on the CPU is the code the GPU runs.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define TRITONREC_HD __host__ __device__ __forceinline__
#else
#define TRITONREC_HD inline
#endif

namespace tritonrec {

/// Which held row a full set gives up for a new one.
enum class Eviction : int32_t {
  kLru = 0,  ///< the row used longest ago (meta = clock tick of the last use)
  kLfu = 1,  ///< the row used least often (meta = saturating use count, halved on aging)
};

/// Empty slot marker of a key array (no valid key equals it).
constexpr int64_t kEmptyKey = INT64_MIN;

/// 64-bit mix (splitmix64 finaliser): set selection and the sketch's hashes.
TRITONREC_HD uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

/// The set a key lives in, among `sets` sets.
TRITONREC_HD int64_t set_of(int64_t key, int64_t sets) {
  return static_cast<int64_t>(mix64(static_cast<uint64_t>(key)) % static_cast<uint64_t>(sets));
}

/// The meta value a slot gets when its row is used at clock `tick` (LRU) or used once more (LFU).
TRITONREC_HD uint32_t touched_meta(Eviction policy, uint32_t old_meta, uint32_t tick) {
  if (policy == Eviction::kLru) return tick;
  return old_meta == 0xFFFFFFFFu ? old_meta : old_meta + 1;
}

/// The meta value of a row just inserted at clock `tick`.
TRITONREC_HD uint32_t inserted_meta(Eviction policy, uint32_t tick) { return policy == Eviction::kLru ? tick : 1u; }

/// True when slot a (meta_a) should be evicted before slot b (meta_b): the older (LRU) or the less
/// used (LFU); ties go to the lower way so every caller picks the same victim.
TRITONREC_HD bool evicts_before(uint32_t meta_a, int way_a, uint32_t meta_b, int way_b) {
  return meta_a < meta_b || (meta_a == meta_b && way_a < way_b);
}

/// The way a new key takes in a set: the way already holding `key`, else the first empty way,
/// else the way that `evicts_before` every other. `keys` and `meta` are the set's `ways` entries.
TRITONREC_HD int choose_way(const int64_t* keys, const uint32_t* meta, int ways, int64_t key) {
  int empty = -1;
  int victim = 0;
  for (int w = 0; w < ways; ++w) {
    if (keys[w] == key) return w;
    if (keys[w] == kEmptyKey) {
      if (empty < 0) empty = w;
    } else if (w > 0 && evicts_before(meta[w], w, meta[victim], victim)) {
      victim = w;
    }
  }
  if (empty >= 0) return empty;
  return victim;
}

}  // namespace tritonrec
