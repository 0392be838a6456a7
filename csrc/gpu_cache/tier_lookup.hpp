// GpuTierLookup: a GPU tier's lookup of device keys through its tables' GPU caches, with the misses
// read from the host tables, written into the output and offered to the caches, all in one call with
// no Python between the steps (the bindings release the GIL for it), so that concurrent callers
// overlap in everything but the host reads.
//
// A call's key rows are cut into chunks (miss_plan.hpp). Every chunk's lookup kernels and miss
// gather are queued at once on the caller's stream; the gather writes the chunk's missed keys and
// counts into mapped pinned host memory. Then, chunk by chunk, the host waits for that chunk only,
// reads its missed keys from the host tables (the thread pool) into pinned memory, and queues their
// copy to the device, the scatter into the output and the inserts: chunk c's rows are read while
// chunk c - 1's are copied and inserted.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "gpu_cache/gpu_cache.hpp"
#include "host_store/host_table.hpp"
#include "host_store/thread_pool.hpp"

namespace tritonrec {

class TablesRead;  // host_store/tables_read.hpp

/// One column of a lookup: its table's GPU cache and host table. All columns of a call have one dim.
struct TierColumn {
  GpuCache* cache = nullptr;
  const HostTable* host = nullptr;
};

/// Completes m missed keys of `column` that the host table did not all hold (`hits` of them found):
/// reads the rest from lower tiers and applies the missing-key policy, setting found[i] where a key
/// exists. Host memory, valid for the call only: keys (m,), rows fp32 (m, dim), found (m,). It may
/// throw; the lookup then throws it on, its staging released and its queued work left to finish.
using CompleteMisses = std::function<void(int column, int64_t m, const int64_t* keys, float* rows, uint8_t* found, int64_t hits)>;

struct TierLookupOptions {
  int stagings = 2;                ///< pinned stagings shared by concurrent callers (a caller takes a free one)
  int chunks = 4;                  ///< most chunks a call is cut into
  int64_t min_chunk_rows = 65536;  ///< fewest key rows a chunk (but for the last)
  bool async_insert = false;       ///< insert on the lookup's own stream (false) or on one of its own (true)
  bool taper = false;              ///< first and last chunks half the others (lookup_chunks)
  bool stream_rows = false;        ///< missed rows written into the pinned staging past the CPU's caches (HostTable::find)
  bool copy_stream = false;        ///< the rows' copies on a stream of each staging's own, so that a chunk's copy need not wait for the last chunk's inserts
  /// Chunks (not tapered) of a call that starts while another holds a staging or waits for one (0:
  /// cut as a lone call), at most `chunks`: a lone call needs small chunks to overlap its own reads
  /// with its copies and inserts, while calls at once overlap one another's and pay less per chunk
  /// with fewer (the H200 A/B in benchmarks/RESULTS.md).
  int crowded_chunks = 0;
  /// With copy_stream: whether a call that starts while another is in flight copies on the staging's
  /// copy stream too (true) or on its own stream (false): a lone call's next copy need not wait for
  /// its last inserts, while calls at once already keep the copy engine busy with one another's.
  bool crowded_copy_stream = true;
  /// Whether a lone call queues chunk c - 1's copies, scatter and inserts while the pool's workers
  /// read chunk c (else after the read, on the pool's time); calls at once always send after the
  /// read, as the pool then serves the other call's reads.
  bool send_beside_read = false;
};

/// One step of a traced lookup (GpuTierLookup::set_trace): what happened, to which chunk (-1: the
/// call), when (microseconds after the call began). Host steps by the host's clock; GPU steps
/// ("gpu ..." by timing events on the GPU's clock, counted from the call's start on its stream, so
/// they line up with the host's when the stream was idle as the call began).
struct TraceMark {
  std::string what;
  int chunk = -1;
  double us = 0;
};

/// The lookups of one GPU tier (any number of tables, one device). Thread-safe: calls may run at once,
/// each on its own stream. Copy deleted.
class GpuTierLookup {
 public:
  /// @throw std::invalid_argument a bad option. @throw std::runtime_error a CUDA error.
  GpuTierLookup(int device, const TierLookupOptions& options);
  ~GpuTierLookup();
  GpuTierLookup(const GpuTierLookup&) = delete;
  GpuTierLookup& operator=(const GpuTierLookup&) = delete;

  /// Looks up keys device int64 (n, columns) C-contiguous, column t in columns[t], at each cache's LRU
  /// clock (GpuCache::lru_tick, read once the call has its staging; the misses counted as learnt), into out device
  /// (n, columns, dim) C-contiguous of out_dtype: every key's true row where it exists in some tier,
  /// else what `complete` wrote. Returns when the output is queued on `stream` (inserts may still run
  /// on the tier's insert stream); waits on `stream` (never the device) for each chunk's misses. Each
  /// cache counts its lookups and misses (GpuCache::count_lookups).
  /// @throw std::invalid_argument bad arguments (no columns, dims that differ, out rows not aligned).
  /// @throw std::runtime_error a CUDA error; whatever `complete` throws.
  void lookup(const std::vector<TierColumn>& columns, const int64_t* keys, int64_t n, void* out, GpuOutDtype out_dtype,
              cudaStream_t stream, ThreadPool& pool, const CompleteMisses& complete);

  /// Drops host keys (n,) from `cache`; returns when done. Inserts queued by earlier lookups are
  /// waited for first, and lookups still reading rows from the host will not insert them into `cache`.
  void invalidate(GpuCache& cache, const int64_t* keys, int64_t n);

  /// Device memory its pool holds for calls (in flight or kept for the next ones), in bytes.
  int64_t pool_bytes() const;

  /// Calls so far that started while another call held a staging or waited for one (cut into
  /// TierLookupOptions::crowded_chunks chunks where that is set).
  int64_t crowded_calls() const noexcept { return crowded_calls_.load(std::memory_order_relaxed); }

  /// Traces the calls from now on (on) or not (off, the default): each host step and, by timing
  /// events, each chunk's GPU work, kept for last_trace(). A traced call waits for its streams at its
  /// end, so calls no longer overlap one another: a probe's, not a server's, setting.
  void set_trace(bool on) { trace_.store(on, std::memory_order_relaxed); }
  bool trace() const { return trace_.load(std::memory_order_relaxed); }
  /// The steps of the last traced call that ended without error, in the order they were marked.
  std::vector<TraceMark> last_trace() const;

 private:
  struct Staging;
  struct Call;
  struct Trace;
  /// The first free staging, in the order callers came; `crowded` tells whether another call held
  /// one or waited for one as this one took it.
  Staging& take_staging(bool& crowded);
  void release_staging(Staging& staging);
  void check_columns(const std::vector<TierColumn>& columns) const;
  void list_chunks(Call& call, int64_t n);
  std::unique_ptr<TablesRead> start_read(Call& call, int c, ThreadPool& pool);
  void finish_read(Call& call, int c, TablesRead* read, const CompleteMisses& complete);
  void send_chunk(Call& call, int c);
  float* copy_rows(Call& call, int c);
  void pack_present(Call& call, int c, const float* device_rows, std::vector<const int64_t*>& keys, std::vector<const float*>& rows);
  void queue_inserts(Call& call, int c, const std::vector<const int64_t*>& keys, const std::vector<const float*>& rows);
  void end_call(Call& call, bool failed);
  void end_trace(Call& call);
  void* allocate(size_t bytes, cudaStream_t stream);

  int device_;
  TierLookupOptions options_;
  std::vector<std::unique_ptr<Staging>> stagings_;
  std::mutex stagings_mutex_;               // guards the stagings' `busy` and the queue of callers
  std::condition_variable staging_freed_;
  uint64_t next_ticket_ = 0, serving_ = 0;  // callers wait for a staging in the order they came
  cudaMemPool_t pool_ = nullptr;          // device memory of calls in flight (stream-ordered)
  cudaStream_t insert_stream_ = nullptr;  // with async_insert
  std::mutex insert_mutex_;               // orders inserts against invalidations
  std::unordered_map<const GpuCache*, uint64_t> generations_;  // bumped by each invalidation of a cache
  std::vector<cudaEvent_t> pending_;       // after inserts that may not have run yet
  std::atomic<bool> trace_{false};
  std::atomic<int64_t> crowded_calls_{0};
  mutable std::mutex trace_mutex_;          // guards last_trace_
  std::vector<TraceMark> last_trace_;
};

}  // namespace tritonrec
