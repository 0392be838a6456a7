// Row storage and output conversions of the GPU cache: fp32, fp16 or bf16 storage; fp32 or fp16
// output. Row loads go through L2 (ld.global.cg): an insert on another stream may be rewriting a
// row while a lookup reads it, so a line that L1 kept from earlier in the kernel may be stale (the
// lookup re-checks the slot's key after reading; see lookup.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace tritonrec::detail {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

/// 8 stored values (16 bytes of a 2-byte type) as floats.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& packed, float* f) {
  const T* v = reinterpret_cast<const T*>(&packed);
#pragma unroll
  for (int j = 0; j < 8; ++j) f[j] = to_float(v[j]);
}

/// Stores 4 floats at `dst` (16-byte aligned for fp32 output, 8-byte for fp16).
template <typename O>
__device__ __forceinline__ void store4(O* dst, float a, float b, float c, float d) {
  if constexpr (sizeof(O) == 4) {
    *reinterpret_cast<float4*>(dst) = make_float4(a, b, c, d);
  } else {
    __half2 lo = __floats2half2_rn(a, b), hi = __floats2half2_rn(c, d);
    uint2 packed;
    packed.x = *reinterpret_cast<uint32_t*>(&lo);
    packed.y = *reinterpret_cast<uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(dst) = packed;
  }
}

/// Stores one 16-byte move of stored values (4 fp32 or 8 fp16/bf16) at `dst` as the output type.
template <typename T, typename O>
__device__ __forceinline__ void store_move(const uint4& packed, O* dst) {
  if constexpr (sizeof(T) == 4) {
    const float4 v = *reinterpret_cast<const float4*>(&packed);
    store4<O>(dst, v.x, v.y, v.z, v.w);
  } else if constexpr (sizeof(O) == 2 && std::is_same_v<T, __half>) {
    *reinterpret_cast<uint4*>(dst) = packed;  // fp16 to fp16: a plain move
  } else {
    float f[8];
    unpack8<T>(packed, f);
    store4<O>(dst, f[0], f[1], f[2], f[3]);
    store4<O>(dst + 4, f[4], f[5], f[6], f[7]);
  }
}

/// `lanes` threads (lane 0..lanes-1) copy one row of `dim` stored values T to the output type O
/// (float or __half), loading through L2. Vector moves when dim is a multiple of 8 (the output
/// row must then be 16-byte aligned for fp32, 8-byte for fp16; the caller checks).
/// Returns a token that depends on every value this lane loaded (the OR of their first words),
/// so that a later load can be made to wait for all of them (lookup.cuh's re-check).
template <typename T, typename O>
__device__ __forceinline__ uint32_t copy_row_out(const T* src, O* dst, int64_t dim, int lane, int lanes) {
  uint32_t token = 0;
  if ((dim & 7) == 0) {  // 16-byte moves: 4 fp32 or 8 fp16/bf16 values each
    constexpr int kPerMove = 16 / static_cast<int>(sizeof(T));
    const uint4* s = reinterpret_cast<const uint4*>(src);
    for (int64_t k = lane; k < dim / kPerMove; k += lanes) {
      const uint4 packed = __ldcg(s + k);
      token |= packed.x;
      store_move<T, O>(packed, dst + k * kPerMove);
    }
    return token;
  }
  for (int64_t k = lane; k < dim; k += lanes) {
    const float v = to_float(__ldcg(src + k));
    token |= __float_as_uint(v);
    dst[k] = from_float<O>(v);
  }
  return token;
}

/// copy_row_out's vector path for rows of at most MOVES x `lanes` 16-byte moves (dim a multiple of
/// 8): every load of the lane's part of the row is issued before any store, so they are in flight
/// together. Returns the same token as copy_row_out.
template <int MOVES, typename T, typename O>
__device__ __forceinline__ uint32_t copy_row_moves(const T* src, O* dst, int64_t dim, int lane, int lanes) {
  constexpr int kPerMove = 16 / static_cast<int>(sizeof(T));  // stored values per 16-byte move
  const int64_t moves = dim / kPerMove;
  const uint4* s = reinterpret_cast<const uint4*>(src);
  uint4 v[MOVES];
#pragma unroll
  for (int m = 0; m < MOVES; ++m) {
    if (m * lanes + lane < moves) v[m] = __ldcg(s + m * lanes + lane);
  }
  uint32_t token = 0;
#pragma unroll
  for (int m = 0; m < MOVES; ++m) {
    if (m * lanes + lane < moves) {
      token |= v[m].x;
      store_move<T, O>(v[m], dst + (m * lanes + lane) * kPerMove);
    }
  }
  return token;
}

}  // namespace tritonrec::detail
