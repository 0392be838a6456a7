// Host-side bookkeeping of the GPU tier's lookups (GpuTierLookup), apart so that it builds and is
// tested without CUDA: how a call's key rows are cut into chunks, and how the rows of the missed keys
// that exist are packed for the insert when some keys exist nowhere.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace tritonrec {

/// Key rows [begin, end) of a lookup.
struct RowRange {
  int64_t begin = 0;
  int64_t end = 0;
};

/// Cuts n key rows into at most `chunks` ranges of ceil(n / chunks) rows, but at least `min_rows`
/// (the last range takes the rest), in order; none for n == 0. Each chunk's misses are read from the
/// host while the next chunk's are listed and the last one's rows are copied and inserted.
/// With `taper` (and chunks >= 3) the first and last ranges are half the others: u =
/// max(min_rows, ceil(n / (2 chunks - 2))) rows first, then 2u each, the last the rest (at most u), so
/// that the reads start sooner and less is left to copy and insert after the last of them.
/// @throw std::invalid_argument n < 0, chunks < 1 or min_rows < 1.
inline std::vector<RowRange> lookup_chunks(int64_t n, int chunks, int64_t min_rows, bool taper = false) {
  if (n < 0) throw std::invalid_argument("n: expected >= 0");
  if (chunks < 1) throw std::invalid_argument("chunks: expected >= 1");
  if (min_rows < 1) throw std::invalid_argument("min_rows: expected >= 1");
  std::vector<RowRange> ranges;
  if (taper && chunks >= 3) {
    const int64_t unit = std::max(min_rows, (n + 2 * chunks - 3) / (2 * chunks - 2));
    for (int64_t begin = 0; begin < n;) {
      const int64_t end = std::min(n, begin + (ranges.empty() ? unit : 2 * unit));
      ranges.push_back({begin, end});
      begin = end;
    }
    return ranges;
  }
  const int64_t size = std::max(min_rows, (n + chunks - 1) / chunks);
  for (int64_t begin = 0; begin < n; begin += size) ranges.push_back({begin, std::min(n, begin + size)});
  return ranges;
}

/// Packs the keys and rows of the m missed keys that exist (found[i] != 0) to the front of keys_out
/// and rows_out, in their order; returns how many. Host memory: keys (m,), rows fp32 (m, dim),
/// found (m,), keys_out (m,), rows_out fp32 (m, dim).
inline int64_t compact_found(const int64_t* keys, const float* rows, const uint8_t* found, int64_t m, int64_t dim,
                             int64_t* keys_out, float* rows_out) noexcept {
  int64_t present = 0;
  for (int64_t i = 0; i < m; ++i) {
    if (found[i] == 0) continue;
    keys_out[present] = keys[i];
    std::memcpy(rows_out + present * dim, rows + i * dim, static_cast<size_t>(dim) * sizeof(float));
    ++present;
  }
  return present;
}

}  // namespace tritonrec
