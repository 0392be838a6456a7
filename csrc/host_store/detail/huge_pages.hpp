// Transparent huge pages for the host tier's large arrays (rows, index): a random read of a large
// table misses the TLB far less in 2 MiB pages than in 4 KiB ones.
#pragma once

#include <cstddef>
#include <cstdint>

#include <sys/mman.h>

namespace tritonrec::detail {

constexpr size_t kHugePage = size_t{2} << 20;

/// Advises the whole 2 MiB pages inside [data, data + bytes) into huge pages (before they are first
/// touched, so that their faults take huge pages). Advice only: failure is harmless.
inline void advise_huge_pages(void* data, size_t bytes) noexcept {
  const uintptr_t first = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
}

}  // namespace tritonrec::detail
