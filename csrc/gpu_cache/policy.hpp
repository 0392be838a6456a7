// Replacement and admission decisions of the set-associative caches (GPU cache and its host twin).
//
// The same functions run in the CUDA kernels and in the host simulator that the CPU tests drive
// with access traces, so the decision code tested on the CPU is the code the GPU runs.
#pragma once

#include <cstdint>

#include "common/mix.hpp"  // mix64, TRITONREC_HD

namespace tritonrec {

/// Which held row a full set gives up for a new one.
enum class Eviction : int32_t {
  kLru = 0,  ///< the row used longest ago (meta = clock tick of the last use)
  kLfu = 1,  ///< the row used least often (meta = saturating use count, halved on aging)
};

/// Empty slot marker of a key array (no valid key equals it).
constexpr int64_t kEmptyKey = INT64_MIN;

/// The set a key lives in, among `sets` sets: the high 64 bits of mix64(key) x sets (a multiply,
/// where a 64-bit modulo costs the GPU lookup a third of its speed at dim 32).
TRITONREC_HD int64_t set_of(int64_t key, int64_t sets) {
  const uint64_t h = mix64(static_cast<uint64_t>(key));
#if defined(__CUDA_ARCH__)
  return static_cast<int64_t>(__umul64hi(h, static_cast<uint64_t>(sets)));
#else
  return static_cast<int64_t>((static_cast<unsigned __int128>(h) * static_cast<uint64_t>(sets)) >> 64);
#endif
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

/// Counters per cached row in each of the sketch's 4 rows (64 bytes per row in all): a narrower
/// sketch mixes too many keys' counts to tell the keys at the edge of the cache apart. Host-twin
/// traces (1M-row Zipf(0.9) table, 10M lookups, 1% cache, LFU + admission, aging multiple 40):
/// 0.96 of the static optimum at 2 counters per row, 0.986 at 4; with the earlier sketch (one
/// power of two >= the rows, plain increments, aging multiple 10) 0.886.
constexpr int64_t kSketchWidthPerRow = 4;

/// Count-min sketch of how often keys missed: 4 rows of `width` uint32 counters, updated
/// conservatively (a miss raises only the key's counters that are below its new estimate). Held
/// rows' frequencies are their LFU use counts (meta); for LRU, the sketch's estimate.
struct FrequencySketch {
  uint32_t* counters = nullptr;  ///< (4, width)
  int64_t width = 0;

  TRITONREC_HD int64_t index(int row, int64_t key) const {
    return static_cast<int64_t>(mix64(static_cast<uint64_t>(key) + 0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(row + 1)) %
                                static_cast<uint64_t>(width));
  }
  /// The smallest of the key's 4 counters.
  TRITONREC_HD uint32_t estimate(int64_t key) const {
    uint32_t best = 0xFFFFFFFFu;
    for (int r = 0; r < 4; ++r) {
      const uint32_t c = counters[r * width + index(r, key)];
      best = c < best ? c : best;
    }
    return best;
  }
  /// Counts one more miss of `key` (conservative update; atomic on the device, where inserts of
  /// several keys count at once).
  TRITONREC_HD void count(int64_t key) {
    const uint32_t current = estimate(key);
    const uint32_t target = current == 0xFFFFFFFFu ? current : current + 1;
    for (int r = 0; r < 4; ++r) {
      uint32_t* c = counters + r * width + index(r, key);
#if defined(__CUDA_ARCH__)
      atomicMax(c, target);
#else
      if (*c < target) *c = target;
#endif
    }
  }
};

/// TinyLFU admission: a missed key takes a full set's victim slot only if it was seen more often.
TRITONREC_HD bool admits(uint32_t candidate_frequency, uint32_t victim_frequency) {
  return candidate_frequency > victim_frequency;
}

/// Inserts (or refuses) `key` into a set, as the GPU insert kernel does once it holds the set:
/// picks the way, applies admission when `sketch` is given (its counters already include this
/// miss), writes key and meta. Returns the way written, or -1 when admission refused the key.
TRITONREC_HD int insert_into_set(int64_t* keys, uint32_t* meta, int ways, int64_t key, Eviction policy, uint32_t tick,
                                 const FrequencySketch* sketch) {
  const int way = choose_way(keys, meta, ways, key);
  uint32_t frequency = 1;
  if (sketch != nullptr) {
    frequency = sketch->estimate(key);
    if (keys[way] != key && keys[way] != kEmptyKey) {
      const uint32_t victim = policy == Eviction::kLfu ? meta[way] : sketch->estimate(keys[way]);
      if (!admits(frequency, victim)) return -1;
    }
  }
  keys[way] = key;
  meta[way] = policy == Eviction::kLfu && sketch != nullptr ? frequency : inserted_meta(policy, tick);
  return way;
}

/// Default of `aging_period`'s multiple (host-twin traces as above, 2 counters per row: 0.95 of the
/// optimum at 10, 0.98 at 40, 0.99 at 160; a longer memory adapts more slowly to shifts in popularity).
constexpr int64_t kAgingMultiple = 40;

/// Misses after which the sketch's counters (and LFU use counts) are halved, for a cache of
/// `capacity_rows` rows: old popularity fades. A larger multiple remembers longer.
TRITONREC_HD int64_t aging_period(int64_t capacity_rows, int64_t multiple = kAgingMultiple) { return multiple * capacity_rows; }

}  // namespace tritonrec
