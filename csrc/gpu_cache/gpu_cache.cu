#include "gpu_cache/gpu_cache.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "gpu_cache/detail/cuda_check.hpp"
#include "gpu_cache/detail/insert.cuh"
#include "gpu_cache/detail/invalidate.cuh"
#include "gpu_cache/detail/lookup.cuh"
#include "gpu_cache/detail/misses.cuh"

namespace tritonrec {
namespace {

using detail::check;
using detail::DeviceGuard;

constexpr int kThreads = 256;  // 8 warps per block

int blocks_for(int64_t warps_needed, int device) {
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  const int64_t needed = (warps_needed + kThreads / 32 - 1) / (kThreads / 32);  // 8 warps per block
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(needed, static_cast<int64_t>(sms) * 16)));
}

__global__ void empty_words(unsigned long long* words, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    words[i] = kEmptyTag;
  }
}

int64_t row_bytes(int64_t dim, GpuRowDtype dtype) { return dim * (dtype == GpuRowDtype::kFloat32 ? 4 : 2); }

}  // namespace

int64_t gpu_cache_slot_bytes(int64_t dim, GpuRowDtype dtype, bool admission) noexcept {
  const int64_t sketch = admission ? 4 * kSketchWidthPerRow * static_cast<int64_t>(sizeof(uint32_t)) : 0;
  return row_bytes(dim, dtype) + static_cast<int64_t>(sizeof(uint64_t)) + 1 + sketch;
}

GpuCache::GpuCache(const GpuCacheOptions& options) : options_(options) {
  if (options.dim < 1) throw std::invalid_argument("dim: expected >= 1");
  if (options.capacity_rows < kMinSets * kWays) {
    throw std::invalid_argument("capacity_rows: expected >= " + std::to_string(kMinSets * kWays) + " (" +
                                std::to_string(kMinSets) + " sets of " + std::to_string(kWays) + "), got " +
                                std::to_string(options.capacity_rows));
  }
  if (options.dtype != GpuRowDtype::kFloat32 && options.dtype != GpuRowDtype::kFloat16 &&
      options.dtype != GpuRowDtype::kBFloat16) {
    throw std::invalid_argument("dtype: expected float32, float16 or bfloat16");
  }
  if (options.aging_multiple < 1) throw std::invalid_argument("aging_multiple: expected >= 1");
  if (options.eviction != Eviction::kLru && options.eviction != Eviction::kLfu) {
    throw std::invalid_argument("eviction: expected LRU or LFU");
  }
  sets_ = options.capacity_rows / kWays;
  DeviceGuard guard(options.device);
  const int64_t slots = sets_ * kWays;
  try {
    check(cudaMalloc(&words_, static_cast<size_t>(slots) * sizeof(uint64_t)), "cudaMalloc(words)");
    check(cudaMalloc(&locks_, static_cast<size_t>(sets_) * sizeof(int32_t)), "cudaMalloc(locks)");
    check(cudaMalloc(&rows_, static_cast<size_t>(slots * row_bytes(options.dim, options.dtype))), "cudaMalloc(rows)");
    empty_words<<<blocks_for(slots / 32 + 1, options.device), kThreads>>>(words_, slots);
    check(cudaGetLastError(), "empty_words");
    check(cudaMemset(locks_, 0, static_cast<size_t>(sets_) * sizeof(int32_t)), "cudaMemset(locks)");
    if (options.admission) {
      sketch_width_ = kSketchWidthPerRow * slots;
      check(cudaMalloc(&sketch_, static_cast<size_t>(4 * sketch_width_) * sizeof(uint32_t)), "cudaMalloc(sketch)");
      check(cudaMemset(sketch_, 0, static_cast<size_t>(4 * sketch_width_) * sizeof(uint32_t)), "cudaMemset(sketch)");
    }
    check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize");
  } catch (...) {
    cudaFree(words_);
    cudaFree(locks_);
    cudaFree(rows_);
    cudaFree(sketch_);
    throw;
  }
}

GpuCache::~GpuCache() {
  int previous = 0;
  if (cudaGetDevice(&previous) == cudaSuccess) (void)cudaSetDevice(options_.device);
  cudaFree(words_);
  cudaFree(locks_);
  cudaFree(rows_);
  cudaFree(sketch_);
  (void)cudaSetDevice(previous);
}

int64_t GpuCache::bytes() const noexcept {
  const int64_t slots = sets_ * kWays;
  return slots * (row_bytes(options_.dim, options_.dtype) + static_cast<int64_t>(sizeof(uint64_t))) +
         sets_ * static_cast<int64_t>(sizeof(int32_t)) + 4 * sketch_width_ * static_cast<int64_t>(sizeof(uint32_t));
}

namespace {

template <typename T, typename O>
void launch_lookup_as(const detail::LookupKernelParams& p, const void* rows, int blocks, cudaStream_t stream) {
  const T* r = static_cast<const T*>(rows);
  switch (detail::lookup_moves(p.dim, static_cast<int>(sizeof(T)))) {
    case 1: detail::lookup_kernel<T, O, 1><<<blocks, detail::kLookupThreads, 0, stream>>>(p, r); break;
    case 2: detail::lookup_kernel<T, O, 2><<<blocks, detail::kLookupThreads, 0, stream>>>(p, r); break;
    case 4: detail::lookup_kernel<T, O, 4><<<blocks, detail::kLookupThreads, 0, stream>>>(p, r); break;
    case 8: detail::lookup_kernel<T, O, 8><<<blocks, detail::kLookupThreads, 0, stream>>>(p, r); break;
    default: detail::lookup_kernel<T, O, 0><<<blocks, detail::kLookupThreads, 0, stream>>>(p, r);
  }
}

template <typename T>
void launch_lookup(const detail::LookupKernelParams& p, GpuOutDtype out_dtype, const void* rows, int blocks,
                   cudaStream_t stream) {
  if (out_dtype == GpuOutDtype::kFloat16) {
    launch_lookup_as<T, __half>(p, rows, blocks, stream);
  } else {
    launch_lookup_as<T, float>(p, rows, blocks, stream);
  }
}

}  // namespace

void GpuCache::find_async(const FindArgs& a, cudaStream_t stream) const {
  const int64_t out_stride = a.out_stride == 0 ? options_.dim : a.out_stride;
  if (options_.dim % 8 == 0) {
    const int64_t elem = a.out_dtype == GpuOutDtype::kFloat32 ? 4 : 2;
    if (reinterpret_cast<uintptr_t>(a.out) % 16 != 0 || (out_stride * elem) % 16 != 0) {
      throw std::invalid_argument("out: rows of a dim that is a multiple of 8 must start on 16-byte boundaries");
    }
  }
  DeviceGuard guard(options_.device);
  check(cudaMemsetAsync(a.miss_count, 0, sizeof(int32_t), stream), "cudaMemsetAsync(miss_count)");
  if (a.n == 0) return;
  detail::LookupKernelParams p{words_, sets_, options_.dim, options_.eviction, a.keys, a.key_stride, a.n,
                               a.out, out_stride, a.miss_index, a.miss_count, a.tick, 0u};
  // A grid that covers the keys (one pass a warp; the loop only for grids past 2^31 blocks): on an H200
  // 3.07 against 2.86 G keys/s at dim 128 fp32 for the 16-blocks-an-SM grid the other kernels use.
  const int64_t warp_steps = (a.n + detail::kKeysPerWarp - 1) / detail::kKeysPerWarp;
  const int blocks = static_cast<int>(std::min<int64_t>((warp_steps + 7) / 8, 0x7FFFFFFF));
  switch (options_.dtype) {
    case GpuRowDtype::kFloat16:
      launch_lookup<__half>(p, a.out_dtype, rows_, blocks, stream);
      break;
    case GpuRowDtype::kBFloat16:
      launch_lookup<__nv_bfloat16>(p, a.out_dtype, rows_, blocks, stream);
      break;
    default:
      launch_lookup<float>(p, a.out_dtype, rows_, blocks, stream);
  }
  check(cudaGetLastError(), "lookup_kernel");
}

void GpuCache::insert_async(const int64_t* keys, const float* rows, int64_t n, uint32_t tick, cudaStream_t stream) {
  if (n == 0) return;
  DeviceGuard guard(options_.device);
  detail::InsertKernelParams p{words_, locks_, sets_, options_.dim, options_.eviction, keys, rows, n, tick,
                               FrequencySketch{sketch_, sketch_width_}};
  const int blocks = blocks_for(n, options_.device);
  if (options_.dtype == GpuRowDtype::kFloat16) {
    detail::insert_kernel<__half><<<blocks, kThreads, 0, stream>>>(p, static_cast<__half*>(rows_));
  } else if (options_.dtype == GpuRowDtype::kBFloat16) {
    detail::insert_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(p, static_cast<__nv_bfloat16*>(rows_));
  } else {
    detail::insert_kernel<float><<<blocks, kThreads, 0, stream>>>(p, static_cast<float*>(rows_));
  }
  check(cudaGetLastError(), "insert_kernel");
  inserted_since_aging_ += n;
  if (sketch_ != nullptr && inserted_since_aging_ >= aging_period(capacity_rows(), options_.aging_multiple)) {  // as SetCacheSim::end_call
    inserted_since_aging_ = 0;
    detail::halve_kernel<<<blocks_for(sketch_width_ / 8, options_.device), kThreads, 0, stream>>>(sketch_, 4 * sketch_width_);
    if (options_.eviction == Eviction::kLfu) {
      detail::halve_counts_kernel<<<blocks_for(capacity_rows() / 32 + 1, options_.device), kThreads, 0, stream>>>(words_, capacity_rows());
    }
    check(cudaGetLastError(), "halve_kernel");
  }
}

void GpuCache::invalidate_async(const int64_t* keys, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  DeviceGuard guard(options_.device);
  detail::invalidate_kernel<<<blocks_for(n, options_.device), kThreads, 0, stream>>>(words_, sets_, keys, n);
  check(cudaGetLastError(), "invalidate_kernel");
}

namespace {

dim3 miss_grid(int columns, int64_t items_per_column, int items_per_block) {
  const int64_t x = std::max<int64_t>(1, std::min<int64_t>((items_per_column + items_per_block - 1) / items_per_block, 4096));
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(std::min(columns, 65535)));
}

}  // namespace

void gather_miss_keys_async(const int64_t* keys, int columns, int64_t n, const int32_t* miss_index,
                            const int32_t* counts, int64_t max_count, int64_t* out_keys, int device,
                            cudaStream_t stream, int64_t* host_keys, int32_t* host_counts) {
  if (columns <= 0 || max_count <= 0) return;
  DeviceGuard guard(device);
  detail::gather_miss_keys_kernel<<<miss_grid(columns, max_count, kThreads), kThreads, 0, stream>>>(
      keys, columns, n, miss_index, counts, out_keys, host_keys, host_counts);
  check(cudaGetLastError(), "gather_miss_keys_kernel");
}

void scatter_miss_rows_async(void* out, GpuOutDtype out_dtype, int columns, int64_t n, int64_t dim,
                             const int32_t* miss_index, const int32_t* counts, int64_t max_count,
                             const int32_t* row_of, const float* rows, int device, cudaStream_t stream) {
  if (columns <= 0 || max_count <= 0) return;
  DeviceGuard guard(device);
  const dim3 grid = miss_grid(columns, max_count, kThreads / 32);
  if (out_dtype == GpuOutDtype::kFloat16) {
    detail::scatter_miss_rows_kernel<__half><<<grid, kThreads, 0, stream>>>(static_cast<__half*>(out), columns, n, dim,
                                                                             miss_index, counts, row_of, rows);
  } else {
    detail::scatter_miss_rows_kernel<float><<<grid, kThreads, 0, stream>>>(static_cast<float*>(out), columns, n, dim,
                                                                            miss_index, counts, row_of, rows);
  }
  check(cudaGetLastError(), "scatter_miss_rows_kernel");
}

}  // namespace tritonrec

static_assert(tritonrec::GpuCache::kWays == tritonrec::detail::kWays, "one set size for the class and its kernels");
static_assert(tritonrec::kThreads == tritonrec::detail::kInsertThreads, "the insert kernel is compiled for the block size it is launched with");
