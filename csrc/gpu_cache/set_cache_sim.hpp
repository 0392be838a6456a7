// Host twin of the GPU cache's bookkeeping: the same sets, tags, ways and policy code (policy.hpp), no rows.
#pragma once

#include <cstdint>
#include <vector>

#include "gpu_cache/policy.hpp"

namespace tritonrec {

/// Replays an access trace through a set-associative cache of `capacity_rows` rows and counts hits,
/// deciding as the GPU cache does (`choose_way`, `touched_meta`, `inserted_meta`).
class SetCacheSim {
 public:
  /// @param capacity_rows rows the cache holds (rounded down to whole sets of `ways`; at least one set).
  /// @param ways rows per set (the GPU cache uses 16). Any number of sets (the GPU cache has at least
  ///        kMinSets; with fewer, two keys of a set may share a tag, one pair in 2^56 / sets).
  /// @param admission TinyLFU admission (a frequency sketch of the misses) before eviction.
  /// @param aging_multiple the sketch and LFU counts are halved every aging_multiple x capacity misses.
  SetCacheSim(int64_t capacity_rows, int ways, Eviction policy, bool admission = false,
              int64_t aging_multiple = kAgingMultiple);

  /// One lookup of `key`: true on a hit; a miss offers the key for insertion. `tick` is the lookup
  /// call's clock; call `end_call` after each call's accesses. `touch` false: a hit leaves its
  /// slot's meta as it is (recency rules that skip some hits' updates, benchmarks/cpp/lru_clock_sim.cpp).
  bool access(int64_t key, uint32_t tick, bool touch = true);

  /// Ages the sketch and LFU counts when a period of misses has passed (the GPU cache does this
  /// before an insert call).
  void end_call();

  int64_t sets() const noexcept { return sets_; }

 private:
  int64_t sets_;
  int ways_;
  Eviction policy_;
  std::vector<uint64_t> tags_;
  std::vector<uint32_t> meta_;
  bool admission_;
  std::vector<uint32_t> sketch_counters_;
  FrequencySketch sketch_{};
  int64_t misses_since_aging_ = 0;
  int64_t aging_multiple_ = kAgingMultiple;
};

}  // namespace tritonrec
