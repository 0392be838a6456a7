// Where the GPU cache's all-hit lookup spends its time: variants of its probe kernel, all hits, against a
// plain gather of the same rows by index, in one run on one GPU. Not the product kernel (csrc/gpu_cache):
// a bench of design choices before changing it (issue 16). Each variant is the product's scheme
// (a group of WAYS lanes per key probes one set line of WAYS int64 keys, copies the row through L2,
// re-checks the slot's key after the copy through an address dependency, writes the LRU tick) with
// one thing changed:
//   ways     8-way sets (64-byte key lines, 8 lanes per key, 4 keys per warp at once) or 16-way
//   unroll   keys per lane group in flight per step
//   meta     the LRU tick write per hit: on, off, or only when the slot's tick is older (read first)
//   recheck  the seqlock re-check after the copy: on or off (off is unsafe beside inserts)
//   fast     set = high 64 bits of mix64(key) * sets (one multiply) instead of mix64(key) % sets
// Build: nvcc -O3 -std=c++17 -arch=sm_90 -o gpu_probe_variants gpu_probe_variants.cu
// Run:   ./gpu_probe_variants [rows=1048576] [repeats=20] [only]   (prints a Markdown table; `only`: run
//        just the variants whose name holds it, e.g. R3 for round 3: the set line and the tick, vs NVE's
//        layout; R4 for round 4: where a hit finds its slot's tick, the product's slot word among them)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "../../csrc/common/mix.hpp"

#define CHECK(x)                                                                        \
  do {                                                                                  \
    cudaError_t e = (x);                                                                \
    if (e != cudaSuccess) {                                                             \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e)); \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

constexpr long long kEmpty = INT64_MIN;

using tritonrec::mix64;  // the product's mixer

template <bool FAST>
__host__ __device__ inline long long set_of(long long key, long long sets) {
  const unsigned long long h = mix64(static_cast<unsigned long long>(key));
  if constexpr (FAST) {
#ifdef __CUDA_ARCH__
    return static_cast<long long>(__umul64hi(h, static_cast<unsigned long long>(sets)));
#else
    return static_cast<long long>((static_cast<unsigned __int128>(h) * static_cast<unsigned long long>(sets)) >> 64);
#endif
  }
  return static_cast<long long>(h % static_cast<unsigned long long>(sets));
}

enum Meta { kNoMeta = 0, kWriteMeta = 1, kReadThenWrite = 2 };

struct Params {
  const long long* set_keys;
  unsigned* meta;
  long long sets;
  int dim4;  // float4s per row
  const float4* rows;
  const long long* keys;
  long long n;
  float4* out;
  int* misses;
  unsigned tick;
  unsigned zero;
};

template <int WAYS, int UNROLL, int META, bool RECHECK, bool FAST>
__global__ void probe(Params p) {
  constexpr int G = 32 / WAYS;  // lane groups per warp
  constexpr unsigned kMask = WAYS == 32 ? 0xFFFFFFFFu : (1u << WAYS) - 1u;
  const int lane = threadIdx.x & 31, g = lane / WAYS, l = lane % WAYS;
  const long long warps = (static_cast<long long>(gridDim.x) * blockDim.x) >> 5;
  for (long long w = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; w * G * UNROLL < p.n; w += warps) {
    long long idx[UNROLL], set[UNROLL], key[UNROLL], held[UNROLL];
    bool valid[UNROLL];
    int way[UNROLL];
    unsigned token[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      idx[u] = w * G * UNROLL + u * G + g;
      valid[u] = idx[u] < p.n;
      key[u] = valid[u] ? p.keys[idx[u]] : kEmpty;
      token[u] = 0;
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      set[u] = set_of<FAST>(key[u], p.sets);
      held[u] = valid[u] ? p.set_keys[set[u] * WAYS + l] : kEmpty;
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const unsigned ballot = __ballot_sync(0xFFFFFFFFu, valid[u] && held[u] == key[u]);
      const unsigned match = (ballot >> (WAYS * g)) & kMask;
      way[u] = match ? __ffs(match) - 1 : -1;
      if (way[u] >= 0) {
        const float4* src = p.rows + (set[u] * WAYS + way[u]) * p.dim4;
        float4* dst = p.out + idx[u] * p.dim4;
        for (int k = l; k < p.dim4; k += WAYS) {
          const float4 v = __ldcg(src + k);
          token[u] |= __float_as_uint(v.x);
          dst[k] = v;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      bool torn = false;
      if constexpr (RECHECK) {
        const unsigned after = __reduce_or_sync(0xFFFFFFFFu, token[u] & p.zero);
        torn = way[u] >= 0 && l == way[u] && __ldcg(p.set_keys + set[u] * WAYS + way[u] + after) != key[u];
      }
      const unsigned torn_ballot = __ballot_sync(0xFFFFFFFFu, torn);
      const bool hit = way[u] >= 0 && ((torn_ballot >> (WAYS * g)) & kMask) == 0;
      if (!valid[u]) continue;
      if (hit) {
        if (META != kNoMeta && l == way[u]) {
          unsigned* m = p.meta + set[u] * WAYS + way[u];
          if (META == kWriteMeta || *m != p.tick) *m = p.tick;
        }
      } else if (l == 0) {
        atomicAdd(p.misses, 1);
      }
    }
  }
}

// Round 2: keys 8 or 16 ways probed by LANES lanes (WAYS / LANES keys per lane, one vector load), the row
// width known at compile time (every load of a row issued before its stores), and a register budget
// (__launch_bounds__ minimum blocks per SM: more resident warps, more keys in flight). Fast sets, LRU
// tick written, re-check on: the product's semantics.
template <int WAYS, int LANES>
struct KeyLoad;
template <int WAYS>
struct KeyLoad<WAYS, WAYS> {  // one key per lane
  static constexpr int kPer = 1;
  __device__ static void load(const long long* line, int l, long long* out) { out[0] = line[l]; }
};
template <>
struct KeyLoad<16, 8> {  // two keys per lane, one 16-byte load
  static constexpr int kPer = 2;
  __device__ static void load(const long long* line, int l, long long* out) {
    const longlong2 v = reinterpret_cast<const longlong2*>(line)[l];
    out[0] = v.x;
    out[1] = v.y;
  }
};

/// Copies a row of DIM4 float4s with LANES lanes (this lane's part: every load before its stores);
/// returns a token that depends on every value this lane loaded (for the re-check's address).
template <int DIM4, int LANES>
__device__ __forceinline__ unsigned copy_row(const float4* src, float4* dst, int l) {
  constexpr int kMoves = (DIM4 + LANES - 1) / LANES;
  float4 v[kMoves];
  unsigned token = 0;
#pragma unroll
  for (int m = 0; m < kMoves; ++m)
    if (m * LANES + l < DIM4) v[m] = __ldcg(src + m * LANES + l);
#pragma unroll
  for (int m = 0; m < kMoves; ++m)
    if (m * LANES + l < DIM4) {
      token |= __float_as_uint(v[m].x);
      dst[m * LANES + l] = v[m];
    }
  return token;
}

template <int WAYS, int LANES, int UNROLL, int DIM4, int MINB>
__global__ void __launch_bounds__(256, MINB) probe2(Params p) {
  using Load = KeyLoad<WAYS, LANES>;
  constexpr int kPer = Load::kPer;
  constexpr int G = 32 / LANES;
  constexpr unsigned kMask = (1u << LANES) - 1u;
  const int lane = threadIdx.x & 31, g = lane / LANES, l = lane % LANES;
  const long long warps = (static_cast<long long>(gridDim.x) * blockDim.x) >> 5;
  for (long long w = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; w * G * UNROLL < p.n; w += warps) {
    long long idx[UNROLL], set[UNROLL], key[UNROLL], held[UNROLL][kPer];
    bool valid[UNROLL];
    int way[UNROLL];
    unsigned token[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      idx[u] = w * G * UNROLL + u * G + g;
      valid[u] = idx[u] < p.n;
      key[u] = valid[u] ? p.keys[idx[u]] : kEmpty;
      token[u] = 0;
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      set[u] = set_of<true>(key[u], p.sets);
      if (valid[u]) {
        Load::load(p.set_keys + set[u] * WAYS, l, held[u]);
      } else {
#pragma unroll
        for (int j = 0; j < kPer; ++j) held[u][j] = kEmpty;
      }
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      int mine = -1;  // the way this lane matched, if any
#pragma unroll
      for (int j = 0; j < kPer; ++j)
        if (valid[u] && held[u][j] == key[u]) mine = l * kPer + j;
      const unsigned ballot = __ballot_sync(0xFFFFFFFFu, mine >= 0);
      const unsigned match = (ballot >> (LANES * g)) & kMask;
      const int owner = match ? __ffs(match) - 1 : -1;  // the lane holding the way
      way[u] = __shfl_sync(0xFFFFFFFFu, mine, owner >= 0 ? LANES * g + owner : lane);
      if (owner < 0) way[u] = -1;
      if (way[u] >= 0) {
        token[u] = copy_row<DIM4, LANES>(p.rows + (set[u] * WAYS + way[u]) * DIM4, p.out + idx[u] * DIM4, l);
      }
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const unsigned after = __reduce_or_sync(0xFFFFFFFFu, token[u] & p.zero);
      const bool checker = way[u] >= 0 && l == way[u] / kPer;
      const bool torn = checker && __ldcg(p.set_keys + set[u] * WAYS + way[u] + after) != key[u];
      const unsigned torn_ballot = __ballot_sync(0xFFFFFFFFu, torn);
      const bool hit = way[u] >= 0 && ((torn_ballot >> (LANES * g)) & kMask) == 0;
      if (!valid[u]) continue;
      if (hit) {
        if (checker) p.meta[set[u] * WAYS + way[u]] = p.tick;
      } else if (l == 0) {
        atomicAdd(p.misses, 1);
      }
    }
  }
}

template <int WAYS, int LANES, int UNROLL, int MINB>
void launch2(int dim4, int blocks, Params p) {
  switch (dim4) {
    case 8: probe2<WAYS, LANES, UNROLL, 8, MINB><<<blocks, 256>>>(p); break;
    case 16: probe2<WAYS, LANES, UNROLL, 16, MINB><<<blocks, 256>>>(p); break;
    default: probe2<WAYS, LANES, UNROLL, 32, MINB><<<blocks, 256>>>(p); break;
  }
}

// Round 3: what the set's line costs. The line of 16 int64 keys (128 bytes) is half of what a dim-64
// hit moves besides its row; NVE's line is 8 uint16 tags (16 bytes: tag = key / sets, set = key %
// sets, so only keys below 2^16 x sets can be held). Variants, 8 lanes per key, row width at compile
// time, the product's register budgets:
//   kFpMeta     16 uint16 fingerprints a set (one 32-byte sector: bits of mix64(key) the set does not
//               use; 0 = empty), the full key re-checked at the slot after the row's loads (a false
//               fingerprint match tries the next candidate), the LRU tick written to its own array
//   kFpRecord   the same, key and tick side by side in a 16-byte slot record: the tick written into
//               the sector the re-check has just read
//   kFpNoMeta   the same as kFpMeta without the tick write
//   kFpIfOld    kFpRecord, the tick written only when it differs (the tick held still across calls:
//               the steady state of a coarse clock, e.g. CLOCK's reference bit already set)
//   kNveLayout  NVE's layout: 8-way, uint16 tag = key >> log2(sets), set = key & (sets - 1), no
//               re-check, no tick (keys below 2^30 here)
//   kLineIfOld  the product's 128-byte line of int64 keys, the tick read from its array and written
//               only when it differs (held still): the clock change alone, layout kept
//   kLineNoMeta the product's line, no tick at all
//   kLineSample the product's line, the tick written (not read) by a hit only in 1 of 8 ticks, chosen by
//               a hash of key and tick (the tick moving every call, as the product's does)
// Round 4: where a hit can read its slot's tick without a random sector of its own, so that it
// writes only when the tick moved (a clock that moves by misses stands still while all hit):
//   kRec8      8-way sets of 16-byte {key, tick} slot records (one 128-byte line, a record a lane):
//              the line read gives the tick, the re-check reads the record again from L2
//   kAdj       the product's 16-way line of int64 keys with the set's 16 uint32 ticks in the next
//              64 bytes (a set 256 bytes apart): the tick's sector beside the line's
//   kRec96     8-way sets of 96 bytes: the 8 int64 keys (64 bytes), then their 8 uint32 ticks (one
//              32-byte sector): three sectors a set instead of four; lanes 0-3 load the keys, 4-5 the ticks
//   kFpRow     8-way sets of one 32-byte sector: 8 uint16 fingerprints, then 8 uint16 ticks; the full
//              key stored in front of its row (a 16-byte header), re-checked there after the row's loads
//              (the row's own sectors): a line of one sector instead of four
//   kWordTick  the product's 16-way line of 8-byte words, each the low 56 bits of mix64(key) (which,
//              with the set, tell the key apart when there are >= 256 sets) and an 8-bit tick in the
//              top byte: the line read gives the tick; a hit that must move it does so by atomicCAS
// each held still (no write in an all-hit stream) or moving (every call a new tick: every hit writes).
enum Mode3 { kFpMeta = 0, kFpRecord = 1, kFpNoMeta = 2, kFpIfOld = 3, kNveLayout = 4, kLineIfOld = 5, kLineNoMeta = 6, kLineSample = 7,
             kRec8 = 8, kAdj = 9, kRec96 = 10, kFpRow = 11, kWordTick = 12 };
constexpr unsigned long long kLow56 = (1ULL << 56) - 1;
__host__ __device__ constexpr bool line_mode(int mode) { return mode == kLineIfOld || mode == kLineNoMeta || mode == kLineSample || mode == kAdj; }
__host__ __device__ constexpr bool record_mode(int mode) { return mode == kFpRecord || mode == kFpIfOld || mode == kRec8; }
constexpr int kAdjStride = 32;  // int64s a kAdj set takes: 16 keys, 16 uint32 ticks, 64 bytes unused
constexpr int kRec96Stride = 12;  // int64s a kRec96 set takes: 8 keys, 8 uint32 ticks

struct Params3 : Params {        // set_keys (sets, 16): kFpMeta, kFpNoMeta and the line modes; dim4 unused (DIM4)
  const unsigned short* tags;  // (sets, ways)
  longlong2* records;          // (sets, 16) {key, tick}: kFpRecord, kFpIfOld; (sets, 8): kRec8
  long long* adj;              // (sets, kAdjStride): kAdj; (sets, kRec96Stride): kRec96
  unsigned short* fpline;      // (sets, 16): kFpRow's 8 fingerprints, then 8 ticks
  const float4* slotrows;      // (slots, dim4 + 1): kFpRow's key (first 8 bytes), then the row
  int set_shift;               // kNveLayout: log2(sets)
};

__host__ __device__ inline unsigned short fingerprint(long long key) {
  const unsigned f = static_cast<unsigned>(mix64(static_cast<unsigned long long>(key)) & 0xFFFFu);
  return static_cast<unsigned short>(f == 0 ? 1 : f);
}

template <int MODE, int DIM4, int MINB>
__global__ void __launch_bounds__(256, MINB) probe3(Params3 p) {
  constexpr int kLanes = 8, kWays = MODE == kNveLayout || MODE == kRec8 || MODE == kRec96 || MODE == kFpRow ? 8 : 16;
  static_assert(MODE != kWordTick || kWays == 16, "kWordTick: the product's 16-way line");
  constexpr long long kSetStride = MODE == kAdj ? kAdjStride : kWays;  // int64s between line starts
  const int lane = threadIdx.x & 31, g = lane / kLanes, l = lane % kLanes, shift = kLanes * g;
  const long long warps = (static_cast<long long>(gridDim.x) * blockDim.x) >> 5;
  for (long long w = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; w * 4 < p.n; w += warps) {
    const long long idx = w * 4 + g;
    const bool valid = idx < p.n;
    const long long key = valid ? p.keys[idx] : kEmpty;
    long long set;
    unsigned cand = 0;  // the group's candidate ways
    unsigned held_tick = 0;  // kRec96: the tick read with the line
    if constexpr (MODE == kNveLayout) {
      set = key & (p.sets - 1);
      const unsigned short t = valid ? p.tags[set * kWays + l] : 0xFFFFu;
      const bool m = valid && (static_cast<long long>(t) << p.set_shift | set) == key;
      cand = (__ballot_sync(0xFFFFFFFFu, m) >> shift) & 0xFFu;
    } else if constexpr (MODE == kRec96) {
      set = set_of<true>(key, p.sets);
      const longlong2 held = valid && l < 6 ? reinterpret_cast<const longlong2*>(p.adj + set * kRec96Stride)[l] : make_longlong2(kEmpty, kEmpty);
      const unsigned b0 = (__ballot_sync(0xFFFFFFFFu, valid && l < 4 && held.x == key) >> shift) & 0xFu;
      const unsigned b1 = (__ballot_sync(0xFFFFFFFFu, valid && l < 4 && held.y == key) >> shift) & 0xFu;
#pragma unroll
      for (int i = 0; i < 4; ++i) cand |= ((b0 >> i) & 1u) << (2 * i) | ((b1 >> i) & 1u) << (2 * i + 1);
      // the hit way's tick, from lane 4 + way / 4 (word way % 4 of its 16 bytes); cand is the group's
      const int w = cand ? __ffs(cand) - 1 : 0;
      const unsigned words[4] = {static_cast<unsigned>(held.x), static_cast<unsigned>(held.x >> 32), static_cast<unsigned>(held.y),
                                 static_cast<unsigned>(held.y >> 32)};
      held_tick = __shfl_sync(0xFFFFFFFFu, words[w & 3], shift + 4 + w / 4);
    } else if constexpr (MODE == kWordTick) {
      const unsigned long long h = mix64(static_cast<unsigned long long>(key));
      set = set_of<true>(key, p.sets);
      const longlong2 held = valid ? reinterpret_cast<const longlong2*>(p.adj + set * 16)[l] : make_longlong2(-1, -1);
      const unsigned long long tag = h & kLow56;
      const bool m0 = valid && (static_cast<unsigned long long>(held.x) & kLow56) == tag;
      const bool m1 = valid && (static_cast<unsigned long long>(held.y) & kLow56) == tag;
      const unsigned b0 = (__ballot_sync(0xFFFFFFFFu, m0) >> shift) & 0xFFu;
      const unsigned b1 = (__ballot_sync(0xFFFFFFFFu, m1) >> shift) & 0xFFu;
#pragma unroll
      for (int i = 0; i < 8; ++i) cand |= ((b0 >> i) & 1u) << (2 * i) | ((b1 >> i) & 1u) << (2 * i + 1);
    } else if constexpr (MODE == kFpRow) {
      set = set_of<true>(key, p.sets);
      const unsigned f = fingerprint(key);
      const uint4 v = valid && l < 2 ? reinterpret_cast<const uint4*>(p.fpline + set * 16)[l] : make_uint4(0, 0, 0, 0);
      const unsigned words[4] = {v.x, v.y, v.z, v.w};
      unsigned m = 0;  // lane 0's words are the fingerprints
#pragma unroll
      for (int i = 0; i < 4; ++i) m |= ((words[i] & 0xFFFFu) == f ? 1u : 0u) << (2 * i) | ((words[i] >> 16) == f ? 1u : 0u) << (2 * i + 1);
      cand = __shfl_sync(0xFFFFFFFFu, m, shift);
      const int w = cand ? __ffs(cand) - 1 : 0;  // lane 1's words are the ticks
      held_tick = __shfl_sync(0xFFFFFFFFu, (words[(w >> 1) & 3] >> (16 * (w & 1))) & 0xFFFFu, shift + 1);
    } else if constexpr (MODE == kRec8) {
      set = set_of<true>(key, p.sets);
      const longlong2 r = valid ? p.records[set * kWays + l] : make_longlong2(kEmpty, 0);
      cand = (__ballot_sync(0xFFFFFFFFu, valid && r.x == key) >> shift) & 0xFFu;
    } else if constexpr (line_mode(MODE)) {
      set = set_of<true>(key, p.sets);
      const long long* line = (MODE == kAdj ? p.adj : p.set_keys) + set * kSetStride;
      const longlong2 held = valid ? reinterpret_cast<const longlong2*>(line)[l] : make_longlong2(kEmpty, kEmpty);
      const unsigned b0 = (__ballot_sync(0xFFFFFFFFu, valid && held.x == key) >> shift) & 0xFFu;
      const unsigned b1 = (__ballot_sync(0xFFFFFFFFu, valid && held.y == key) >> shift) & 0xFFu;
#pragma unroll
      for (int i = 0; i < 8; ++i) cand |= ((b0 >> i) & 1u) << (2 * i) | ((b1 >> i) & 1u) << (2 * i + 1);
    } else {
      set = set_of<true>(key, p.sets);
      const unsigned short f = fingerprint(key);
      const unsigned t = valid ? reinterpret_cast<const unsigned*>(p.tags + set * kWays)[l] : 0u;
      const unsigned b0 = (__ballot_sync(0xFFFFFFFFu, valid && (t & 0xFFFFu) == f) >> shift) & 0xFFu;
      const unsigned b1 = (__ballot_sync(0xFFFFFFFFu, valid && (t >> 16) == f) >> shift) & 0xFFu;
#pragma unroll
      for (int i = 0; i < 8; ++i) cand |= ((b0 >> i) & 1u) << (2 * i) | ((b1 >> i) & 1u) << (2 * i + 1);
    }
    bool hit = false;
    int way = cand ? __ffs(cand) - 1 : -1;
    // warp-uniform loop: every lane votes in every round (a false fingerprint match takes another)
    while (__any_sync(0xFFFFFFFFu, way >= 0)) {
      unsigned token = 0;
      const long long slot = set * kWays + (way < 0 ? 0 : way);
      if (way >= 0) {
        const float4* src = MODE == kFpRow ? p.slotrows + slot * (DIM4 + 1) + 1 : p.rows + slot * DIM4;
        token = copy_row<DIM4, kLanes>(src, p.out + idx * DIM4, l);
      }
      bool ok = way >= 0;
      if constexpr (MODE != kNveLayout) {
        const unsigned after = __reduce_or_sync(0xFFFFFFFFu, token & p.zero);
        const bool checker = way >= 0 && l == 0;
        bool same = false;
        if (checker) {
          if constexpr (record_mode(MODE)) {
            const longlong2 r = __ldcg(p.records + slot + after);
            same = r.x == key;
            if (same && (MODE == kFpRecord || static_cast<unsigned>(r.y) != p.tick))
              reinterpret_cast<unsigned*>(p.records + slot)[2] = p.tick;
          } else if constexpr (MODE == kWordTick) {
            unsigned long long* word = reinterpret_cast<unsigned long long*>(p.adj + set * 16 + way);
            const unsigned long long w = __ldcg(word + after);
            const unsigned long long tag = mix64(static_cast<unsigned long long>(key)) & kLow56;
            same = (w & kLow56) == tag;
            if (same && (w >> 56) != (p.tick & 0xFFu)) atomicCAS(word, w, tag | static_cast<unsigned long long>(p.tick & 0xFFu) << 56);
          } else if constexpr (MODE == kFpRow) {
            same = __ldcg(reinterpret_cast<const long long*>(p.slotrows + slot * (DIM4 + 1)) + after) == key;
            if (same && held_tick != (p.tick & 0xFFFFu)) p.fpline[set * 16 + 8 + way] = static_cast<unsigned short>(p.tick);
          } else if constexpr (MODE == kRec96) {
            const long long* line = p.adj + set * kRec96Stride;
            same = __ldcg(line + way + after) == key;
            if (same && held_tick != p.tick) reinterpret_cast<unsigned*>(const_cast<long long*>(line) + 8)[way] = p.tick;
          } else if constexpr (MODE == kAdj) {
            const long long* line = p.adj + set * kAdjStride;
            same = __ldcg(line + way + after) == key;
            unsigned* ticks = reinterpret_cast<unsigned*>(const_cast<long long*>(line) + 16);
            if (same && ticks[way] != p.tick) ticks[way] = p.tick;
          } else {
            same = __ldcg(p.set_keys + slot + after) == key;
            if (same && MODE == kFpMeta) p.meta[slot] = p.tick;
            if (same && MODE == kLineIfOld && p.meta[slot] != p.tick) p.meta[slot] = p.tick;
            if (same && MODE == kLineSample && ((mix64(static_cast<unsigned long long>(key)) ^ p.tick) & 7u) == 0) p.meta[slot] = p.tick;
          }
        }
        ok = ((__ballot_sync(0xFFFFFFFFu, checker && same) >> shift) & 0xFFu) != 0;
      }
      if (ok) {
        hit = true;
        way = -1;
      } else if (way >= 0) {
        cand &= ~(1u << way);
        way = cand ? __ffs(cand) - 1 : -1;
      }
    }
    if (valid && !hit && l == 0) atomicAdd(p.misses, 1);
  }
}

template <int MODE>
void launch3(int dim4, int blocks, Params3 p) {
  switch (dim4) {
    case 8: probe3<MODE, 8, 8><<<blocks, 256>>>(p); break;
    case 16: probe3<MODE, 16, 8><<<blocks, 256>>>(p); break;
    default: probe3<MODE, 32, 5><<<blocks, 256>>>(p); break;
  }
}

__global__ void gather(const float4* __restrict__ rows, const long long* __restrict__ index, float4* __restrict__ out, long long n, int q) {
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long t = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; t < n * q; t += stride) {
    const long long i = t / q, j = t - i * q;
    out[t] = rows[index[i] * q + j];
  }
}

struct Table {  // a filled cache of one geometry: keys (sets, ways), rows, and where each query key lives
  long long sets = 0;
  long long *d_keys = nullptr, *d_query = nullptr, *d_slot = nullptr;
  unsigned* d_meta = nullptr;
  std::vector<long long> query_slot;
  std::vector<long long> host_keys;  // (sets, ways)
};

template <bool FAST>
Table build(int ways, long long rows, const std::vector<long long>& cached, const std::vector<long long>& query_pick) {
  Table t;
  t.sets = 2 * rows / ways;  // load 0.5
  std::vector<long long> keys(t.sets * ways, kEmpty);
  std::vector<long long> slot_of(cached.size(), -1);
  for (size_t i = 0; i < cached.size(); ++i) {
    const long long s = set_of<FAST>(cached[i], t.sets);
    for (int w = 0; w < ways; ++w) {
      if (keys[s * ways + w] == kEmpty) {
        keys[s * ways + w] = cached[i];
        slot_of[i] = s * ways + w;
        break;
      }
    }
  }
  std::vector<long long> query;
  for (long long pick : query_pick) {
    if (slot_of[pick] < 0) continue;  // its set was full: left out (all hits)
    query.push_back(cached[pick]);
    t.query_slot.push_back(slot_of[pick]);
  }
  t.host_keys = keys;
  CHECK(cudaMalloc(&t.d_keys, keys.size() * 8));
  CHECK(cudaMemcpy(t.d_keys, keys.data(), keys.size() * 8, cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&t.d_meta, keys.size() * 4));
  CHECK(cudaMemset(t.d_meta, 0, keys.size() * 4));
  CHECK(cudaMalloc(&t.d_query, query.size() * 8));
  CHECK(cudaMemcpy(t.d_query, query.data(), query.size() * 8, cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&t.d_slot, query.size() * 8));
  CHECK(cudaMemcpy(t.d_slot, t.query_slot.data(), query.size() * 8, cudaMemcpyHostToDevice));
  return t;
}

struct Table3 {  // round 3's arrays beside a 16-way table (same slots), or NVE's layout on its own keys
  unsigned short* d_tags = nullptr;
  longlong2* d_records = nullptr;
  long long* d_adj = nullptr;
  unsigned short* d_fpline = nullptr;
  int set_shift = 0;
};

/// A device copy of `v` (freed at exit).
template <typename T>
T* to_device(const std::vector<T>& v) {
  T* d = nullptr;
  CHECK(cudaMalloc(&d, v.size() * sizeof(T)));
  CHECK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

/// The keys of a table's `ways`-way sets spread to `stride` int64s a set (the rest `fill`).
std::vector<long long> spread_keys(const Table& t, int ways, int stride, long long fill) {
  std::vector<long long> out(t.sets * stride, fill);
  for (long long s = 0; s < t.sets; ++s)
    for (int w = 0; w < ways; ++w) out[s * stride + w] = t.host_keys[s * ways + w];
  return out;
}

// Round 4's layouts of a table's slots: {key, tick} records of its (8-way) sets, (16-way) lines with
// their ticks beside them, (ways 96) 8-way 96-byte sets of keys then ticks, (ways 32) 8-way 32-byte
// sets of fingerprints then ticks, or (ways 56) 16-way lines of tag words.
Table3 round4_of(const Table& t, int ways) {
  Table3 r;
  if (ways == 8) {
    std::vector<longlong2> records(t.host_keys.size());
    for (size_t s = 0; s < records.size(); ++s) records[s] = make_longlong2(t.host_keys[s], 0);
    r.d_records = to_device(records);
  } else if (ways == 56) {  // kWordTick: tags (low 56 bits of mix64(key)), tick 0
    std::vector<long long> words(t.host_keys.size(), static_cast<long long>(kLow56));
    for (size_t i = 0; i < words.size(); ++i)
      if (t.host_keys[i] != kEmpty) words[i] = static_cast<long long>(mix64(static_cast<unsigned long long>(t.host_keys[i])) & kLow56);
    r.d_adj = to_device(words);
  } else if (ways == 32) {  // kFpRow: fingerprints, then their ticks (the keys go in front of the rows, per dim)
    std::vector<unsigned short> line(t.sets * 16, 0);
    for (long long s = 0; s < t.sets; ++s)
      for (int w = 0; w < 8; ++w)
        if (t.host_keys[s * 8 + w] != kEmpty) line[s * 16 + w] = fingerprint(t.host_keys[s * 8 + w]);
    r.d_fpline = to_device(line);
  } else if (ways == 96) {  // kRec96: 8 keys, then their ticks
    r.d_adj = to_device(spread_keys(t, 8, kRec96Stride, 0));
  } else {  // kAdj: 16 keys, then their ticks
    r.d_adj = to_device(spread_keys(t, 16, kAdjStride, 0));
  }
  return r;
}

Table3 fingerprints_of(const Table& t) {
  Table3 r;
  std::vector<unsigned short> tags(t.host_keys.size(), 0);
  std::vector<longlong2> records(t.host_keys.size());
  for (size_t s = 0; s < tags.size(); ++s) {
    if (t.host_keys[s] != kEmpty) tags[s] = fingerprint(t.host_keys[s]);
    records[s] = make_longlong2(t.host_keys[s], 0);
  }
  CHECK(cudaMalloc(&r.d_tags, tags.size() * 2));
  CHECK(cudaMemcpy(r.d_tags, tags.data(), tags.size() * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&r.d_records, records.size() * 16));
  CHECK(cudaMemcpy(r.d_records, records.data(), records.size() * 16, cudaMemcpyHostToDevice));
  return r;
}

// NVE's layout: 8-way sets, set = key & (sets - 1) (rows a power of two), tag = key >> log2(sets);
// keys (i * odd) mod 2^30, distinct and spread evenly over the sets.
Table nve_table(long long rows, const std::vector<long long>& pick, Table3& r) {
  Table t;
  t.sets = 2 * rows / 8;
  while ((1LL << r.set_shift) < t.sets) ++r.set_shift;
  std::vector<unsigned short> tags(t.sets * 8, 0xFFFFu);
  std::vector<long long> slot_of(rows, -1);
  std::vector<int> used(t.sets, 0);
  for (long long i = 0; i < rows; ++i) {
    const long long key = (i * 0x9E3779B1LL) & ((1LL << 30) - 1);
    const long long s = key & (t.sets - 1);
    if (used[s] == 8) continue;
    slot_of[i] = s * 8 + used[s]++;
    tags[slot_of[i]] = static_cast<unsigned short>(key >> r.set_shift);
  }
  std::vector<long long> query;
  for (long long i : pick) {
    if (slot_of[i] < 0) continue;
    query.push_back((i * 0x9E3779B1LL) & ((1LL << 30) - 1));
    t.query_slot.push_back(slot_of[i]);
  }
  CHECK(cudaMalloc(&r.d_tags, tags.size() * 2));
  CHECK(cudaMemcpy(r.d_tags, tags.data(), tags.size() * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&t.d_query, query.size() * 8));
  CHECK(cudaMemcpy(t.d_query, query.data(), query.size() * 8, cudaMemcpyHostToDevice));
  return t;
}

template <typename F>
float median_ms(F&& launch, int repeats) {
  for (int i = 0; i < 3; ++i) launch();
  std::vector<float> ms;
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  for (int i = 0; i < repeats; ++i) {
    CHECK(cudaEventRecord(a));
    launch();
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float t = 0;
    CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

/// Prints a variant's row: its rate from `ms` a call of the query's keys, against the gather's, and
/// whether the call missed nothing and wrote each query key's row (the first 4096 rows checked).
void report(const char* pattern, int dim, const char* name, int per_sm, float ms, double gather_rate,
            const std::vector<long long>& query_slot, const float4* d_out, const int* d_misses, int dim4) {
  CHECK(cudaGetLastError());
  const long long n = static_cast<long long>(query_slot.size());
  int misses = 0;
  CHECK(cudaMemcpy(&misses, d_misses, 4, cudaMemcpyDeviceToHost));
  std::vector<float4> got(static_cast<size_t>(std::min<long long>(n, 4096)) * dim4);
  CHECK(cudaMemcpy(got.data(), d_out, got.size() * 16, cudaMemcpyDeviceToHost));
  bool ok = misses == 0;
  for (size_t i = 0; ok && i < got.size() / dim4; ++i)
    for (int k = 0; k < dim4; ++k)
      ok = ok && got[i * dim4 + k].x == static_cast<float>(query_slot[i]) && got[i * dim4 + k].y == static_cast<float>(k);
  const double rate = n / (ms * 1e-3) / 1e9;
  std::printf("| %s | %d | %s | %d | %.2f | %.2f | %s |\n", pattern, dim, name, per_sm, rate, rate / gather_rate, ok ? "yes" : "NO");
}

struct Variant {
  const char* name;
  int ways;
  bool fast;
  void (*kernel)(Params);                 // round 1 (dim at run time)
  void (*launch)(int, int, Params) = nullptr;  // round 2 (dim4, blocks, params)
};

int main(int argc, char** argv) {
  const long long rows = argc > 1 ? std::atoll(argv[1]) : 1 << 20;
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 20;
  const char* only = argc > 3 ? argv[3] : "";  // run only the variants whose name holds this (e.g. "R3")
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  const Variant variants[] = {
      {"16-way u2 meta recheck (product)", 16, false, probe<16, 2, kWriteMeta, true, false>},
      {"16-way u2 meta recheck fast", 16, true, probe<16, 2, kWriteMeta, true, true>},
      {"16-way u2 no-meta recheck fast", 16, true, probe<16, 2, kNoMeta, true, true>},
      {"16-way u2 read-meta recheck fast", 16, true, probe<16, 2, kReadThenWrite, true, true>},
      {"16-way u2 meta no-recheck fast", 16, true, probe<16, 2, kWriteMeta, false, true>},
      {"16-way u4 meta recheck fast", 16, true, probe<16, 4, kWriteMeta, true, true>},
      {"8-way u1 meta recheck fast", 8, true, probe<8, 1, kWriteMeta, true, true>},
      {"8-way u2 meta recheck fast", 8, true, probe<8, 2, kWriteMeta, true, true>},
      {"8-way u2 no-meta recheck fast", 8, true, probe<8, 2, kNoMeta, true, true>},
      {"8-way u2 read-meta recheck fast", 8, true, probe<8, 2, kReadThenWrite, true, true>},
      {"8-way u2 meta no-recheck fast", 8, true, probe<8, 2, kWriteMeta, false, true>},
      {"8-way u4 meta recheck fast", 8, true, probe<8, 4, kWriteMeta, true, true>},
      {"8-way u2 no-meta no-recheck fast", 8, true, probe<8, 2, kNoMeta, false, true>},
      {"R2 16-way 16 lanes u2 dimT", 16, true, nullptr, launch2<16, 16, 2, 1>},
      {"R2 16-way 16 lanes u2 dimT minB4", 16, true, nullptr, launch2<16, 16, 2, 4>},
      {"R2 16-way 16 lanes u2 dimT minB8", 16, true, nullptr, launch2<16, 16, 2, 8>},
      {"R2 16-way 8 lanes u1 dimT", 16, true, nullptr, launch2<16, 8, 1, 1>},
      {"R2 16-way 8 lanes u2 dimT", 16, true, nullptr, launch2<16, 8, 2, 1>},
      {"R2 16-way 8 lanes u2 dimT minB4", 16, true, nullptr, launch2<16, 8, 2, 4>},
      {"R2 16-way 8 lanes u2 dimT minB8", 16, true, nullptr, launch2<16, 8, 2, 8>},
      {"R2 16-way 8 lanes u1 dimT minB8", 16, true, nullptr, launch2<16, 8, 1, 8>},
      {"R2 8-way 8 lanes u1 dimT", 8, true, nullptr, launch2<8, 8, 1, 1>},
      {"R2 8-way 8 lanes u2 dimT", 8, true, nullptr, launch2<8, 8, 2, 1>},
      {"R2 8-way 8 lanes u2 dimT minB4", 8, true, nullptr, launch2<8, 8, 2, 4>},
      {"R2 8-way 8 lanes u2 dimT minB8", 8, true, nullptr, launch2<8, 8, 2, 8>},
      {"R2 8-way 8 lanes u1 dimT minB8", 8, true, nullptr, launch2<8, 8, 1, 8>},
  };
  struct Variant3 {
    const char* name;
    Mode3 mode;
    void (*launch)(int, int, Params3);
    bool moving = false;  // a new tick every call (the product's clock today); else held still
  };
  const Variant3 variants3[] = {
      {"R3 16-way fingerprints, key re-check, LRU tick array", kFpMeta, launch3<kFpMeta>},
      {"R3 16-way fingerprints, {key, tick} record", kFpRecord, launch3<kFpRecord>},
      {"R3 16-way fingerprints, key re-check, no tick", kFpNoMeta, launch3<kFpNoMeta>},
      {"R3 16-way fingerprints, {key, tick} record, tick written when older (held still)", kFpIfOld, launch3<kFpIfOld>},
      {"R3 16-way int64 line (the product's), tick read, written when older (held still)", kLineIfOld, launch3<kLineIfOld>},
      {"R3 16-way int64 line (the product's), no tick", kLineNoMeta, launch3<kLineNoMeta>},
      {"R3 16-way int64 line (the product's), tick written in 1 of 8 ticks", kLineSample, launch3<kLineSample>},
      {"R3 NVE layout: 8-way uint16 tags, no re-check, no tick", kNveLayout, launch3<kNveLayout>},
      {"R4 8-way {key, tick} records (128-byte line), tick written when older (held still)", kRec8, launch3<kRec8>},
      {"R4 8-way {key, tick} records (128-byte line), tick moving (every hit writes)", kRec8, launch3<kRec8>, true},
      {"R4 8-way 96-byte sets (keys, then ticks), tick written when older (held still)", kRec96, launch3<kRec96>},
      {"R4 8-way 96-byte sets (keys, then ticks), tick moving (every hit writes)", kRec96, launch3<kRec96>, true},
      {"R4 16-way line of words (56-bit hash tag, 8-bit tick), tick CAS'd when older (held still)", kWordTick, launch3<kWordTick>},
      {"R4 16-way line of words (56-bit hash tag, 8-bit tick), tick moving (every hit CASes)", kWordTick, launch3<kWordTick>, true},
      {"R4 8-way fingerprint sector, key in front of its row, tick written when older (held still)", kFpRow, launch3<kFpRow>},
      {"R4 8-way fingerprint sector, key in front of its row, tick moving (every hit writes)", kFpRow, launch3<kFpRow>, true},
      {"R4 16-way int64 line, ticks beside it, written when older (held still)", kAdj, launch3<kAdj>},
      {"R4 16-way int64 line, ticks beside it, tick moving (every hit writes)", kAdj, launch3<kAdj>, true},
  };
  std::printf("GPU %s, %d SMs; %lld cached rows at load 0.5, %lld all-hit keys per call, fp32 rows, median of %d calls\n\n",
              prop.name, sms, rows, rows, repeats);
  std::printf("| keys | dim | variant | blocks/SM | G keys/s | / gather | checked |\n|---|---:|---|---:|---:|---:|---|\n");
  std::mt19937_64 rng(7);
  for (const char* pattern : {"random", "strided"}) {
    std::vector<long long> cached(rows);
    for (long long i = 0; i < rows; ++i) cached[i] = pattern[0] == 'r' ? static_cast<long long>(rng() >> 1) : i << 20;  // strided: multiples of 2^20
    std::vector<long long> pick(rows);
    for (auto& v : pick) v = static_cast<long long>(rng() % rows);
    Table slow16 = build<false>(16, rows, cached, pick), fast16 = build<true>(16, rows, cached, pick), fast8 = build<true>(8, rows, cached, pick);
    const Table3 fp16 = fingerprints_of(fast16), rec8 = round4_of(fast8, 8), adj16 = round4_of(fast16, 16), rec96 = round4_of(fast8, 96), fprow = round4_of(fast8, 32), words16 = round4_of(fast16, 56);
    Table3 nve3;
    Table nve8 = nve_table(rows, pick, nve3);
    for (int dim : {32, 64, 128}) {
      const int dim4 = dim / 4;
      const long long slots = 2 * rows;
      std::vector<float4> host_rows(slots * dim4);
      for (long long s = 0; s < slots; ++s)
        for (int k = 0; k < dim4; ++k) host_rows[s * dim4 + k] = make_float4(s, k, 0.5f * s, -1.f * k);
      float4 *d_rows, *d_out;
      int* d_misses;
      CHECK(cudaMalloc(&d_rows, host_rows.size() * 16));
      CHECK(cudaMemcpy(d_rows, host_rows.data(), host_rows.size() * 16, cudaMemcpyHostToDevice));
      CHECK(cudaMalloc(&d_out, rows * dim4 * 16));
      float4* d_slotrows = nullptr;  // kFpRow: fast8's keys in front of their rows
      const bool fp_row = std::any_of(std::begin(variants3), std::end(variants3),
                                      [&](const Variant3& v) { return v.mode == kFpRow && std::strstr(v.name, only) != nullptr; });
      if (fp_row) {
        std::vector<float4> slotrows(slots * (dim4 + 1));
        for (long long s = 0; s < slots; ++s) {
          const long long k = fast8.host_keys[s];
          std::memcpy(&slotrows[s * (dim4 + 1)], &k, 8);
          std::copy(host_rows.begin() + s * dim4, host_rows.begin() + (s + 1) * dim4, slotrows.begin() + s * (dim4 + 1) + 1);
        }
        CHECK(cudaMalloc(&d_slotrows, slotrows.size() * 16));
        CHECK(cudaMemcpy(d_slotrows, slotrows.data(), slotrows.size() * 16, cudaMemcpyHostToDevice));
      }
      CHECK(cudaMalloc(&d_misses, 4));
      // the plain gather of the rows of fast16's query keys by their slots
      const long long n16 = static_cast<long long>(fast16.query_slot.size());
      const int gather_blocks = static_cast<int>(std::min<long long>((n16 * dim4 + 255) / 256, sms * 32LL));
      const float gather_ms = median_ms([&] { gather<<<gather_blocks, 256>>>(d_rows, fast16.d_slot, d_out, n16, dim4); }, repeats);
      const double gather_rate = n16 / (gather_ms * 1e-3) / 1e9;
      std::printf("| %s | %d | plain gather (by slot) | - | %.2f | 1.00 | - |\n", pattern, dim, gather_rate);
      for (const Variant& v : variants) {
        if (std::strstr(v.name, only) == nullptr) continue;
        const Table& t = v.ways == 8 ? fast8 : (v.fast ? fast16 : slow16);
        const long long n = static_cast<long long>(t.query_slot.size());
        for (int per_sm : {8, 16, 32}) {
          Params p{t.d_keys, t.d_meta, t.sets, dim4, d_rows, t.d_query, n, d_out, d_misses, 1u, 0u};
          const int blocks = sms * per_sm;
          CHECK(cudaMemset(d_misses, 0, 4));
          const float ms = median_ms([&] {
            p.tick++;
            if (v.launch) v.launch(dim4, blocks, p); else v.kernel<<<blocks, 256>>>(p);
          }, repeats);
          report(pattern, dim, v.name, per_sm, ms, gather_rate, t.query_slot, d_out, d_misses, dim4);
        }
      }
      for (const Variant3& v : variants3) {
        if (std::strstr(v.name, only) == nullptr) continue;
        const bool nve = v.mode == kNveLayout;
        const Table& t = nve ? nve8 : v.mode == kRec8 || v.mode == kRec96 || v.mode == kFpRow ? fast8 : fast16;
        const Table3& r = nve ? nve3 : v.mode == kRec8 ? rec8 : v.mode == kAdj ? adj16 : v.mode == kRec96 ? rec96 : v.mode == kFpRow ? fprow : v.mode == kWordTick ? words16 : fp16;
        const long long n = static_cast<long long>(t.query_slot.size());
        for (int per_sm : {8, 16, 32}) {
          Params3 p{{t.d_keys, t.d_meta, t.sets, dim4, d_rows, t.d_query, n, d_out, d_misses, 1u, 0u}, r.d_tags, r.d_records, r.d_adj, r.d_fpline, d_slotrows, r.set_shift};
          CHECK(cudaMemset(d_misses, 0, 4));
          const float ms = median_ms([&] {
            if (v.moving || (v.mode != kFpIfOld && v.mode != kLineIfOld && v.mode != kRec8 && v.mode != kAdj && v.mode != kRec96 && v.mode != kFpRow && v.mode != kWordTick)) p.tick++;
            v.launch(dim4, sms * per_sm, p);
          }, repeats);
          report(pattern, dim, v.name, per_sm, ms, gather_rate, t.query_slot, d_out, d_misses, dim4);
        }
      }
      CHECK(cudaFree(d_rows));
      CHECK(cudaFree(d_out));
      CHECK(cudaFree(d_misses));
      CHECK(cudaFree(d_slotrows));
    }
  }
  return 0;
}
