// LRU's clock on the GPU cache's host twin (csrc/gpu_cache/set_cache_sim.cpp: the same sets, ways and
// policy code as the kernels): hit rates with a tick per lookup call (the product until issue 16's
// fourth session) against a tick per 1/D of the cache's capacity in misses (a clock that stands still
// while everything hits, so a hit need not write its slot's tick when the tick has not moved; the
// product now moves one tick per 1/16, policy.hpp's lru_clock). Issue 16: the per-hit tick write cost
// the all-hit lookup a fifth of its speed (gpu_probe_variants.cu, round 3). The twin keeps ticks
// mod 256 as the slot word does, so clocks that move faster than 1/16 of the capacity a tick
// (a tick per call of 4096, per 1/64) wrap sooner and lose a little with admission.
// Zipf(alpha) traces over a 10M-row table (ranks shuffled to keys), 40M lookups in calls of 4096,
// hit rates over the second half; 16-way sets, LRU with and without TinyLFU admission; and with a tick
// per call where a hit updates its slot's tick only in a sample of ticks (so most hits write nothing).
// Build: g++ -O3 -std=c++17 -Icsrc -o /tmp/lru_clock_sim benchmarks/cpp/lru_clock_sim.cpp csrc/gpu_cache/set_cache_sim.cpp
// Run:   /tmp/lru_clock_sim [rows=10000000] [lookups=40000000]   (prints a Markdown table; about 10
//        minutes on one core at the defaults)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "gpu_cache/set_cache_sim.hpp"

using tritonrec::Eviction;
using tritonrec::SetCacheSim;

namespace {

/// Hit rate over the second half of `trace`; clock_divisor 0: a tick per call, else a tick per
/// capacity / clock_divisor misses; sample > 1: a hit updates its slot's tick only in 1 of `sample`
/// ticks, chosen by a hash of key and tick (((mix64(key) ^ tick) % sample) == 0).
double hit_rate(const std::vector<int64_t>& trace, int64_t capacity, bool admission, int64_t clock_divisor, int64_t batch,
                uint32_t sample = 1) {
  SetCacheSim sim(capacity, 16, Eviction::kLru, admission);
  const int64_t n = static_cast<int64_t>(trace.size());
  int64_t misses = 0, hits = 0;
  uint32_t tick = 1;
  for (int64_t i = 0; i < n; ++i) {
    if (i % batch == 0) {  // one tick for the whole call, as the GPU tier passes it
      tick = clock_divisor == 0 ? static_cast<uint32_t>(i / batch + 1)
                                : static_cast<uint32_t>(1 + misses / std::max<int64_t>(1, capacity / clock_divisor));
    }
    const bool touch = sample <= 1 || ((tritonrec::mix64(static_cast<uint64_t>(trace[i])) ^ tick) % sample) == 0;
    const bool hit = sim.access(trace[i], tick, touch);
    misses += hit ? 0 : 1;
    if (i >= n / 2) hits += hit ? 1 : 0;
    if ((i + 1) % batch == 0) sim.end_call();
  }
  return static_cast<double>(hits) / static_cast<double>(n - n / 2);
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t rows = argc > 1 ? std::atoll(argv[1]) : 10'000'000;
  const int64_t lookups = argc > 2 ? std::atoll(argv[2]) : 40'000'000;
  const int64_t batch = 4096;
  if (rows < 100 || lookups < 2 * batch) {
    std::fprintf(stderr, "rows: expected >= 100, lookups: expected >= %lld\n", static_cast<long long>(2 * batch));
    return 2;
  }
  const int64_t divisors[] = {0, 4, 16, 64};
  std::mt19937_64 rng(3);
  std::vector<int64_t> keys(rows);
  for (int64_t i = 0; i < rows; ++i) keys[i] = i;
  std::shuffle(keys.begin(), keys.end(), rng);
  std::printf("| Zipf alpha | cache | admission | tick per call | per 1/4 of capacity missed | per 1/16 | per 1/64 |"
              " tick per call, a hit updates in 1 of 4 ticks | in 1 of 8 |\n");
  std::printf("|---:|---:|---|---:|---:|---:|---:|---:|---:|\n");
  for (double alpha : {0.9, 1.05, 1.2}) {
    std::vector<double> cdf(rows);
    double sum = 0;
    for (int64_t r = 0; r < rows; ++r) cdf[r] = (sum += std::pow(static_cast<double>(r + 1), -alpha));
    std::uniform_real_distribution<double> uniform(0, sum);
    std::vector<int64_t> trace(lookups);
    for (auto& k : trace) k = keys[std::lower_bound(cdf.begin(), cdf.end(), uniform(rng)) - cdf.begin()];
    for (double share : {0.01, 0.05, 0.10}) {
      for (bool admission : {false, true}) {
        std::printf("| %.2f | %.0f%% | %s |", alpha, 100 * share, admission ? "yes" : "no");
        const int64_t capacity = static_cast<int64_t>(rows * share);
        for (int64_t d : divisors) std::printf(" %.4f |", hit_rate(trace, capacity, admission, d, batch));
        for (uint32_t sample : {4u, 8u}) std::printf(" %.4f |", hit_rate(trace, capacity, admission, 0, batch, sample));
        std::printf("\n");
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
