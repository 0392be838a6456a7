#include "host_store/host_table.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <stdexcept>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "common/mix.hpp"
#include "host_store/detail/half.hpp"
#include "host_store/detail/huge_pages.hpp"
#include "host_store/tables_read.hpp"

namespace tritonrec {

namespace {

using detail::kHugePage;

/// Bytes allocated for a slab of `bytes`: slabs of 8 MiB or more are whole 2 MiB pages.
size_t slab_allocation(size_t bytes) noexcept {
  return bytes >= 4 * kHugePage ? (bytes + kHugePage - 1) / kHugePage * kHugePage : bytes;
}

/// A slab of `bytes` (a slab_allocation size): large ones 2 MiB-aligned and advised into huge
/// pages, so that random row reads miss the TLB far less (a lookup of a large table is bound by
/// its DRAM misses; a 4 KiB page walk adds another).
uint8_t* allocate_slab(size_t bytes) {
  void* memory = bytes >= 4 * kHugePage ? std::aligned_alloc(kHugePage, bytes) : std::malloc(bytes);
  if (memory == nullptr) throw std::bad_alloc();
  if (bytes >= 4 * kHugePage) detail::advise_huge_pages(memory, bytes);
  return static_cast<uint8_t*>(memory);
}

}  // namespace

HostTable::HostTable(const HostTableOptions& options)
    : dim_(options.dim),
      dtype_(options.dtype),
      slab_rows_(options.slab_rows),
      row_bytes_(options.dim * (options.dtype == RowDtype::kFloat16 ? 2 : 4)),
      index_(options.expected_rows),
      max_rows_(options.max_rows) {
  if (options.dim < 1) throw std::invalid_argument("dim must be >= 1, got " + std::to_string(options.dim));
  if (options.slab_rows < 1) throw std::invalid_argument("slab_rows must be >= 1");
  if (options.dtype != RowDtype::kFloat32 && options.dtype != RowDtype::kFloat16) {
    throw std::invalid_argument("dtype must be float32 or float16");
  }
  if (options.expected_rows < 0) throw std::invalid_argument("expected_rows must be >= 0");
  if (options.max_rows < 0) throw std::invalid_argument("max_rows must be >= 0");
  slab_bytes_ = slab_allocation(static_cast<size_t>(slab_rows_ * row_bytes_));
  if (max_rows_ > 0) {
    sketch_width_ = 1024;
    while (sketch_width_ < 4 * max_rows_) sketch_width_ *= 2;
    sketch_.reset(new std::atomic<uint16_t>[static_cast<size_t>(4 * sketch_width_)]);
    for (int64_t i = 0; i < 4 * sketch_width_; ++i) sketch_[static_cast<size_t>(i)].store(0, std::memory_order_relaxed);
    sketch_period_ = 10 * std::max<int64_t>(max_rows_, 1024);
  }
}

void HostTable::count_access(int64_t key) const noexcept {
  const uint64_t h = mix64(static_cast<uint64_t>(key));
  for (int d = 0; d < 4; ++d) {
    auto& counter = sketch_[static_cast<size_t>(d * sketch_width_ + ((h >> (16 * d)) & static_cast<uint64_t>(sketch_width_ - 1)))];
    if (counter.load(std::memory_order_relaxed) < 0xFFFF) counter.fetch_add(1, std::memory_order_relaxed);
  }
  sketch_accesses_.fetch_add(1, std::memory_order_relaxed);
}

uint32_t HostTable::frequency(int64_t key) const noexcept {
  const uint64_t h = mix64(static_cast<uint64_t>(key));
  uint32_t least = 0xFFFF;
  for (int d = 0; d < 4; ++d) {
    const auto& counter = sketch_[static_cast<size_t>(d * sketch_width_ + ((h >> (16 * d)) & static_cast<uint64_t>(sketch_width_ - 1)))];
    least = std::min<uint32_t>(least, counter.load(std::memory_order_relaxed));
  }
  return least;
}

uint8_t* HostTable::row_address(int64_t row) const noexcept {
  return slabs_[static_cast<size_t>(row / slab_rows_)].get() + (row % slab_rows_) * row_bytes_;
}

int64_t HostTable::allocate_row() {
  if (!free_rows_.empty()) {
    const int64_t row = free_rows_.back();
    free_rows_.pop_back();
    return row;
  }
  if (next_row_ > detail::KeyIndex::kMaxRow) throw std::length_error("a HostTable holds at most 2^31 rows");
  if (next_row_ == static_cast<int64_t>(slabs_.size()) * slab_rows_) {
    slabs_.emplace_back(allocate_slab(slab_bytes_));
  }
  if (max_rows_ > 0) {  // eviction needs the key of each row; unlimited tables skip the cost
    row_keys_.push_back(0);
    row_used_.push_back(0);
  }
  return next_row_++;
}

void HostTable::insert_row(int64_t key, const float* values) {
  const int64_t row = allocate_row();
  index_.assign(key, row);
  if (max_rows_ > 0) {
    row_keys_[static_cast<size_t>(row)] = key;
    row_used_[static_cast<size_t>(row)] = 1;
  }
  store_row(row, values);
}

void HostTable::store_row(int64_t row, const float* values) noexcept {
  uint8_t* target = row_address(row);
  if (dtype_ == RowDtype::kFloat32) {
    std::memcpy(target, values, static_cast<size_t>(row_bytes_));
  } else {
    auto* halves = reinterpret_cast<uint16_t*>(target);
    for (int64_t d = 0; d < dim_; ++d) halves[d] = detail::float_to_half(values[d]);
  }
}

namespace {

/// Copies `bytes` with non-temporal stores where it can (x86, 16-byte aligned target, whole 16-byte
/// words), else memcpy. The caller fences (stream_fence) before the target is read elsewhere.
void stream_copy(void* target, const void* source, size_t bytes) noexcept {
#if defined(__SSE2__)
  if ((reinterpret_cast<uintptr_t>(target) & 15) == 0 && (bytes & 15) == 0) {
    auto* to = static_cast<__m128i*>(target);
    const auto* from = static_cast<const __m128i*>(source);
    for (size_t i = 0; i < bytes / 16; ++i) _mm_stream_si128(to + i, _mm_loadu_si128(from + i));
    return;
  }
#endif
  std::memcpy(target, source, bytes);
}

void stream_fence() noexcept {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace

void HostTable::load_row(int64_t row, float* out, bool streaming) const noexcept {
  const uint8_t* source = row_address(row);
  if (dtype_ == RowDtype::kFloat32) {
    if (streaming) {
      stream_copy(out, source, static_cast<size_t>(row_bytes_));
      return;
    }
    std::memcpy(out, source, static_cast<size_t>(row_bytes_));
  } else {
    const auto* halves = reinterpret_cast<const uint16_t*>(source);
    for (int64_t d = 0; d < dim_; ++d) out[d] = detail::half_to_float(halves[d]);
  }
}

void HostTable::insert_or_assign(const int64_t* keys, const float* rows, int64_t n) {
  std::unique_lock<std::shared_mutex> lock(mutex_);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = index_.find(keys[i]);
    if (row < 0) {
      insert_row(keys[i], rows + i * dim_);
    } else {
      store_row(row, rows + i * dim_);
    }
  }
}

void HostTable::assign_if_present(const int64_t* keys, const float* rows, int64_t n) {
  std::unique_lock<std::shared_mutex> lock(mutex_);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = index_.find(keys[i]);
    if (row >= 0) store_row(row, rows + i * dim_);
  }
}

int64_t HostTable::admit(const int64_t* keys, const float* rows, int64_t n) {
  std::unique_lock<std::shared_mutex> lock(mutex_);
  if (max_rows_ > 0 && sketch_accesses_.load(std::memory_order_relaxed) >= sketch_period_) {
    for (int64_t i = 0; i < 4 * sketch_width_; ++i) {
      auto& counter = sketch_[static_cast<size_t>(i)];
      counter.store(static_cast<uint16_t>(counter.load(std::memory_order_relaxed) >> 1), std::memory_order_relaxed);
    }
    sketch_accesses_.store(0, std::memory_order_relaxed);
  }
  int64_t taken = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (index_.find(keys[i]) >= 0) continue;
    if (max_rows_ == 0 || index_.size() < max_rows_) {
      insert_row(keys[i], rows + i * dim_);
      ++taken;
      continue;
    }
    // Sample held rows; the least frequent is the eviction candidate.
    int64_t victim = -1;
    uint32_t victim_frequency = 0;
    for (int s = 0; s < 8; ++s) {
      sample_state_ ^= sample_state_ << 13;
      sample_state_ ^= sample_state_ >> 7;
      sample_state_ ^= sample_state_ << 17;
      const int64_t row = static_cast<int64_t>(sample_state_ % static_cast<uint64_t>(next_row_));
      if (!row_used_[static_cast<size_t>(row)]) continue;
      const uint32_t f = frequency(row_keys_[static_cast<size_t>(row)]);
      if (victim < 0 || f < victim_frequency) {
        victim = row;
        victim_frequency = f;
      }
    }
    if (victim < 0 || frequency(keys[i]) <= victim_frequency) continue;
    index_.erase(row_keys_[static_cast<size_t>(victim)]);
    row_used_[static_cast<size_t>(victim)] = 0;
    free_rows_.push_back(victim);
    insert_row(keys[i], rows + i * dim_);
    ++taken;
  }
  return taken;
}

int64_t HostTable::erase(const int64_t* keys, int64_t n) {
  std::unique_lock<std::shared_mutex> lock(mutex_);
  int64_t erased = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = index_.erase(keys[i]);
    if (row >= 0) {
      if (max_rows_ > 0) row_used_[static_cast<size_t>(row)] = 0;
      free_rows_.push_back(row);
      ++erased;
    }
  }
  return erased;
}

int64_t HostTable::find_range(const int64_t* keys, int64_t key_stride, int64_t begin, int64_t end, float* out, int64_t out_stride,
                              uint8_t* found, int64_t found_stride, bool streaming) const noexcept {
  // A software pipeline over the keys: key i + kSlotAhead's index slots are prefetched, key
  // i + kRowAhead is resolved and its row's lines prefetched, key i's row is copied. A lookup of a
  // large table waits on DRAM about twice a key (the index slot, then the row); the pipeline keeps
  // about kSlotAhead of those misses in flight a thread instead of one.
  constexpr int64_t kRowAhead = 8;
  constexpr int64_t kSlotAhead = 2 * kRowAhead;
  const int64_t row_lines = (row_bytes_ + 63) / 64;
  int64_t rows[kRowAhead] = {};
  auto key_at = [&](int64_t i) { return keys[i * key_stride]; };
  auto resolve = [&](int64_t i) {
    const int64_t key = key_at(i);
    if (max_rows_ > 0) count_access(key);
    const int64_t row = index_.find(key);
    if (row >= 0) {
      const uint8_t* source = row_address(row);
      for (int64_t line = 0; line < row_lines; ++line) __builtin_prefetch(source + 64 * line);
    }
    rows[i % kRowAhead] = row;
  };
  for (int64_t i = begin; i < std::min(end, begin + kSlotAhead); ++i) index_.prefetch(key_at(i));
  for (int64_t i = begin; i < std::min(end, begin + kRowAhead); ++i) resolve(i);
  int64_t hits = 0;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t row = rows[i % kRowAhead];
    float* target = out + i * out_stride;
    if (row >= 0) {
      load_row(row, target, streaming);
      found[i * found_stride] = 1;
      ++hits;
    } else {
      std::memset(target, 0, static_cast<size_t>(dim_) * sizeof(float));
      found[i * found_stride] = 0;
    }
    if (i + kSlotAhead < end) index_.prefetch(key_at(i + kSlotAhead));
    if (i + kRowAhead < end) resolve(i + kRowAhead);
  }
  if (streaming) stream_fence();
  return hits;
}

void HostTable::count_lookups(int64_t n, int64_t hits) const noexcept {
  lookups_.fetch_add(n, std::memory_order_relaxed);
  hits_.fetch_add(hits, std::memory_order_relaxed);
  misses_.fetch_add(n - hits, std::memory_order_relaxed);
}

int64_t HostTable::find(const int64_t* keys, int64_t n, float* out, uint8_t* found, ThreadPool& pool, bool streaming) const {
  return TablesRead({{this, keys, n, out, found}}, pool, streaming).finish()[0];  // the read lock held, counted
}

int64_t HostTable::find_strided(const int64_t* keys, int64_t key_stride, int64_t n, float* out, int64_t out_stride,
                                uint8_t* found, int64_t found_stride) const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  const int64_t total = find_range(keys, key_stride, 0, n, out, out_stride, found, found_stride);
  count_lookups(n, total);
  return total;
}

int64_t HostTable::size() const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  return index_.size();
}

int64_t HostTable::bytes() const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  return static_cast<int64_t>(slabs_.size() * slab_bytes_) + index_.bytes() +
         static_cast<int64_t>(row_keys_.capacity() * sizeof(int64_t) + row_used_.capacity()) +
         4 * sketch_width_ * static_cast<int64_t>(sizeof(uint16_t));
}

HostTableStats HostTable::stats() const noexcept {
  return HostTableStats{lookups_.load(), hits_.load(), misses_.load()};
}

}  // namespace tritonrec
