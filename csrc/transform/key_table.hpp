// Batched lookups in the transform plan's categorical key table (tritonrec/transform/_table.py).
#pragma once

#include <cstdint>

namespace tritonrec {

/// Read-only view of a key table: `slots` is int64 (capacity, 2), each row
/// `[key, column << 32 | code]`; an empty slot has second word -1. Linear probing from
/// the home slot `fibonacci64(key ^ (column << 32)) >> shift`; no stored pair sits more
/// than `max_probe` slots after its home.
struct KeyTableView {
  const int64_t* slots = nullptr;  ///< host memory, shape (capacity, 2), C-contiguous
  int64_t capacity = 0;            ///< number of slots, a power of two
  int64_t max_probe = 0;           ///< longest displacement of a stored pair, in slots
};

/// Codes of a (rows, columns) block of keys; key (i, j) is looked up in column j.
///
/// @param table the table (host memory).
/// @param keys host int64 (rows, columns), C-contiguous.
/// @param rows number of rows.
/// @param columns number of columns (< 2^31).
/// @param out host int64 (rows, columns), C-contiguous: the code, or -1 where (j, key) is absent.
/// Synchronous; touches no shared state, so concurrent calls are safe.
void key_table_lookup(const KeyTableView& table, const int64_t* keys, int64_t rows, int64_t columns,
                      int64_t* out) noexcept;

}  // namespace tritonrec
