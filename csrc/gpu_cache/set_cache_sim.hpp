// Host twin of the GPU cache's bookkeeping: the same sets, ways and policy code (policy.hpp), no rows.
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
  /// @param ways rows per set (the GPU cache uses 16).
  SetCacheSim(int64_t capacity_rows, int ways, Eviction policy);

  /// One lookup of `key`: true on a hit; a miss inserts the key. `tick` is the lookup call's clock.
  bool access(int64_t key, uint32_t tick);

  int64_t sets() const noexcept { return sets_; }

 private:
  int64_t sets_;
  int ways_;
  Eviction policy_;
  std::vector<int64_t> keys_;
  std::vector<uint32_t> meta_;
};

}  // namespace tritonrec
