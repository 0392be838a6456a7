#include "gpu_cache/set_cache_sim.hpp"

#include <algorithm>
#include <stdexcept>

namespace tritonrec {

SetCacheSim::SetCacheSim(int64_t capacity_rows, int ways, Eviction policy, bool admission, int64_t aging_multiple)
    : ways_(ways), policy_(policy), admission_(admission), aging_multiple_(aging_multiple) {
  if (ways < 1) throw std::invalid_argument("ways: expected >= 1");
  if (aging_multiple < 1) throw std::invalid_argument("aging_multiple: expected >= 1");
  if (capacity_rows < 1) throw std::invalid_argument("capacity_rows: expected >= 1");
  sets_ = std::max<int64_t>(1, capacity_rows / ways);
  tags_.assign(static_cast<size_t>(sets_ * ways), kEmptyTag);
  meta_.assign(static_cast<size_t>(sets_ * ways), 0);
  if (admission_) {
    const int64_t width = kSketchWidthPerRow * sets_ * ways;
    sketch_counters_.assign(static_cast<size_t>(4 * width), 0);
    sketch_ = FrequencySketch{sketch_counters_.data(), width};
  }
}

bool SetCacheSim::access(int64_t key, uint32_t tick, bool touch) {
  const auto [set, tag] = slot_key(key, sets_);
  const int64_t base = set * ways_;
  uint64_t* tags = tags_.data() + base;
  uint32_t* meta = meta_.data() + base;
  for (int w = 0; w < ways_ && tag != kEmptyTag; ++w) {
    if (tags[w] == tag) {
      if (touch) meta[w] = touched_meta(policy_, meta[w], tick);
      return true;
    }
  }
  ++misses_since_aging_;  // as the GPU cache's inserts count (every missed key is offered)
  if (tag == kEmptyTag) return false;  // never cached (the GPU's insert skips it before the sketch)
  if (admission_) {
    sketch_.count(static_cast<int64_t>(tag));
  }
  insert_into_set(tags, meta, ways_, tag, policy_, tick, admission_ ? &sketch_ : nullptr);
  return false;
}

void SetCacheSim::end_call() {
  if (misses_since_aging_ < aging_period(sets_ * ways_, aging_multiple_)) return;
  misses_since_aging_ = 0;
  if (!admission_) return;
  for (auto& c : sketch_counters_) c >>= 1;
  if (policy_ == Eviction::kLfu) {
    for (auto& m : meta_) m >>= 1;
  }
}

}  // namespace tritonrec
