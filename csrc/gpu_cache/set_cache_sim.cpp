#include "gpu_cache/set_cache_sim.hpp"

#include <algorithm>
#include <stdexcept>

namespace tritonrec {

SetCacheSim::SetCacheSim(int64_t capacity_rows, int ways, Eviction policy) : ways_(ways), policy_(policy) {
  if (ways < 1) throw std::invalid_argument("ways: expected >= 1");
  if (capacity_rows < 1) throw std::invalid_argument("capacity_rows: expected >= 1");
  sets_ = std::max<int64_t>(1, capacity_rows / ways);
  keys_.assign(static_cast<size_t>(sets_ * ways), kEmptyKey);
  meta_.assign(static_cast<size_t>(sets_ * ways), 0);
}

bool SetCacheSim::access(int64_t key, uint32_t tick) {
  const int64_t base = set_of(key, sets_) * ways_;
  int64_t* keys = keys_.data() + base;
  uint32_t* meta = meta_.data() + base;
  for (int w = 0; w < ways_; ++w) {
    if (keys[w] == key) {
      meta[w] = touched_meta(policy_, meta[w], tick);
      return true;
    }
  }
  const int way = choose_way(keys, meta, ways_, key);
  keys[way] = key;
  meta[way] = inserted_meta(policy_, tick);
  return false;
}

}  // namespace tritonrec
