// Open-addressing index int64 key -> row id < 2^31 (linear probing, tombstones; 12 bytes a slot). Not thread-safe on
// its own: HostTable guards it with a reader-writer lock.
#pragma once

#include <cstdint>
#include <vector>

#include "host_store/detail/huge_pages.hpp"

namespace tritonrec::detail {

class KeyIndex {
 public:
  static constexpr int32_t kEmpty = -1;
  static constexpr int32_t kTombstone = -2;
  static constexpr int64_t kMaxRow = INT32_MAX;

  explicit KeyIndex(int64_t expected = 0) { rehash(capacity_for(expected)); }

  /// Row id of `key`, or -1.
  int64_t find(int64_t key) const noexcept {
    uint64_t slot = home(key);
    for (;;) {
      const int32_t row = rows_[slot];
      if (row == kEmpty) return -1;
      if (row != kTombstone && keys_[slot] == key) return row;
      slot = (slot + 1) & mask_;
    }
  }

  /// Asks the memory system for the cache lines `find(key)` reads first (the home slot of both
  /// arrays), so that a batch of finds waits for its misses together instead of one after another.
  void prefetch(int64_t key) const noexcept {
    const uint64_t slot = home(key);
    __builtin_prefetch(rows_.data() + slot);
    __builtin_prefetch(keys_.data() + slot);
  }

  /// Sets key -> row (0 <= row <= kMaxRow; inserting or replacing); returns the previous row id or -1.
  int64_t assign(int64_t key, int64_t row) {
    if ((size_ + tombstones_ + 1) * 10 > static_cast<int64_t>(keys_.size()) * 7) {  // load factor <= 0.7
      rehash(capacity_for(size_ + 1));
    }
    uint64_t slot = home(key);
    int64_t reuse = -1;
    for (;;) {
      const int32_t current = rows_[slot];
      if (current == kEmpty) break;
      if (current == kTombstone) {
        if (reuse < 0) reuse = static_cast<int64_t>(slot);
      } else if (keys_[slot] == key) {
        rows_[slot] = static_cast<int32_t>(row);
        return current;
      }
      slot = (slot + 1) & mask_;
    }
    if (reuse >= 0) {
      slot = static_cast<uint64_t>(reuse);
      --tombstones_;
    }
    keys_[slot] = key;
    rows_[slot] = static_cast<int32_t>(row);
    ++size_;
    return -1;
  }

  /// Removes key; returns its row id or -1 when absent.
  int64_t erase(int64_t key) noexcept {
    uint64_t slot = home(key);
    for (;;) {
      const int32_t row = rows_[slot];
      if (row == kEmpty) return -1;
      if (row != kTombstone && keys_[slot] == key) {
        rows_[slot] = kTombstone;
        --size_;
        ++tombstones_;
        return row;
      }
      slot = (slot + 1) & mask_;
    }
  }

  int64_t size() const noexcept { return size_; }
  int64_t capacity() const noexcept { return static_cast<int64_t>(keys_.size()); }
  /// Memory of the index in bytes.
  int64_t bytes() const noexcept { return capacity() * static_cast<int64_t>(sizeof(int64_t) + sizeof(int32_t)); }

 private:
  static int64_t capacity_for(int64_t n) noexcept {
    int64_t capacity = 16;
    while (capacity * 7 < (n + 1) * 10) capacity *= 2;  // the smallest power of two at load <= 0.7
    return capacity;
  }

  uint64_t home(int64_t key) const noexcept {
    uint64_t h = static_cast<uint64_t>(key);
    h ^= h >> 30;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 27;
    h *= 0x94D049BB133111EBull;
    h ^= h >> 31;
    return h & mask_;
  }

  void rehash(int64_t capacity) {
    std::vector<int64_t> old_keys = std::move(keys_);
    std::vector<int32_t> old_rows = std::move(rows_);
    keys_.reserve(static_cast<size_t>(capacity));
    rows_.reserve(static_cast<size_t>(capacity));
    advise_huge_pages(keys_.data(), static_cast<size_t>(capacity) * sizeof(int64_t));
    advise_huge_pages(rows_.data(), static_cast<size_t>(capacity) * sizeof(int32_t));
    keys_.assign(static_cast<size_t>(capacity), 0);
    rows_.assign(static_cast<size_t>(capacity), kEmpty);
    mask_ = static_cast<uint64_t>(capacity - 1);
    size_ = 0;
    tombstones_ = 0;
    for (size_t i = 0; i < old_rows.size(); ++i) {
      if (old_rows[i] >= 0) {
        uint64_t slot = home(old_keys[i]);
        while (rows_[slot] != kEmpty) slot = (slot + 1) & mask_;
        keys_[slot] = old_keys[i];
        rows_[slot] = old_rows[i];
        ++size_;
      }
    }
  }

  std::vector<int64_t> keys_;
  std::vector<int32_t> rows_;
  uint64_t mask_ = 0;
  int64_t size_ = 0;
  int64_t tombstones_ = 0;
};

}  // namespace tritonrec::detail
