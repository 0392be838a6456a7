// One read of several host tables' keys on a thread pool, begun on its workers so that the calling
// thread is free until finish(): a GPU tier reads a chunk's misses this way while it queues the
// last chunk's copies and inserts.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <shared_mutex>
#include <vector>

#include "host_store/host_table.hpp"
#include "host_store/thread_pool.hpp"

namespace tritonrec {

/// Each distinct table's read lock is taken by the constructor (in the order the parts name them)
/// and held until finish(), so that every row read comes whole from one write batch; a writer of
/// those tables waits until then. Not copyable or movable; the parts' arrays must outlive finish().
/// Destroyed unfinished (an exception on the calling thread), it waits for the workers, then
/// releases the tables, without counting the lookups.
class TablesRead {
 public:
  /// Keys of one table read into host memory.
  struct Part {
    const HostTable* table = nullptr;
    const int64_t* keys = nullptr;  ///< host (n,)
    int64_t n = 0;
    float* out = nullptr;           ///< host (n, table->dim()) fp32: the row of each found key, zeros for a missing one
    uint8_t* found = nullptr;       ///< host (n,): 1 where found, else 0
  };

  /// Takes the tables' read locks and hands the parts' keys to the pool's workers in chunks of 256
  /// to 4,096 keys (about four a thread); `streaming` writes the rows past the CPU's caches.
  /// @throw std::invalid_argument for a part with no table, n < 0, or null arrays where n > 0.
  TablesRead(std::vector<Part> parts, ThreadPool& pool, bool streaming = false);
  TablesRead(const TablesRead&) = delete;
  TablesRead& operator=(const TablesRead&) = delete;

  /// Takes chunks on the calling thread too, waits for the read's end, counts each part's lookups
  /// in its table's stats and releases the tables; returns each part's keys found (the same on a
  /// later call). Call it on the thread that constructed the read.
  const std::vector<int64_t>& finish();

 private:
  void read(int64_t begin, int64_t end) noexcept;

  std::vector<Part> parts_;
  std::vector<int64_t> starts_;  // (parts + 1,): where each part's keys begin in the read's order
  bool streaming_;
  std::unique_ptr<std::atomic<int64_t>[]> hits_;  // (parts,)
  std::vector<int64_t> found_;
  bool finished_ = false;
  std::vector<std::shared_lock<std::shared_mutex>> locks_;
  std::function<void(int64_t, int64_t)> fn_;
  ThreadPool::Batch batch_;  // declared last: destroyed (joined) before the locks are released
};

}  // namespace tritonrec
