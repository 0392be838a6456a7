// GPU cache of embedding rows: 16-way sets of 8-byte slot words in HBM (a key's 56-bit hash tag and
// the slot's 8-bit LRU tick or LFU count, policy.hpp), rows in HBM (fp32, fp16 or bf16
// storage; fp32 or fp16 out). Lookups gather hits in-kernel and list the misses; the caller fetches
// those from the host store, scatters them into the output (scatter_miss_rows_async) and inserts
// them. Every call is asynchronous on the given stream; inserts may run on another stream than
// lookups (they write each slot as a seqlock writer, lookups re-check it).
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>

#include "gpu_cache/policy.hpp"

namespace tritonrec {

/// Storage dtype of the GPU cache's rows.
enum class GpuRowDtype : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

/// Element type of lookup outputs.
enum class GpuOutDtype : int32_t { kFloat32 = 0, kFloat16 = 1 };

/// Options of a GpuCache; validated by its constructor.
struct GpuCacheOptions {
  int64_t capacity_rows = 1 << 20;           ///< rows held (rounded down to whole sets of 16; >= 4096: kMinSets sets)
  int64_t dim = 16;                          ///< values per row
  GpuRowDtype dtype = GpuRowDtype::kFloat32;  ///< storage dtype (lookups return fp32)
  Eviction eviction = Eviction::kLru;        ///< which row a full set gives up
  bool admission = false;                    ///< TinyLFU admission (a frequency sketch of misses)
  int64_t aging_multiple = kAgingMultiple;   ///< with admission: counts halved every multiple x capacity misses
  int device = 0;                            ///< CUDA device of the cache's memory
};

/// One table's GPU cache. Owns its device memory (freed by the destructor); copy deleted.
class GpuCache {
 public:
  static constexpr int kWays = 16;  ///< rows per set: one 128-byte line of slot words

  /// Allocates slot words, locks and rows on `options.device` and empties them (on stream 0 of that
  /// device, synchronised once here).
  /// @throw std::invalid_argument a bad option. @throw std::runtime_error a CUDA error (e.g. out of memory).
  explicit GpuCache(const GpuCacheOptions& options);
  ~GpuCache();
  GpuCache(const GpuCache&) = delete;
  GpuCache& operator=(const GpuCache&) = delete;

  /// Where a lookup reads its keys and writes its rows.
  struct FindArgs {
    const int64_t* keys = nullptr;  ///< device: key i at keys[i * key_stride]
    int64_t key_stride = 1;
    int64_t n = 0;
    void* out = nullptr;           ///< device: row i at out + i * out_stride elements of out_dtype
    int64_t out_stride = 0;        ///< elements; 0 means dim
    GpuOutDtype out_dtype = GpuOutDtype::kFloat32;
    int32_t* miss_index = nullptr;  ///< device (n,): positions of the misses, first *miss_count, any order
    int32_t* miss_count = nullptr;  ///< device scalar: set to the number of misses
    uint32_t tick = 0;              ///< the LRU clock (policy.hpp's lru_clock of the misses so far)
  };

  /// Looks up args.n keys: hits' rows written to the output, misses listed (their output rows are
  /// left undefined for the caller to fill). Asynchronous on `stream`.
  /// @throw std::invalid_argument an output row not aligned for vector stores (dim a multiple of 8
  ///        needs 16-byte aligned rows).
  void find_async(const FindArgs& args, cudaStream_t stream) const;

  /// Inserts or overwrites n rows (keys unique within the call), evicting by the policy. Asynchronous on `stream`.
  /// @param keys device (n,) int64. @param rows device (n, dim) fp32.
  void insert_async(const int64_t* keys, const float* rows, int64_t n, uint32_t tick, cudaStream_t stream);

  /// Drops the listed keys (absent ones are ignored). Asynchronous on `stream`.
  void invalidate_async(const int64_t* keys, int64_t n, cudaStream_t stream);

  /// The LRU clock for a lookup starting now: policy.hpp's lru_clock of the misses counted so far.
  uint32_t lru_tick() const noexcept { return lru_clock(clock_misses_.load(std::memory_order_relaxed), capacity_rows()); }
  /// Counts `looked_up` keys of a lookup and the `missed` among them (thread-safe; GpuTierLookup counts
  /// each chunk's as it learns its misses): the misses move the LRU clock, and both are the cache's stats.
  void count_lookups(int64_t looked_up, int64_t missed) noexcept {
    lookups_.fetch_add(looked_up, std::memory_order_relaxed);
    clock_misses_.fetch_add(missed, std::memory_order_relaxed);
  }
  /// Keys counted by count_lookups so far, and the misses among them.
  int64_t lookups() const noexcept { return lookups_.load(std::memory_order_relaxed); }
  int64_t misses() const noexcept { return clock_misses_.load(std::memory_order_relaxed); }

  int64_t capacity_rows() const noexcept { return sets_ * kWays; }
  int64_t dim() const noexcept { return options_.dim; }
  int device() const noexcept { return options_.device; }
  GpuRowDtype dtype() const noexcept { return options_.dtype; }
  /// Device memory held, in bytes.
  int64_t bytes() const noexcept;

 private:
  GpuCacheOptions options_;
  int64_t sets_ = 0;
  unsigned long long* words_ = nullptr;  // (sets, kWays) slot words: tag | meta << 56
  int32_t* locks_ = nullptr;  // (sets,)
  void* rows_ = nullptr;      // (sets * kWays, dim) in dtype
  uint32_t* sketch_ = nullptr;  // (4, sketch_width_) with admission
  int64_t sketch_width_ = 0;
  int64_t inserted_since_aging_ = 0;
  std::atomic<int64_t> clock_misses_{0};
  std::atomic<int64_t> lookups_{0};
};

/// Bytes per row slot of a cache (row storage plus its 8-byte slot word, the set's lock share and, with
/// admission, the frequency sketch's share).
int64_t gpu_cache_slot_bytes(int64_t dim, GpuRowDtype dtype, bool admission = false) noexcept;

/// The miss path of a lookup of `columns` key columns (keys (n, columns) row-major, column t looked
/// up in table t): writes column t's missed keys, miss_index[t * n + j] for j < counts[t], to
/// out_keys[offset(t) + j], offset(t) = counts[0] + ... + counts[t - 1]. `max_count` >= every
/// count (sizes the grid). With host_keys (mapped pinned host memory, same layout) the keys are written
/// there too, and with host_counts (mapped, (columns,)) the counts. Asynchronous on `stream` of `device`.
void gather_miss_keys_async(const int64_t* keys, int columns, int64_t n, const int32_t* miss_index,
                            const int32_t* counts, int64_t max_count, int64_t* out_keys, int device,
                            cudaStream_t stream, int64_t* host_keys = nullptr, int32_t* host_counts = nullptr);

/// Writes the host's rows of the misses into a lookup's output (n, columns, dim) of `out_dtype`:
/// the row of miss j of column t is rows[row_of[offset(t) + j]], or rows[offset(t) + j] when row_of is null (rows fp32 (u, dim), device).
/// Asynchronous on `stream` of `device`.
void scatter_miss_rows_async(void* out, GpuOutDtype out_dtype, int columns, int64_t n, int64_t dim,
                             const int32_t* miss_index, const int32_t* counts, int64_t max_count,
                             const int32_t* row_of, const float* rows, int device, cudaStream_t stream);

}  // namespace tritonrec
