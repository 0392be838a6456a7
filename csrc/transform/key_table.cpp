#include "transform/key_table.hpp"

namespace tritonrec {
namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
constexpr int64_t kEmpty = -1;
constexpr int64_t kLow = 0xFFFFFFFFll;

inline int log2_of_power_of_two(int64_t value) noexcept {
  int bits = 0;
  while ((int64_t{1} << bits) < value) ++bits;
  return bits;
}

}  // namespace

void key_table_lookup(const KeyTableView& table, const int64_t* keys, int64_t rows, int64_t columns,
                      int64_t* out) noexcept {
  const int shift = 64 - log2_of_power_of_two(table.capacity);
  const uint64_t mask = static_cast<uint64_t>(table.capacity - 1);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < columns; ++j) {
      const int64_t key = keys[i * columns + j];
      const int64_t tag = j << 32;
      uint64_t slot = (static_cast<uint64_t>(key ^ tag) * kGolden) >> shift;
      int64_t code = -1;
      for (int64_t probe = 0; probe <= table.max_probe; ++probe) {
        const int64_t* entry = table.slots + 2 * slot;
        const int64_t word = entry[1];
        if (word == kEmpty) break;
        if (entry[0] == key && (word & ~kLow) == tag) {
          code = word & kLow;
          break;
        }
        slot = (slot + 1) & mask;
      }
      out[i * columns + j] = code;
    }
  }
}

}  // namespace tritonrec
