// Replacement and admission decisions of the set-associative caches (GPU cache and its host twin).
//
// The same functions run in the CUDA kernels and in the host simulator that the CPU tests drive
// with access traces, so the decision code tested on the CPU is the code the GPU runs.
//
// A slot holds one 8-byte word: the key's tag (the low 56 bits of mix64(key)) and the slot's 8-bit
// meta in the top byte. mix64 is a bijection and a set is a range of 2^64 / sets values of mix64
// (set_of), so with at least 256 sets (kMinSets) the set and the tag together tell every key apart:
// the lookup reads the key and its meta in one 128-byte line of 16 words, and a hit writes its meta
// only when it changes (LRU: the clock moved since the row's last use).
#pragma once

#include <cstdint>

#include "common/mix.hpp"  // mix64, TRITONREC_HD

namespace tritonrec {

/// Which held row a full set gives up for a new one.
enum class Eviction : int32_t {
  kLru = 0,  ///< the row used longest ago (meta = the clock's tick at the last use, mod 256)
  kLfu = 1,  ///< the row used least often (meta = use count, at most kLfuMaxCount, halved on aging)
};

/// LRU's clock moves one tick each time a 1/kClockShare share of the cache's capacity has missed,
/// not once per lookup call, so that it stands still while lookups hit and a hit need write its
/// slot's tick only when the clock moved since the slot's last use (an all-hit stream writes
/// nothing). Host twin (benchmarks/cpp/lru_clock_sim.cpp; Zipf 0.9 / 1.05 / 1.2, 1 / 5 / 10% caches,
/// with and without admission): the same LRU hit rates as a tick per call to the 4th decimal at
/// shares 4, 16 and 64.
constexpr int64_t kClockShare = 16;

/// The LRU clock of a cache of `capacity_rows` rows after `misses` misses in all (>= 1; uint32,
/// wraps after 2^32 ticks, i.e. 2^28 x the capacity in misses).
TRITONREC_HD uint32_t lru_clock(int64_t misses, int64_t capacity_rows) {
  const int64_t per_tick = capacity_rows / kClockShare > 1 ? capacity_rows / kClockShare : 1;
  return static_cast<uint32_t>(1 + misses / per_tick);
}

/// Bits of a slot word that hold the key's tag (the rest, the top byte, hold its meta).
constexpr int kTagBits = 56;
constexpr uint64_t kTagMask = (uint64_t{1} << kTagBits) - 1;
/// The tag of an empty slot. A key whose tag it is (one in 2^56) is never cached: it always misses.
constexpr uint64_t kEmptyTag = kTagMask;
/// Fewest sets a GPU cache has: with 2^64 / sets <= 2^56 values of mix64 a set, no two keys of a set
/// share a tag.
constexpr int64_t kMinSets = int64_t{1} << (64 - kTagBits);

/// The set of a key whose mix64 is `h`, among `sets` sets: the high 64 bits of h x sets (a multiply,
/// where a 64-bit modulo costs the GPU lookup a third of its speed at dim 32).
TRITONREC_HD int64_t set_of_hash(uint64_t h, int64_t sets) {
#if defined(__CUDA_ARCH__)
  return static_cast<int64_t>(__umul64hi(h, static_cast<uint64_t>(sets)));
#else
  return static_cast<int64_t>((static_cast<unsigned __int128>(h) * static_cast<uint64_t>(sets)) >> 64);
#endif
}

/// Where a key lives among `sets` sets, and the tag it is held under there.
struct SlotKey {
  int64_t set;
  uint64_t tag;  ///< the low kTagBits bits of mix64(key)
};

/// The set and tag of `key` (one mix64 for both).
TRITONREC_HD SlotKey slot_key(int64_t key, int64_t sets) {
  const uint64_t h = mix64(static_cast<uint64_t>(key));
  return SlotKey{set_of_hash(h, sets), h & kTagMask};
}

/// A slot word of `tag` and `meta` (< 256).
TRITONREC_HD uint64_t slot_word(uint64_t tag, uint32_t meta) { return tag | static_cast<uint64_t>(meta) << kTagBits; }
/// The tag a slot word holds (kEmptyTag: an empty slot).
TRITONREC_HD uint64_t word_tag(uint64_t word) { return word & kTagMask; }
/// The meta a slot word holds.
TRITONREC_HD uint32_t word_meta(uint64_t word) { return static_cast<uint32_t>(word >> kTagBits); }

/// LFU's use counts stop at this many uses (halved by aging like the rest), so that they fit the
/// slot word's top byte and the hottest rows, whose line every lookup of their set reads, stop
/// being written on every hit. Host twin, LFU + admission, Zipf 0.9 / 1.05 / 1.2 over 2M keys,
/// 1 / 5 / 10% caches, 8 and 16 ways: the same hit rates to the 4th decimal as uncapped counts.
constexpr uint32_t kLfuMaxCount = 255;

/// The meta value a slot gets when its row is used at clock `tick` (LRU: the tick mod 256) or used
/// once more (LFU).
TRITONREC_HD uint32_t touched_meta(Eviction policy, uint32_t old_meta, uint32_t tick) {
  if (policy == Eviction::kLru) return tick & 0xFFu;
  return old_meta >= kLfuMaxCount ? old_meta : old_meta + 1;
}

/// The meta value of a row just inserted at clock `tick`.
TRITONREC_HD uint32_t inserted_meta(Eviction policy, uint32_t tick) { return policy == Eviction::kLru ? tick & 0xFFu : 1u; }

/// LRU ticks by which a slot's meta may run ahead of an insert's clock and still count as younger
/// than every row of that clock or older. Lookups on several streams (callers at once, or inserts
/// on the tier's own stream behind the next call's lookup) touch rows at newer ticks than an insert
/// that was given its clock earlier; taken mod 256 those rows would look 255 ticks old and be
/// evicted first (measured on the H200: a hot set's 0.90 hit rate fell to 0.58 with two callers,
/// 0.87 with own-stream inserts). 16 ticks are one capacity of misses, far more than calls in
/// flight move the clock.
constexpr uint32_t kLruAheadTicks = 16;

/// How strongly a slot of `meta` is due for eviction at clock `tick` (the highest goes first):
/// LRU its age in ticks seen from kLruAheadTicks after `tick`, mod 256, so that a meta up to that
/// far ahead ranks below a row of `tick` itself and the further ahead the younger (a row unused
/// for 240 ticks, 15 capacities of misses, looks young again; unseen in the host twin's hit rates,
/// since a set takes about one insert a tick); LFU the uses it lacks of the cap.
TRITONREC_HD uint32_t eviction_rank(Eviction policy, uint32_t meta, uint32_t tick) {
  if (policy == Eviction::kLru) return (tick + kLruAheadTicks - meta) & 0xFFu;
  return kLfuMaxCount - (meta < kLfuMaxCount ? meta : kLfuMaxCount);
}

/// True when slot a (rank_a) should be evicted before slot b (rank_b); ties go to the lower way so
/// every caller picks the same victim.
TRITONREC_HD bool evicts_before(uint32_t rank_a, int way_a, uint32_t rank_b, int way_b) {
  return rank_a > rank_b || (rank_a == rank_b && way_a < way_b);
}

/// The way a new key (`tag`) takes in a set: the way already holding it, else the first empty way,
/// else the way that `evicts_before` every other at clock `tick`. `tags` and `meta` are the set's
/// `ways` entries.
TRITONREC_HD int choose_way(const uint64_t* tags, const uint32_t* meta, int ways, uint64_t tag, Eviction policy, uint32_t tick) {
  int empty = -1;
  int victim = 0;
  uint32_t victim_rank = eviction_rank(policy, meta[0], tick);
  for (int w = 0; w < ways; ++w) {
    if (tags[w] == tag) return w;
    if (tags[w] == kEmptyTag) {
      if (empty < 0) empty = w;
    } else if (w > 0) {
      const uint32_t rank = eviction_rank(policy, meta[w], tick);
      if (evicts_before(rank, w, victim_rank, victim)) {
        victim = w;
        victim_rank = rank;
      }
    }
  }
  if (empty >= 0) return empty;
  return victim;
}

/// Counters per cached row in each of the sketch's 4 rows (64 bytes per row in all): a narrower
/// sketch mixes too many keys' counts to tell the keys at the edge of the cache apart. Host-twin
/// traces (1M-row Zipf(0.9) table, 10M lookups, 1% cache, LFU + admission, aging multiple 40):
/// 0.96 of the static optimum at 2 counters per row, 0.986 at 4; with the earlier sketch (one
/// power of two >= the rows, plain increments, aging multiple 10) 0.886.
constexpr int64_t kSketchWidthPerRow = 4;

/// Count-min sketch of how often keys missed: 4 rows of `width` uint32 counters, updated
/// conservatively (a miss raises only the key's counters that are below its new estimate). Held
/// rows' frequencies are their LFU use counts (meta); for LRU, the sketch's estimate.
struct FrequencySketch {
  uint32_t* counters = nullptr;  ///< (4, width)
  int64_t width = 0;

  TRITONREC_HD int64_t index(int row, int64_t key) const {
    return static_cast<int64_t>(mix64(static_cast<uint64_t>(key) + 0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(row + 1)) %
                                static_cast<uint64_t>(width));
  }
  /// The smallest of the key's 4 counters.
  TRITONREC_HD uint32_t estimate(int64_t key) const {
    uint32_t best = 0xFFFFFFFFu;
    for (int r = 0; r < 4; ++r) {
      const uint32_t c = counters[r * width + index(r, key)];
      best = c < best ? c : best;
    }
    return best;
  }
  /// Counts one more miss of `key` (conservative update; atomic on the device, where inserts of
  /// several keys count at once).
  TRITONREC_HD void count(int64_t key) {
    const uint32_t current = estimate(key);
    const uint32_t target = current == 0xFFFFFFFFu ? current : current + 1;
    for (int r = 0; r < 4; ++r) {
      uint32_t* c = counters + r * width + index(r, key);
#if defined(__CUDA_ARCH__)
      atomicMax(c, target);
#else
      if (*c < target) *c = target;
#endif
    }
  }
};

/// TinyLFU admission: a missed key takes a full set's victim slot only if it was seen more often.
TRITONREC_HD bool admits(uint32_t candidate_frequency, uint32_t victim_frequency) {
  return candidate_frequency > victim_frequency;
}

/// Inserts (or refuses) the key of `tag` into a set, as the GPU insert kernel does once it holds the
/// set: picks the way, applies admission when `sketch` is given (keyed by tags; its counters already
/// include this miss), writes tag and meta. Returns the way written, or -1 when admission refused
/// the key (or its tag is the empty slot's).
TRITONREC_HD int insert_into_set(uint64_t* tags, uint32_t* meta, int ways, uint64_t tag, Eviction policy, uint32_t tick,
                                 const FrequencySketch* sketch) {
  if (tag == kEmptyTag) return -1;
  const int way = choose_way(tags, meta, ways, tag, policy, tick);
  uint32_t frequency = 1;
  if (sketch != nullptr) {
    frequency = sketch->estimate(static_cast<int64_t>(tag));
    if (tags[way] != tag && tags[way] != kEmptyTag) {
      const uint32_t victim = policy == Eviction::kLfu ? meta[way] : sketch->estimate(static_cast<int64_t>(tags[way]));
      if (!admits(frequency, victim)) return -1;
    }
  }
  tags[way] = tag;
  meta[way] = policy == Eviction::kLfu && sketch != nullptr ? (frequency < kLfuMaxCount ? frequency : kLfuMaxCount)
                                                            : inserted_meta(policy, tick);
  return way;
}

/// Default of `aging_period`'s multiple (host-twin traces as above, 2 counters per row: 0.95 of the
/// optimum at 10, 0.98 at 40, 0.99 at 160; a longer memory adapts more slowly to shifts in popularity).
constexpr int64_t kAgingMultiple = 40;

/// Misses after which the sketch's counters (and LFU use counts) are halved, for a cache of
/// `capacity_rows` rows: old popularity fades. A larger multiple remembers longer.
TRITONREC_HD int64_t aging_period(int64_t capacity_rows, int64_t multiple = kAgingMultiple) { return multiple * capacity_rows; }

}  // namespace tritonrec
