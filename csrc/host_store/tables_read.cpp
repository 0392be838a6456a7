#include "host_store/tables_read.hpp"

#include <algorithm>
#include <stdexcept>

namespace tritonrec {

TablesRead::TablesRead(std::vector<Part> parts, ThreadPool& pool, bool streaming)
    : parts_(std::move(parts)), streaming_(streaming), hits_(new std::atomic<int64_t>[parts_.size()]) {
  starts_.assign(parts_.size() + 1, 0);
  std::vector<const HostTable*> tables;
  for (size_t p = 0; p < parts_.size(); ++p) {
    const Part& part = parts_[p];
    if (part.table == nullptr) throw std::invalid_argument("parts: a part without a table");
    if (part.n < 0) throw std::invalid_argument("parts: expected n >= 0");
    if (part.n > 0 && (part.keys == nullptr || part.out == nullptr || part.found == nullptr)) {
      throw std::invalid_argument("parts: keys, out and found expected for n > 0");
    }
    starts_[p + 1] = starts_[p] + part.n;
    hits_[p].store(0, std::memory_order_relaxed);
    if (std::find(tables.begin(), tables.end(), part.table) == tables.end()) tables.push_back(part.table);
  }
  for (const HostTable* table : tables) locks_.push_back(table->read_lock());  // a table twice would be locked twice
  const int64_t total = starts_.back();
  const int64_t chunk = std::clamp<int64_t>(total / (4 * pool.threads()), 256, 4096);
  fn_ = [this](int64_t begin, int64_t end) { read(begin, end); };
  batch_ = pool.start(total, chunk, fn_);
}

void TablesRead::read(int64_t begin, int64_t end) noexcept {
  // the parts that [begin, end) of the read's order overlaps, each over its own keys
  size_t p = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), begin) - starts_.begin()) - 1;
  for (; p < parts_.size() && starts_[p] < end; ++p) {
    const Part& part = parts_[p];
    const int64_t from = std::max(begin, starts_[p]) - starts_[p], to = std::min(end, starts_[p + 1]) - starts_[p];
    if (from >= to) continue;
    hits_[p].fetch_add(part.table->find_locked(part.keys, from, to, part.out, part.found, streaming_), std::memory_order_relaxed);
  }
}

const std::vector<int64_t>& TablesRead::finish() {
  if (finished_) return found_;
  batch_.finish();
  found_.resize(parts_.size());
  for (size_t p = 0; p < parts_.size(); ++p) {
    found_[p] = hits_[p].load(std::memory_order_relaxed);
    parts_[p].table->count_lookups(parts_[p].n, found_[p]);
  }
  locks_.clear();
  finished_ = true;
  return found_;
}

}  // namespace tritonrec
