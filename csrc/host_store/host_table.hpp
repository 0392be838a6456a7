// HostTable: one embedding table in host memory: int64 key -> row of `dim` values, stored fp32 or
// fp16 in large slabs, read and written in batches.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <shared_mutex>
#include <string>
#include <vector>

#include "host_store/detail/index.hpp"
#include "host_store/thread_pool.hpp"

namespace tritonrec {

/// How a HostTable stores its rows.
enum class RowDtype : int { kFloat32 = 0, kFloat16 = 1 };

/// Options of a HostTable; validated by its constructor.
struct HostTableOptions {
  int64_t dim = 0;                      ///< values per row, >= 1
  RowDtype dtype = RowDtype::kFloat32;  ///< storage dtype; lookups always return fp32
  int64_t slab_rows = 1 << 16;          ///< rows per slab (allocation unit), >= 1
  int64_t expected_rows = 0;            ///< rows to size the index for up front
  int64_t max_rows = 0;                 ///< most rows held (a cache of a lower tier); 0: no limit
};

/// Counters of a HostTable since it was made (monotonic, relaxed atomics).
struct HostTableStats {
  int64_t lookups = 0;  ///< keys looked up
  int64_t hits = 0;     ///< keys found
  int64_t misses = 0;   ///< keys not found
};

/// One table. Lookups run concurrently with each other; insert_or_assign and erase take the table
/// exclusively for their whole batch, so a lookup sees each write batch entirely or not at all and
/// never a torn row. Copy deleted.
class HostTable {
 public:
  /// @throw std::invalid_argument when an option is out of range.
  explicit HostTable(const HostTableOptions& options);
  HostTable(const HostTable&) = delete;
  HostTable& operator=(const HostTable&) = delete;

  /// Inserts or overwrites rows. Synchronous.
  /// @param keys host (n,) keys; a key repeated in the batch ends with its last row.
  /// @param rows host (n, dim) fp32 values, C-contiguous (rounded to fp16 when stored as fp16).
  void insert_or_assign(const int64_t* keys, const float* rows, int64_t n);

  /// Overwrites the rows of keys already held; others are left out. Synchronous.
  void assign_if_present(const int64_t* keys, const float* rows, int64_t n);

  /// Offers rows read from a lower tier to a table with max_rows: each key is taken while there is
  /// room, else only if its estimated access frequency beats that of the least frequent of a
  /// sample of held rows, which it then replaces (TinyLFU admission, sampled-LFU eviction).
  /// Keys already held are left as they are. Returns how many were taken. Synchronous.
  int64_t admit(const int64_t* keys, const float* rows, int64_t n);

  /// Erases keys (absent keys are ignored); returns how many were present. Synchronous.
  int64_t erase(const int64_t* keys, int64_t n);

  /// Looks up n keys on `pool`. Synchronous.
  /// @param keys host (n,) keys.
  /// @param out host (n, dim) fp32, C-contiguous: the row of each found key; zeros for a missing one.
  /// @param found host (n,) bytes: 1 where the key was found, else 0.
  /// @param streaming write fp32 rows to `out` with non-temporal stores (past the CPU's caches):
  ///        for memory the device copies from next (pinned staging), which would otherwise be read
  ///        out of the cores' caches line by line, and which the stores need not read first.
  /// @return number of keys found.
  int64_t find(const int64_t* keys, int64_t n, float* out, uint8_t* found, ThreadPool& pool, bool streaming = false) const;

  /// `find` over strided host arrays: key i at keys[i * key_stride], its row at out + i * out_stride
  /// (floats; out_stride >= dim), its flag at found[i * found_stride]. Runs on the calling thread.
  /// Lets one call fill column j of ids (n, tables) into embeddings (n, tables, dim) in place.
  int64_t find_strided(const int64_t* keys, int64_t key_stride, int64_t n, float* out, int64_t out_stride, uint8_t* found,
                       int64_t found_stride) const;

  /// The table's read lock, for a caller that cuts one read of several tables into pool work of
  /// its own (TablesRead): held, no write batch runs, so rows read under it are never torn.
  std::shared_lock<std::shared_mutex> read_lock() const { return std::shared_lock<std::shared_mutex>(mutex_); }
  /// `find` of keys [begin, end) on the calling thread, read_lock() held by the caller: key i's row
  /// at out + i * dim, its flag at found[i]. Does not count them (count_lookups does).
  int64_t find_locked(const int64_t* keys, int64_t begin, int64_t end, float* out, uint8_t* found, bool streaming = false) const noexcept {
    return find_range(keys, 1, begin, end, out, dim_, found, 1, streaming);
  }
  /// Adds n lookups, `hits` of them found, to stats() (find and find_strided count their own).
  void count_lookups(int64_t n, int64_t hits) const noexcept;

  int64_t dim() const noexcept { return dim_; }
  int64_t max_rows() const noexcept { return max_rows_; }
  RowDtype dtype() const noexcept { return dtype_; }
  int64_t size() const;
  /// Host memory held, in bytes: allocated slabs plus the index.
  int64_t bytes() const;
  HostTableStats stats() const noexcept;

 private:
  uint8_t* row_address(int64_t row) const noexcept;
  int64_t allocate_row();
  void store_row(int64_t row, const float* values) noexcept;
  void load_row(int64_t row, float* out, bool streaming = false) const noexcept;
  /// Keys [begin, end) of a strided batch (see find_strided) on the calling thread, the lock held
  /// by the caller; returns the keys found. Does not count them (count_lookups does).
  int64_t find_range(const int64_t* keys, int64_t key_stride, int64_t begin, int64_t end, float* out, int64_t out_stride,
                     uint8_t* found, int64_t found_stride, bool streaming = false) const noexcept;
  void insert_row(int64_t key, const float* values);
  void count_access(int64_t key) const noexcept;
  uint32_t frequency(int64_t key) const noexcept;

  int64_t dim_;
  RowDtype dtype_;
  int64_t slab_rows_;
  int64_t row_bytes_;
  detail::KeyIndex index_;
  size_t slab_bytes_ = 0;  // bytes allocated a slab (slab_rows_ * row_bytes_, whole 2 MiB pages when large)
  struct FreeSlab { void operator()(uint8_t* p) const noexcept { std::free(p); } };
  std::vector<std::unique_ptr<uint8_t, FreeSlab>> slabs_;
  int64_t next_row_ = 0;
  std::vector<int64_t> free_rows_;
  int64_t max_rows_;
  std::vector<int64_t> row_keys_;        // key held in each row (valid where row_used_)
  std::vector<uint8_t> row_used_;
  // Count-min sketch of access frequencies (4 hashed counters per key), halved every
  // `sketch_period_` accesses so that old popularity fades.
  int64_t sketch_width_ = 0;
  std::unique_ptr<std::atomic<uint16_t>[]> sketch_;
  mutable std::atomic<int64_t> sketch_accesses_{0};
  int64_t sketch_period_ = 0;
  uint64_t sample_state_ = 0x9E3779B97F4A7C15ull;
  mutable std::shared_mutex mutex_;
  mutable std::atomic<int64_t> lookups_{0}, hits_{0}, misses_{0};
};

}  // namespace tritonrec
