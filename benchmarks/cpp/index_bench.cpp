// Host index lookups: tritonrec's KeyIndex (csrc/host_store/detail/index.hpp) against
// absl::flat_hash_map<int64_t, int32_t> holding the same key -> row index. Single thread.
// Prints one markdown row per (rows, distribution): M finds/s for each, and bytes per key.
#include <absl/container/flat_hash_map.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "host_store/detail/index.hpp"

namespace {

template <typename F>
double best_seconds(F&& f, int repeats) {
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t queries = argc > 1 ? std::atoll(argv[1]) : 1000000;
  std::mt19937_64 rng(0);
  for (int64_t rows : {int64_t{1000000}, int64_t{10000000}}) {
    std::vector<int64_t> keys(static_cast<size_t>(rows));
    for (auto& k : keys) k = static_cast<int64_t>(rng() >> 1);
    tritonrec::detail::KeyIndex ours(rows);
    absl::flat_hash_map<int64_t, int32_t> theirs;
    theirs.reserve(static_cast<size_t>(rows));
    for (int64_t i = 0; i < rows; ++i) {
      ours.assign(keys[static_cast<size_t>(i)], i);
      theirs[keys[static_cast<size_t>(i)]] = static_cast<int32_t>(i);
    }
    // Zipf(1.05) ranks by inverse CDF over the rows.
    std::vector<double> cdf(static_cast<size_t>(rows));
    double total = 0;
    for (int64_t i = 0; i < rows; ++i) cdf[static_cast<size_t>(i)] = (total += std::pow(double(i + 1), -1.05));
    for (const char* dist : {"uniform", "zipf"}) {
      std::vector<int64_t> query(static_cast<size_t>(queries));
      std::uniform_real_distribution<double> u(0, total);
      for (auto& q : query) {
        int64_t rank = dist[0] == 'u' ? static_cast<int64_t>(rng() % static_cast<uint64_t>(rows))
                                      : std::lower_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin();
        q = keys[static_cast<size_t>(std::min(rank, rows - 1))];
      }
      int64_t sum_ours = 0, sum_theirs = 0;
      const double t_ours = best_seconds([&] { for (int64_t q : query) sum_ours += ours.find(q); }, 3);
      const double t_theirs = best_seconds([&] {
        for (int64_t q : query) { auto it = theirs.find(q); sum_theirs += it == theirs.end() ? -1 : it->second; }
      }, 3);
      if (sum_ours != sum_theirs) { std::fprintf(stderr, "results differ\n"); return 1; }
      const double absl_bytes = double(theirs.capacity()) * (sizeof(int64_t) + sizeof(int32_t) + 4 /*padding*/ + 1 /*ctrl*/);
      std::printf("| %lld | %s | %.1f | %.1f | %.2f | %.1f | %.1f |\n", static_cast<long long>(rows), dist,
                  queries / t_ours / 1e6, queries / t_theirs / 1e6, t_theirs / t_ours,
                  double(ours.bytes()) / rows, absl_bytes / rows);
    }
  }
  return 0;
}
