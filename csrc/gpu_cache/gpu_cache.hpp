// GPU cache of embedding rows: int64 keys in 16-way sets in HBM, rows in HBM (fp32 or fp16 storage,
// fp32 out). Lookups gather hits in-kernel and list the misses; the caller fetches those from the
// host store and inserts them. Every call is asynchronous on the given stream.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "gpu_cache/policy.hpp"

namespace tritonrec {

/// Storage dtype of the GPU cache's rows.
enum class GpuRowDtype : int32_t { kFloat32 = 0, kFloat16 = 1 };

/// Options of a GpuCache; validated by its constructor.
struct GpuCacheOptions {
  int64_t capacity_rows = 1 << 20;           ///< rows held (rounded down to whole sets of 16; >= 16)
  int64_t dim = 16;                          ///< values per row
  GpuRowDtype dtype = GpuRowDtype::kFloat32;  ///< storage dtype (lookups return fp32)
  Eviction eviction = Eviction::kLru;        ///< which row a full set gives up
  bool admission = false;                    ///< TinyLFU admission (a frequency sketch of misses)
  int device = 0;                            ///< CUDA device of the cache's memory
};

/// One table's GPU cache. Owns its device memory (freed by the destructor); copy deleted.
class GpuCache {
 public:
  static constexpr int kWays = 16;  ///< rows per set: one 128-byte line of keys

  /// Allocates keys, meta, locks and rows on `options.device` and empties them (on stream 0 of that
  /// device, synchronised once here).
  /// @throw std::invalid_argument a bad option. @throw std::runtime_error a CUDA error (e.g. out of memory).
  explicit GpuCache(const GpuCacheOptions& options);
  ~GpuCache();
  GpuCache(const GpuCache&) = delete;
  GpuCache& operator=(const GpuCache&) = delete;

  /// Looks up n keys. Asynchronous on `stream`.
  /// @param keys device (n,) int64.
  /// @param out device (n, dim) fp32: the row of each hit; zeros for a miss.
  /// @param miss_index device (n,) int32: positions of the misses, in no particular order, first *miss_count.
  /// @param miss_count device int32 scalar: set to the number of misses.
  /// @param tick the call's clock (LRU age).
  void find_async(const int64_t* keys, int64_t n, float* out, int32_t* miss_index, int32_t* miss_count, uint32_t tick,
                  cudaStream_t stream) const;

  /// Inserts or overwrites n rows (keys unique within the call), evicting by the policy. Asynchronous on `stream`.
  /// @param keys device (n,) int64. @param rows device (n, dim) fp32.
  void insert_async(const int64_t* keys, const float* rows, int64_t n, uint32_t tick, cudaStream_t stream);

  /// Drops the listed keys (absent ones are ignored). Asynchronous on `stream`.
  void invalidate_async(const int64_t* keys, int64_t n, cudaStream_t stream);

  int64_t capacity_rows() const noexcept { return sets_ * kWays; }
  int64_t dim() const noexcept { return options_.dim; }
  int device() const noexcept { return options_.device; }
  GpuRowDtype dtype() const noexcept { return options_.dtype; }
  /// Device memory held, in bytes.
  int64_t bytes() const noexcept;

 private:
  GpuCacheOptions options_;
  int64_t sets_ = 0;
  int64_t* keys_ = nullptr;   // (sets, kWays)
  uint32_t* meta_ = nullptr;  // (sets, kWays)
  int32_t* locks_ = nullptr;  // (sets,)
  void* rows_ = nullptr;      // (sets * kWays, dim) in dtype
  uint32_t* sketch_ = nullptr;  // (4, sketch_width_) with admission
  int64_t sketch_width_ = 0;
  int64_t inserted_since_aging_ = 0;
};

/// Bytes per row slot of a cache (row storage plus key, meta and the set's lock share).
int64_t gpu_cache_slot_bytes(int64_t dim, GpuRowDtype dtype) noexcept;

}  // namespace tritonrec
