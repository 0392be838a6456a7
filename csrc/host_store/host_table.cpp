#include "host_store/host_table.hpp"

#include <cstring>
#include <mutex>
#include <stdexcept>

#include "host_store/detail/half.hpp"

namespace tritonrec {

HostTable::HostTable(const HostTableOptions& options)
    : dim_(options.dim),
      dtype_(options.dtype),
      slab_rows_(options.slab_rows),
      row_bytes_(options.dim * (options.dtype == RowDtype::kFloat16 ? 2 : 4)),
      index_(options.expected_rows) {
  if (options.dim < 1) throw std::invalid_argument("dim must be >= 1, got " + std::to_string(options.dim));
  if (options.slab_rows < 1) throw std::invalid_argument("slab_rows must be >= 1");
  if (options.dtype != RowDtype::kFloat32 && options.dtype != RowDtype::kFloat16) {
    throw std::invalid_argument("dtype must be float32 or float16");
  }
  if (options.expected_rows < 0) throw std::invalid_argument("expected_rows must be >= 0");
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
    slabs_.emplace_back(new uint8_t[static_cast<size_t>(slab_rows_ * row_bytes_)]);
  }
  return next_row_++;
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

void HostTable::load_row(int64_t row, float* out) const noexcept {
  const uint8_t* source = row_address(row);
  if (dtype_ == RowDtype::kFloat32) {
    std::memcpy(out, source, static_cast<size_t>(row_bytes_));
  } else {
    const auto* halves = reinterpret_cast<const uint16_t*>(source);
    for (int64_t d = 0; d < dim_; ++d) out[d] = detail::half_to_float(halves[d]);
  }
}

void HostTable::insert_or_assign(const int64_t* keys, const float* rows, int64_t n) {
  std::unique_lock<std::shared_mutex> lock(mutex_);
  for (int64_t i = 0; i < n; ++i) {
    int64_t row = index_.find(keys[i]);
    if (row < 0) {
      row = allocate_row();
      index_.assign(keys[i], row);
    }
    store_row(row, rows + i * dim_);
  }
}

int64_t HostTable::erase(const int64_t* keys, int64_t n) {
  std::unique_lock<std::shared_mutex> lock(mutex_);
  int64_t erased = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = index_.erase(keys[i]);
    if (row >= 0) {
      free_rows_.push_back(row);
      ++erased;
    }
  }
  return erased;
}

int64_t HostTable::find(const int64_t* keys, int64_t n, float* out, uint8_t* found, ThreadPool& pool) const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  std::atomic<int64_t> hits{0};
  pool.parallel_for(n, 4096, [&](int64_t begin, int64_t end) {
    int64_t local = 0;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t row = index_.find(keys[i]);
      float* target = out + i * dim_;
      if (row >= 0) {
        load_row(row, target);
        found[i] = 1;
        ++local;
      } else {
        std::memset(target, 0, static_cast<size_t>(dim_) * sizeof(float));
        found[i] = 0;
      }
    }
    hits.fetch_add(local, std::memory_order_relaxed);
  });
  const int64_t total = hits.load();
  lookups_.fetch_add(n, std::memory_order_relaxed);
  hits_.fetch_add(total, std::memory_order_relaxed);
  misses_.fetch_add(n - total, std::memory_order_relaxed);
  return total;
}

int64_t HostTable::size() const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  return index_.size();
}

int64_t HostTable::bytes() const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  return static_cast<int64_t>(slabs_.size()) * slab_rows_ * row_bytes_ + index_.bytes();
}

HostTableStats HostTable::stats() const noexcept {
  return HostTableStats{lookups_.load(), hits_.load(), misses_.load()};
}

}  // namespace tritonrec
