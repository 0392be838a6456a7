// A fixed pool of worker threads for splitting one batched call into chunks.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tritonrec {

/// Runs `parallel_for` calls on `threads` threads (the calling thread is one of them).
/// One call at a time per pool: concurrent callers queue on an internal mutex. Copy deleted.
class ThreadPool {
 public:
  /// @param threads total threads used per call, >= 1 (0 means std::thread::hardware_concurrency()).
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const noexcept { return static_cast<int>(workers_.size()) + 1; }

  /// Calls fn(begin, end) over [0, n) in chunks of at most `chunk`, on all threads; returns when
  /// every chunk is done. fn must not throw.
  void parallel_for(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void work();
  void run_chunks();

  std::vector<std::thread> workers_;
  std::mutex call_mutex_;  // one parallel_for at a time
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 1, next_ = 0;
  int busy_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace tritonrec
