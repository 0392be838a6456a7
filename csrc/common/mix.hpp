// The one 64-bit mixer of the C++/CUDA core: set selection and frequency sketches of the caches
// (GPU cache, its host twin, the host table's admission sketch) and the finaliser pandas applies to
// every 64-bit hash (tritonrec._native's string hash).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define TRITONREC_HD __host__ __device__ __forceinline__
#else
#define TRITONREC_HD inline
#endif

namespace tritonrec {

/// splitmix64's finaliser: a bijection of 64-bit values whose output bits each depend on all input bits.
TRITONREC_HD uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

}  // namespace tritonrec
