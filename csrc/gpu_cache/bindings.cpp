// pybind11 bindings of the GPU cache (CUDA builds) and of its host twin, the policy simulator (all builds).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "gpu_cache/set_cache_sim.hpp"
#if TRITONREC_HAS_CUDA
#include "gpu_cache/gpu_cache.hpp"
#endif

namespace py = pybind11;

namespace tritonrec {
namespace {

constexpr int kGpuCacheWays = 16;  // GpuCache::kWays (also in builds without CUDA, for the host twin's default)

#if TRITONREC_HAS_CUDA
// Runs a lookup with the GIL released; std::invalid_argument becomes ValueError.
void find_async(const GpuCache& cache, const GpuCache::FindArgs& args, uintptr_t stream) {
  py::gil_scoped_release release;
  try {
    cache.find_async(args, reinterpret_cast<cudaStream_t>(stream));
  } catch (const std::invalid_argument& e) {
    py::gil_scoped_acquire acquire;
    throw py::value_error(e.what());
  }
}
#endif

Eviction parse_eviction(const std::string& name) {
  if (name == "lru") return Eviction::kLru;
  if (name == "lfu") return Eviction::kLfu;
  throw py::value_error("eviction " + name + ": expected 'lru' or 'lfu'");
}

}  // namespace

void bind_gpu_cache(py::module_& m) {
  m.attr("gpu_cache_min_rows") = kMinSets * kGpuCacheWays;  // a smaller GpuCache could not tell keys apart by tag
  m.def("lru_clock", &lru_clock, py::arg("misses"), py::arg("capacity_rows"),
        "The LRU clock (uint32 tick, >= 1) of a cache of capacity_rows rows after `misses` misses in all: one tick "
        "per capacity_rows / 16 misses, so that it stands still while lookups hit.");
  m.def(
      "eviction_rank",
      [](const std::string& eviction, uint32_t meta, uint32_t tick) { return eviction_rank(parse_eviction(eviction), meta, tick); },
      py::arg("eviction"), py::arg("meta"), py::arg("tick"),
      "How strongly a GPU cache slot of `meta` (LRU: its last use's tick mod 256; LFU: its use count) is due for eviction "
      "at LRU clock `tick` (the highest goes first).");
  m.def(
      "simulate_set_cache",
      [](py::array_t<int64_t, py::array::c_style> trace, int64_t capacity_rows, int ways, const std::string& eviction,
         int64_t batch, bool admission, int64_t aging_multiple) {
        if (trace.ndim() != 1) throw py::value_error("trace: expected a 1-D int64 array");
        if (batch < 1) throw py::value_error("batch: expected >= 1");
        SetCacheSim sim = [&] {
          try {
            return SetCacheSim(capacity_rows, ways, parse_eviction(eviction), admission, aging_multiple);
          } catch (const std::invalid_argument& e) {
            throw py::value_error(e.what());
          }
        }();
        const int64_t n = trace.shape(0);
        py::array_t<uint8_t> hits(n);
        const int64_t* keys = trace.data();
        uint8_t* out = hits.mutable_data();
        {
          py::gil_scoped_release release;
          const int64_t capacity = sim.sets() * ways;
          int64_t misses = 0;
          uint32_t tick = 1;
          for (int64_t i = 0; i < n; ++i) {
            if (i % batch == 0) tick = lru_clock(misses, capacity);  // per call, as the GPU tier passes it
            const bool hit = sim.access(keys[i], tick);
            out[i] = hit ? 1 : 0;
            misses += hit ? 0 : 1;
            if ((i + 1) % batch == 0 || i + 1 == n) sim.end_call();
          }
        }
        return hits;
      },
      py::arg("trace"), py::arg("capacity_rows"), py::arg("ways") = kGpuCacheWays, py::arg("eviction") = "lru", py::arg("batch") = 1,
      py::arg("admission") = false, py::arg("aging_multiple") = kAgingMultiple,
      R"doc(Replays keys through the GPU cache's bookkeeping on the host (same sets, ways and policy code).

Args:
    trace: int64 (n,) keys in access order.
    capacity_rows: rows the cache holds (whole sets of `ways`).
    ways: rows per set (the GPU cache uses 16).
    eviction: 'lru' or 'lfu'.
    batch: accesses per lookup call (the LRU clock, lru_clock of the misses before the call, is read
        once per call, as the GPU tier does; aging is checked between calls).
    admission: TinyLFU admission: a missed key replaces a full set's victim only if the frequency
        sketch saw it more often than the victim was used.
    aging_multiple: with admission, the sketch (and LFU counts) are halved every
        aging_multiple x capacity_rows misses.

Returns:
    uint8 (n,): 1 where the access hit.
)doc");

#if TRITONREC_HAS_CUDA
  static_assert(GpuCache::kWays == kGpuCacheWays, "the host twin's default is the GPU cache's set size");
  py::enum_<GpuRowDtype>(m, "GpuRowDtype")
      .value("float32", GpuRowDtype::kFloat32)
      .value("float16", GpuRowDtype::kFloat16)
      .value("bfloat16", GpuRowDtype::kBFloat16);
  py::enum_<GpuOutDtype>(m, "GpuOutDtype").value("float32", GpuOutDtype::kFloat32).value("float16", GpuOutDtype::kFloat16);
  py::class_<GpuCache>(m, "GpuCache",
                       "One table's GPU cache: int64 keys in 16-way sets (at least 4096 rows), rows in device memory. Pointers are device "
                       "addresses (e.g. cupy's array.data.ptr) and streams are cudaStream_t handles as integers.")
      .def(py::init([](int64_t capacity_rows, int64_t dim, GpuRowDtype dtype, const std::string& eviction, int device,
                       bool admission, int64_t aging_multiple) {
             try {
               GpuCacheOptions options{capacity_rows, dim, dtype, parse_eviction(eviction), admission, aging_multiple, device};
               return new GpuCache(options);
             } catch (const std::invalid_argument& e) {
               throw py::value_error(e.what());
             }
           }),
           py::arg("capacity_rows"), py::arg("dim"), py::arg("dtype") = GpuRowDtype::kFloat32, py::arg("eviction") = "lru",
           py::arg("device") = 0, py::arg("admission") = false, py::arg("aging_multiple") = kAgingMultiple)
      .def(
          "find",
          [](const GpuCache& cache, uintptr_t keys, int64_t n, uintptr_t out, uintptr_t miss_index, uintptr_t miss_count,
             uint32_t tick, uintptr_t stream, int64_t key_stride, int64_t out_stride, GpuOutDtype out_dtype) {
            if (key_stride < 1) throw py::value_error("key_stride: expected >= 1");
            if (out_stride != 0 && out_stride < cache.dim()) throw py::value_error("out_stride: expected 0 or >= dim");
            GpuCache::FindArgs args;
            args.keys = reinterpret_cast<const int64_t*>(keys);
            args.key_stride = key_stride;
            args.n = n;
            args.out = reinterpret_cast<void*>(out);
            args.out_stride = out_stride;
            args.out_dtype = out_dtype;
            args.miss_index = reinterpret_cast<int32_t*>(miss_index);
            args.miss_count = reinterpret_cast<int32_t*>(miss_count);
            args.tick = tick;
            find_async(cache, args, stream);
          },
          py::arg("keys"), py::arg("n"), py::arg("out"), py::arg("miss_index"), py::arg("miss_count"), py::arg("tick"),
          py::arg("stream"), py::arg("key_stride") = 1, py::arg("out_stride") = 0,
          py::arg("out_dtype") = GpuOutDtype::kFloat32,
          "Asynchronous on `stream`: keys device int64 (key i at keys[i * key_stride]) -> hits' rows in out (row i at "
          "out + i * out_stride elements of out_dtype; 0 = dim); misses' rows are left for the caller; miss_index "
          "device int32 (n,) gets their positions (first *miss_count, any order), miss_count a device int32 scalar.")
      .def(
          "find_column",
          [](const GpuCache& cache, uintptr_t keys, int64_t n, int64_t columns, int64_t column, uintptr_t out,
             uintptr_t miss_index, uintptr_t miss_counts, uint32_t tick, uintptr_t stream, GpuOutDtype out_dtype) {
            if (columns < 1 || column < 0 || column >= columns) throw py::value_error("column: expected 0 <= column < columns");
            if (n < 0) throw py::value_error("n: expected >= 0");
            const int64_t dim = cache.dim();
            const int64_t item = out_dtype == GpuOutDtype::kFloat16 ? 2 : 4;
            GpuCache::FindArgs args;
            args.keys = reinterpret_cast<const int64_t*>(keys) + column;
            args.key_stride = columns;
            args.n = n;
            args.out = reinterpret_cast<void*>(out + static_cast<uintptr_t>(item * dim * column));
            args.out_stride = columns * dim;
            args.out_dtype = out_dtype;
            args.miss_index = reinterpret_cast<int32_t*>(miss_index) + n * column;
            args.miss_count = reinterpret_cast<int32_t*>(miss_counts) + column;
            args.tick = tick;
            find_async(cache, args, stream);
          },
          py::arg("keys"), py::arg("n"), py::arg("columns"), py::arg("column"), py::arg("out"), py::arg("miss_index"),
          py::arg("miss_counts"), py::arg("tick"), py::arg("stream"), py::arg("out_dtype") = GpuOutDtype::kFloat32,
          "find() of one column of a block, asynchronous on `stream`: keys device int64 (n, columns) C-contiguous, "
          "column `column` looked up; hits' rows into out (n, columns, dim) of out_dtype, slot `column`; the misses' "
          "positions into row `column` of miss_index device int32 (columns, n) and their count into "
          "miss_counts[column] (device int32 (columns,)).")
      .def(
          "insert",
          [](GpuCache& cache, uintptr_t keys, uintptr_t rows, int64_t n, uint32_t tick, uintptr_t stream) {
            py::gil_scoped_release release;
            cache.insert_async(reinterpret_cast<const int64_t*>(keys), reinterpret_cast<const float*>(rows), n, tick,
                               reinterpret_cast<cudaStream_t>(stream));
          },
          py::arg("keys"), py::arg("rows"), py::arg("n"), py::arg("tick"), py::arg("stream"),
          "Asynchronous on `stream`: inserts or overwrites keys device int64 (n,) (unique) with rows device fp32 (n, dim).")
      .def(
          "invalidate",
          [](GpuCache& cache, uintptr_t keys, int64_t n, uintptr_t stream) {
            py::gil_scoped_release release;
            cache.invalidate_async(reinterpret_cast<const int64_t*>(keys), n, reinterpret_cast<cudaStream_t>(stream));
          },
          py::arg("keys"), py::arg("n"), py::arg("stream"), "Asynchronous on `stream`: drops keys device int64 (n,).")
      .def_property_readonly("capacity_rows", &GpuCache::capacity_rows)
      .def_property_readonly("dim", &GpuCache::dim)
      .def_property_readonly("device", &GpuCache::device)
      .def_property_readonly("bytes", &GpuCache::bytes, "Device memory held, in bytes.");
  m.def(
      "gather_miss_keys",
      [](uintptr_t keys, int columns, int64_t n, uintptr_t miss_index, uintptr_t counts, int64_t max_count,
         uintptr_t out_keys, int device, uintptr_t stream) {
        py::gil_scoped_release release;
        gather_miss_keys_async(reinterpret_cast<const int64_t*>(keys), columns, n,
                               reinterpret_cast<const int32_t*>(miss_index), reinterpret_cast<const int32_t*>(counts),
                               max_count, reinterpret_cast<int64_t*>(out_keys), device,
                               reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("keys"), py::arg("columns"), py::arg("n"), py::arg("miss_index"), py::arg("counts"), py::arg("max_count"),
      py::arg("out_keys"), py::arg("device"), py::arg("stream"),
      "Asynchronous: the missed keys of every column of keys device int64 (n, columns) into out_keys device int64, "
      "column by column (column t's are miss_index[t * n + j], j < counts[t]; counts device int32 (columns,)).");
  m.def(
      "scatter_miss_rows",
      [](uintptr_t out, GpuOutDtype out_dtype, int columns, int64_t n, int64_t dim, uintptr_t miss_index,
         uintptr_t counts, int64_t max_count, uintptr_t row_of, uintptr_t rows, int device, uintptr_t stream) {
        py::gil_scoped_release release;
        scatter_miss_rows_async(reinterpret_cast<void*>(out), out_dtype, columns, n, dim,
                                reinterpret_cast<const int32_t*>(miss_index), reinterpret_cast<const int32_t*>(counts),
                                max_count, reinterpret_cast<const int32_t*>(row_of), reinterpret_cast<const float*>(rows),
                                device, reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("out"), py::arg("out_dtype"), py::arg("columns"), py::arg("n"), py::arg("dim"), py::arg("miss_index"),
      py::arg("counts"), py::arg("max_count"), py::arg("row_of"), py::arg("rows"), py::arg("device"), py::arg("stream"),
      "Asynchronous: writes rows device fp32 (u, dim) into out (n, columns, dim) of out_dtype at the misses, in "
      "gather_miss_keys's order: miss j of column t gets rows[row_of[offset(t) + j]] (row_of 0: rows[offset(t) + j]).");
  m.def("gpu_cache_slot_bytes", &gpu_cache_slot_bytes, py::arg("dim"), py::arg("dtype"), py::arg("admission") = false,
        "Device bytes per cached row (row, 8-byte slot word, lock share, and the admission sketch's share).");
#endif
}

}  // namespace tritonrec
