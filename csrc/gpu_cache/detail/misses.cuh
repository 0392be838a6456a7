// Kernels of the miss path of a multi-column lookup (any number of tables, one call): gather the
// missed keys of every column into one list for the host, and scatter the rows the host read back
// into the output. Column t's misses are miss_index[t * n .. t * n + miss_count[t]).
#pragma once

#include <cstdint>

#include "gpu_cache/detail/rows.cuh"

namespace tritonrec::detail {

/// Start of column t's misses in the gathered list: the sum of the counts before it.
__device__ __forceinline__ int64_t miss_offset(const int32_t* counts, int t) {
  int64_t offset = 0;
  for (int c = 0; c < t; ++c) offset += counts[c];
  return offset;
}

/// out_keys[offset(t) + j] = keys[miss_index[t * n + j] * columns + t] for j < counts[t], and the
/// same into host_keys when it is not null (mapped host memory: the host reads the missed keys once
/// the kernel is done, without a copy); host_counts[t] = counts[t] when it is not null (mapped too).
__global__ void gather_miss_keys_kernel(const int64_t* keys, int columns, int64_t n, const int32_t* miss_index,
                                        const int32_t* counts, int64_t* out_keys, int64_t* host_keys, int32_t* host_counts) {
  for (int t = blockIdx.y; t < columns; t += gridDim.y) {
    const int64_t count = counts[t];
    const int64_t offset = miss_offset(counts, t);
    if (host_counts != nullptr && blockIdx.x == 0 && threadIdx.x == 0) host_counts[t] = static_cast<int32_t>(count);
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < count;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t key = keys[static_cast<int64_t>(miss_index[t * n + j]) * columns + t];
      out_keys[offset + j] = key;
      if (host_keys != nullptr) host_keys[offset + j] = key;
    }
  }
}

/// One warp per missed key: out[(i * columns + t) * dim ...] = rows[row_of[offset(t) + j]] in the
/// output type, where i = miss_index[t * n + j]; a null row_of means rows[offset(t) + j].
template <typename O>
__global__ void scatter_miss_rows_kernel(O* out, int columns, int64_t n, int64_t dim, const int32_t* miss_index,
                                         const int32_t* counts, const int32_t* row_of, const float* rows) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int t = blockIdx.y; t < columns; t += gridDim.y) {
    const int64_t count = counts[t];
    const int64_t offset = miss_offset(counts, t);
    for (int64_t j = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; j < count; j += warps) {
      const int64_t i = miss_index[t * n + j];
      const int64_t row = row_of != nullptr ? static_cast<int64_t>(row_of[offset + j]) : offset + j;
      const float* src = rows + row * dim;
      O* dst = out + (i * columns + t) * dim;
      for (int64_t d = lane; d < dim; d += 32) dst[d] = from_float<O>(src[d]);
    }
  }
}

}  // namespace tritonrec::detail
