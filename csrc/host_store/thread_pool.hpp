// A fixed pool of worker threads for splitting one batched call into chunks.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace tritonrec {

/// Runs `parallel_for` calls on `threads` threads (the calling thread is one of them).
/// One call at a time per pool: concurrent callers queue on an internal mutex. Copy deleted.
///
/// Chunks are taken with one atomic add each. Between calls a worker first spins for `spin_us`
/// microseconds (watching for the next call) before it sleeps on a condition variable, so that
/// calls in quick succession (a GPU lookup's pieces) do not pay the wake-up of every worker in turn.
class ThreadPool {
 public:
  /// @param threads total threads used per call, >= 1 (0 means std::thread::hardware_concurrency()).
  /// @param spin_us how long an idle worker watches for the next call before sleeping, >= 0
  ///        (-1: the environment's TRITONREC_POOL_SPIN_US, else 0).
  explicit ThreadPool(int threads, int spin_us = -1);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const noexcept { return static_cast<int>(workers_.size()) + 1; }
  int spin_us() const noexcept { return spin_us_; }

  /// Calls fn(begin, end) over [0, n) in chunks of at most `chunk`, on all threads; returns when
  /// every chunk is done. fn must not throw.
  void parallel_for(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)>& fn);

  /// A parallel_for begun by start(): finish() (or the destructor) joins it. Move-only.
  class Batch {
   public:
    Batch() = default;
    Batch(Batch&& other) noexcept { *this = std::move(other); }
    Batch& operator=(Batch&& other) noexcept;
    Batch(const Batch&) = delete;
    Batch& operator=(const Batch&) = delete;
    ~Batch() { finish(); }
    /// Takes chunks on the calling thread too and returns when every chunk is done (at once when
    /// already finished). Call it on the thread that called start().
    void finish();

   private:
    friend class ThreadPool;
    ThreadPool* pool_ = nullptr;                                       // when handed to the workers
    const std::function<void(int64_t, int64_t)>* deferred_ = nullptr;  // else run whole by finish()
    int64_t n_ = 0;
    std::unique_lock<std::mutex> held_;                                // the pool's call lock
  };

  /// parallel_for in two halves: hands fn's chunks to the workers and returns at once, so that the
  /// calling thread can do other work until the Batch's finish(). The pool is held until then
  /// (other callers queue as for parallel_for); the caller must not call the pool before it. Without
  /// workers, or when n fits one chunk, the whole call runs in finish(). fn must not throw and must
  /// outlive the Batch's finish().
  [[nodiscard]] Batch start(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void work();
  void run_chunks();
  void hand_out(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)>& fn);
  void join();  // the caller takes chunks, then waits for the workers (the call lock held)

  std::vector<std::thread> workers_;
  int spin_us_ = 0;
  std::mutex call_mutex_;  // one parallel_for at a time
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 1;
  std::atomic<int64_t> next_{0};
  std::atomic<int> busy_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace tritonrec
