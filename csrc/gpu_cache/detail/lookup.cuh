// The GPU cache's lookup kernel: a group of 8 lanes per key (4 keys per warp at once). The group
// reads the key's 16-way set (one 128-byte line of slot words, policy.hpp: the key's 56-bit tag and
// the slot's 8-bit meta) as 8 loads of 16 bytes, two ways a lane, and copies the row, every 16-byte
// load of a lane's part issued before its stores (the row's number of moves per lane is a template
// parameter, MOVES; rows wider than 8 moves a lane, or dims not a multiple of 8, take the generic
// loop). A hit changes its slot's meta (atomicCAS of the word, so a concurrent insert's word is never
// overwritten) only when the meta changes: LRU's clock moves by misses (policy.hpp's lru_clock), so
// an all-hit stream writes nothing. __launch_bounds__ keeps the kernel to 32 registers a thread for
// rows of up to 2 moves a lane, so 64 warps fit on an SM: the lookup is latency-bound (a few
// dependent random loads per key), and more keys in flight is what makes it fast. Measured on an
// H200 with benchmarks/cpp/gpu_probe_variants.cu (1M all-hit keys, fp32, dim 32 / 64 / 128, G
// keys/s): half-warp per key, set = mix64 % sets 3.38 / 3.09 / 2.14; with set = mulhi(mix64, sets)
// 5.20 / 4.36 / 2.67; 8 lanes per key, row width unrolled, 64 warps an SM, int64 keys with the LRU
// tick in its own array written by every hit 8.51 / 5.12 / 2.95; tag and meta in one word, the clock
// standing still 9.82 / 6.42 / 3.48 (NVIDIA's NV Embedding Cache 8.31 / 6.10 / 3.46), with a new
// tick every call (every hit's CAS) 9.12 / 5.91 / 3.27.
//
#pragma once

#include <cstdint>

#include "gpu_cache/detail/rows.cuh"
#include "gpu_cache/policy.hpp"

namespace tritonrec::detail {

constexpr int kWays = 16;

struct LookupKernelParams {
  unsigned long long* words;  // (sets, kWays) slot words (policy.hpp's slot_word)
  int64_t sets;
  int64_t dim;
  Eviction policy;
  const int64_t* keys;  // key i at keys[i * key_stride]
  int64_t key_stride;
  int64_t n;
  void* out;             // row i at out + i * out_stride (elements of the output type)
  int64_t out_stride;
  int32_t* miss_index;   // (n,)
  int32_t* miss_count;   // scalar, zeroed before the launch
  uint32_t tick;
  uint32_t zero;  // always 0: see the re-check
};

#ifndef TRITONREC_RECHECK
#define TRITONREC_RECHECK 2
#endif

/// Orders this thread's earlier loads before its later ones (the seqlock reader's fence).
__device__ __forceinline__ void acquire_fence() { asm volatile("fence.acq_rel.gpu;" ::: "memory"); }

constexpr int kLookupLanes = 8;                          ///< lanes per key
constexpr int kKeysPerWarp = 32 / kLookupLanes;          ///< keys a warp looks up at once
constexpr int kWaysPerLane = kWays / kLookupLanes;       ///< ways a lane probes (one 16-byte load)
constexpr int kLookupThreads = 256;
/// Blocks of kLookupThreads an SM must hold (__launch_bounds__): 8 (64 warps, 32 registers a thread)
/// for rows of up to 2 moves a lane; wider rows keep their moves in registers: 5 (48 registers) for
/// 4, 4 (64) for 8, 6 (40) for the generic loop, so that little or nothing spills.
/// A row widened on the way (fp16/bf16 storage, fp32 output) holds twice its loads' registers in
/// converted values, so it gets the budget of twice the moves (fp16 -> fp32 at dim 128 lost 15% to
/// spills under the 32-register budget of its 2 moves).
constexpr int lookup_min_blocks(int moves) { return moves >= 8 ? 4 : moves >= 4 ? 5 : moves == 0 ? 6 : 8; }
template <typename T, typename O>
constexpr int lookup_budget_moves(int moves) { return sizeof(O) > sizeof(T) && moves > 0 ? 2 * moves : moves; }
static_assert(kWaysPerLane == 2, "a lane probes two ways with one 16-byte load");

/// The 16-byte moves per lane of the row copy the kernel is built for: 1, 2, 4 or 8; 0 for the
/// generic loop (rows of other widths).
inline int lookup_moves(int64_t dim, int value_bytes) {
  if (dim % 8 != 0) return 0;
  const int64_t moves = (dim * value_bytes / 16 + kLookupLanes - 1) / kLookupLanes;
  for (int m : {1, 2, 4, 8}) {
    if (moves <= m) return m;
  }
  return 0;
}

template <typename T, typename O, int MOVES>
__global__ void __launch_bounds__(kLookupThreads, lookup_min_blocks(lookup_budget_moves<T, O>(MOVES))) lookup_kernel(LookupKernelParams p, const T* rows) {
  const int lane = threadIdx.x & 31;
  const int group = lane / kLookupLanes;  // which of the warp's keys
  const int l = lane % kLookupLanes;
  const int shift = kLookupLanes * group;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  O* out = static_cast<O*>(p.out);
  for (int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; kKeysPerWarp * w < p.n; w += warps) {
    const int64_t index = kKeysPerWarp * w + group;
    const bool valid = index < p.n;
    const int64_t key = valid ? p.keys[index * p.key_stride] : 0;
    // policy.hpp's slot_key / word_tag / word_meta written out: through the helpers ptxas spilled in
    // the fp16/bf16 instantiations that spill nothing this way (ptxas -v; the fp32 ones alike)
    const uint64_t h = mix64(static_cast<uint64_t>(key));
    const int64_t set = set_of_hash(h, p.sets);
    const uint64_t tag = h & kTagMask;
    const bool cacheable = valid && tag != kEmptyTag;  // the empty slot's tag is never cached
    ulonglong2 held = make_ulonglong2(kEmptyTag, kEmptyTag);
    // a stale line only costs a false miss or fails the re-check
    if (cacheable) held = reinterpret_cast<const ulonglong2*>(p.words + set * kWays)[l];
    const bool second = (held.y & kTagMask) == tag;
    const bool mine = cacheable && ((held.x & kTagMask) == tag || second);  // tags are unique within a set
    const unsigned match = (__ballot_sync(0xFFFFFFFFu, mine) >> shift) & 0xFFu;
    const int owner = match ? __ffs(match) - 1 : 0;  // the lane whose pair of ways holds the key
    const int way = __shfl_sync(0xFFFFFFFFu, kWaysPerLane * l + (second ? 1 : 0), shift + owner);
    const bool found = match != 0;
    uint32_t token = 0;
    if (found) {
      const T* src = rows + (set * kWays + way) * p.dim;
      O* dst = out + index * p.out_stride;
      if constexpr (MOVES > 0) {
        token = copy_row_moves<MOVES>(src, dst, p.dim, l, kLookupLanes);
      } else {
        token = copy_row_out(src, dst, p.dim, l, kLookupLanes);
      }
    }
#if TRITONREC_RECHECK == 1
    acquire_fence();
#endif
#if TRITONREC_RECHECK == 2
    // zero, but only known once every lane's row loads are in (p.zero is 0, unknown to the compiler)
    const uint32_t after = __reduce_or_sync(0xFFFFFFFFu, token & p.zero);
#else
    const uint32_t after = 0;
    (void)token;
#endif
    // the lane of the hit's way checks that its slot still holds the key after the copy
    const bool checker = found && l == owner;
    unsigned long long* slot = p.words + set * kWays + way;
    const uint64_t word = checker ? __ldcg(slot + after) : 0;
    const bool torn = TRITONREC_RECHECK != 0 && checker && (word & kTagMask) != tag;
    // every lane votes (a full-mask ballot must not sit behind `found &&`: a short-circuited vote left
    // the lanes of missed keys out of it, and warps that loop hung)
    const unsigned torn_ballot = __ballot_sync(0xFFFFFFFFu, torn);
    const bool hit = found && ((torn_ballot >> shift) & 0xFFu) == 0;
    if (hit && checker) {
      const uint32_t old_meta = static_cast<uint32_t>(word >> kTagBits);
      const uint32_t new_meta = touched_meta(p.policy, old_meta, p.tick);
      // only a change is written; the CAS fails, and writes nothing, if an insert changed the word
      if (new_meta != old_meta) atomicCAS(slot, word, slot_word(tag, new_meta));
    } else if (valid && !hit && l == 0) {
      p.miss_index[atomicAdd(p.miss_count, 1)] = static_cast<int32_t>(index);
    }
  }
}

}  // namespace tritonrec::detail
