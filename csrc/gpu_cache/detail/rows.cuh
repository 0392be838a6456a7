// Row storage conversions of the GPU cache (fp32 or fp16 storage, fp32 in and out).
#pragma once

#include <cuda_fp16.h>

namespace tritonrec::detail {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

/// `lanes` threads (lane 0..lanes-1) copy one row of `dim` values, converting to fp32.
template <typename T>
__device__ __forceinline__ void copy_row_out(const T* __restrict__ src, float* __restrict__ dst, int64_t dim, int lane, int lanes) {
  if constexpr (sizeof(T) == 4) {
    if ((dim & 3) == 0) {  // 16-byte moves
      const float4* s = reinterpret_cast<const float4*>(src);
      float4* d = reinterpret_cast<float4*>(dst);
      for (int64_t k = lane; k < dim / 4; k += lanes) d[k] = s[k];
      return;
    }
  } else {
    if ((dim & 7) == 0) {  // 8 halves (16 bytes) in, 8 floats out
      const uint4* s = reinterpret_cast<const uint4*>(src);
      for (int64_t k = lane; k < dim / 8; k += lanes) {
        uint4 packed = s[k];
        const __half2* h = reinterpret_cast<const __half2*>(&packed);
        float4* d = reinterpret_cast<float4*>(dst + 8 * k);
        const float2 a = __half22float2(h[0]), b = __half22float2(h[1]), c = __half22float2(h[2]), e = __half22float2(h[3]);
        d[0] = make_float4(a.x, a.y, b.x, b.y);
        d[1] = make_float4(c.x, c.y, e.x, e.y);
      }
      return;
    }
  }
  for (int64_t k = lane; k < dim; k += lanes) dst[k] = to_float(src[k]);
}

}  // namespace tritonrec::detail
