#include "host_store/thread_pool.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>

namespace tritonrec {

namespace {

int spin_from_environment() {
  const char* text = std::getenv("TRITONREC_POOL_SPIN_US");
  return text == nullptr ? 0 : std::max(0, std::atoi(text));
}

/// Spins until `done()` or `us` microseconds passed; returns done().
template <typename Done>
bool spin_until(int us, Done done) {
  if (us <= 0) return done();
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  for (int i = 0;; ++i) {
    if (done()) return true;
    if ((i & 63) == 63 && std::chrono::steady_clock::now() >= until) return done();
    std::this_thread::yield();
  }
}

}  // namespace

ThreadPool::ThreadPool(int threads, int spin_us) : spin_us_(spin_us < 0 ? spin_from_environment() : spin_us) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { work(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
  }
  wake_.notify_all();
  for (auto& worker : workers_) worker.join();
}

void ThreadPool::run_chunks() {
  // fn_, n_ and chunk_ hold still while this thread counts in busy_ (the caller waits for it)
  for (;;) {
    const int64_t begin = next_.fetch_add(chunk_, std::memory_order_relaxed);
    if (begin >= n_) return;
    (*fn_)(begin, std::min(n_, begin + chunk_));
  }
}

void ThreadPool::work() {
  uint64_t seen = 0;
  for (;;) {
    spin_until(spin_us_, [&] { return stop_.load(std::memory_order_relaxed) || generation_.load(std::memory_order_acquire) != seen; });
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_.load() || generation_.load() != seen; });
      if (stop_.load()) return;
      seen = generation_.load();
      busy_.fetch_add(1);
    }
    run_chunks();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      busy_.fetch_sub(1);
    }
    done_.notify_all();
  }
}

void ThreadPool::hand_out(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)>& fn) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fn_ = &fn;
    n_ = n;
    chunk_ = chunk;
    next_.store(0);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
}

void ThreadPool::join() {
  busy_.fetch_add(1);  // the caller is a worker of its own call
  run_chunks();
  busy_.fetch_sub(1);
  auto finished = [&] { return next_.load() >= n_ && busy_.load() == 0; };
  spin_until(spin_us_, finished);
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, finished);
  fn_ = nullptr;
}

void ThreadPool::parallel_for(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)>& fn) {
  start(n, chunk, fn).finish();
}

ThreadPool::Batch ThreadPool::start(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)>& fn) {
  Batch batch;
  if (n <= 0) return batch;
  chunk = std::max<int64_t>(1, chunk);
  if (workers_.empty() || n <= chunk) {  // nothing worth handing out: finish() runs it on the caller
    batch.deferred_ = &fn;
    batch.n_ = n;
    return batch;
  }
  batch.held_ = std::unique_lock<std::mutex>(call_mutex_);
  batch.pool_ = this;
  hand_out(n, chunk, fn);
  return batch;
}

ThreadPool::Batch& ThreadPool::Batch::operator=(Batch&& other) noexcept {
  if (this != &other) {
    finish();
    pool_ = std::exchange(other.pool_, nullptr);
    deferred_ = std::exchange(other.deferred_, nullptr);
    n_ = std::exchange(other.n_, 0);
    held_ = std::move(other.held_);
  }
  return *this;
}

void ThreadPool::Batch::finish() {
  if (deferred_ != nullptr) (*std::exchange(deferred_, nullptr))(0, n_);
  if (pool_ != nullptr) {
    std::exchange(pool_, nullptr)->join();
    held_.unlock();
  }
}

}  // namespace tritonrec
