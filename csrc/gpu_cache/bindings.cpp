// pybind11 bindings of the GPU cache (CUDA builds) and of its host twin, the policy simulator (all builds).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "gpu_cache/miss_plan.hpp"
#include "gpu_cache/set_cache_sim.hpp"
#if TRITONREC_HAS_CUDA
#include "gpu_cache/gpu_cache.hpp"
#include "gpu_cache/tier_lookup.hpp"
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

// GpuTierLookup::lookup with the GIL released; `complete` is called back with it held, on numpy views of
// the call's pinned host buffers (valid during the callback only).
void tier_lookup(GpuTierLookup& self, const std::vector<GpuCache*>& caches,
                                 const std::vector<const HostTable*>& hosts, uintptr_t keys,
                                 int64_t n, uintptr_t out, GpuOutDtype out_dtype, uintptr_t stream, ThreadPool& pool,
                                 const py::function& complete) {
  if (caches.size() != hosts.size()) throw py::value_error("caches, hosts: expected one of each per column");
  std::vector<TierColumn> columns;
  for (size_t t = 0; t < caches.size(); ++t) columns.push_back({caches[t], hosts[t]});
  const int64_t dim = caches.empty() || caches[0] == nullptr ? 0 : caches[0]->dim();
  CompleteMisses fn = [&complete, dim](int column, int64_t m, const int64_t* k, float* rows, uint8_t* found, int64_t hits) {
    py::gil_scoped_acquire acquire;
    py::none base;  // views, not copies
    py::array_t<int64_t> k_view({m}, {static_cast<int64_t>(sizeof(int64_t))}, k, base);
    py::array_t<float> rows_view({m, dim}, {dim * static_cast<int64_t>(sizeof(float)), static_cast<int64_t>(sizeof(float))}, rows, base);
    py::array_t<uint8_t> found_view({m}, {int64_t{1}}, found, base);
    complete(column, k_view, rows_view, found_view, hits);
  };
  py::gil_scoped_release release;
  self.lookup(columns, reinterpret_cast<const int64_t*>(keys), n, reinterpret_cast<void*>(out), out_dtype,
              reinterpret_cast<cudaStream_t>(stream), pool, fn);
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

  m.def(
      "lookup_chunks",
      [](int64_t n, int chunks, int64_t min_rows, bool taper) {
        std::vector<std::pair<int64_t, int64_t>> ranges;
        try {
          for (const RowRange& r : lookup_chunks(n, chunks, min_rows, taper)) ranges.emplace_back(r.begin, r.end);
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
        return ranges;
      },
      py::arg("n"), py::arg("chunks"), py::arg("min_rows"), py::arg("taper") = false,
      "The key rows [begin, end) a GPU tier lookup of n rows is cut into: at most `chunks` ranges of ceil(n / chunks) "
      "rows but at least min_rows (the last takes the rest), in order; with taper (chunks >= 3) the first and last "
      "are half the others (u = max(min_rows, ceil(n / (2 chunks - 2))) first, then 2u each, the last the rest).");
  m.def(
      "compact_found",
      [](py::array_t<int64_t, py::array::c_style | py::array::forcecast> keys,
         py::array_t<float, py::array::c_style | py::array::forcecast> rows,
         py::array_t<uint8_t, py::array::c_style | py::array::forcecast> found) {
        if (keys.ndim() != 1 || rows.ndim() != 2 || found.ndim() != 1 || rows.shape(0) != keys.shape(0) ||
            found.shape(0) != keys.shape(0)) {
          throw py::value_error("keys (m,), rows (m, dim), found (m,): expected matching shapes");
        }
        const int64_t m = keys.shape(0), dim = rows.shape(1);
        py::array_t<int64_t> keys_out(m);
        py::array_t<float> rows_out({m, dim});
        const int64_t present =
            compact_found(keys.data(), rows.data(), found.data(), m, dim, keys_out.mutable_data(), rows_out.mutable_data());
        return py::make_tuple(keys_out[py::slice(0, present, 1)], rows_out[py::slice(0, present, 1)]);
      },
      py::arg("keys"), py::arg("rows"), py::arg("found"),
      "(keys, rows) of the keys where found != 0, in order: what a GPU tier lookup inserts of a chunk's misses some of "
      "whose keys exist nowhere.");

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
      .def_property_readonly("lru_tick", &GpuCache::lru_tick,
                             "The LRU clock a lookup starting now gets: lru_clock of the misses GpuTierLookup counted so far.")
      .def_property_readonly("lookups", &GpuCache::lookups, "Keys GpuTierLookup looked up in this cache so far.")
      .def_property_readonly("misses", &GpuCache::misses, "The misses among them (what moves the LRU clock).")
      .def_property_readonly("capacity_rows", &GpuCache::capacity_rows)
      .def_property_readonly("dim", &GpuCache::dim)
      .def_property_readonly("device", &GpuCache::device)
      .def_property_readonly("bytes", &GpuCache::bytes, "Device memory held, in bytes.");
  py::class_<GpuTierLookup>(m, "GpuTierLookup",
                            "A GPU tier's lookups: device keys through the tables' GPU caches, misses read from the host tables, "
                            "written into the output and inserted, in one call with the GIL released (thread-safe).")
      .def(py::init([](int device, int stagings, int chunks, int64_t min_chunk_rows, bool async_insert, bool taper, bool stream_rows,
                       bool copy_stream, int crowded_chunks, bool crowded_copy_stream, bool send_beside_read) {
             try {
               return new GpuTierLookup(device, TierLookupOptions{stagings, chunks, min_chunk_rows, async_insert, taper, stream_rows, copy_stream,
                                                                  crowded_chunks, crowded_copy_stream, send_beside_read});
             } catch (const std::invalid_argument& e) {
               throw py::value_error(e.what());
             }
           }),
           py::arg("device"), py::arg("stagings") = 2, py::arg("chunks") = 4, py::arg("min_chunk_rows") = 65536,
           py::arg("async_insert") = false, py::arg("taper") = false, py::arg("stream_rows") = false,
           py::arg("copy_stream") = false, py::arg("crowded_chunks") = 0, py::arg("crowded_copy_stream") = true,
           py::arg("send_beside_read") = false)
      .def("lookup", &tier_lookup, py::arg("caches"), py::arg("hosts"), py::arg("keys"), py::arg("n"),
           py::arg("out"), py::arg("out_dtype"), py::arg("stream"), py::arg("pool"), py::arg("complete"),
           "keys device int64 (n, columns) C-contiguous, column t through caches[t] over hosts[t] (at the cache's LRU clock), into "
           "out device (n, columns, dim) of out_dtype; complete(column, keys, rows, found, hits) is called for missed keys "
           "the host table did not all hold. The output is queued on `stream`; each cache counts its lookups and misses.")
      .def(
          "invalidate",
          [](GpuTierLookup& self, GpuCache& cache, py::array_t<int64_t, py::array::c_style | py::array::forcecast> keys) {
            if (keys.ndim() != 1) throw py::value_error("keys: expected a 1-D int64 array");
            py::gil_scoped_release release;
            self.invalidate(cache, keys.data(), keys.shape(0));
          },
          py::arg("cache"), py::arg("keys"),
          "Drops host keys int64 (n,) from `cache` after every insert queued before; returns when done.")
      .def_property_readonly("pool_bytes", &GpuTierLookup::pool_bytes,
                             "Device memory its pool holds for calls (in flight or kept for the next ones), in bytes.")
      .def_property_readonly("crowded_calls", &GpuTierLookup::crowded_calls,
                             "Calls so far that started while another held a staging or waited for one (cut into crowded_chunks "
                             "chunks where that is set).")
      .def_property("trace", &GpuTierLookup::trace, &GpuTierLookup::set_trace,
                    "Trace the calls from now on (each host step, and each chunk's GPU work by timing events) for "
                    "last_trace(); a traced call waits for its streams at its end (a probe's setting, not a server's).")
      .def(
          "last_trace",
          [](const GpuTierLookup& self) {
            py::list marks;
            for (const TraceMark& mark : self.last_trace()) marks.append(py::make_tuple(mark.what, mark.chunk, mark.us));
            return marks;
          },
          "The steps of the last traced call that ended without error: (what, chunk or -1 for the call, microseconds "
          "after the call began), in the order they were marked; GPU steps are named 'gpu ...'.");
  m.def("gpu_cache_slot_bytes", &gpu_cache_slot_bytes, py::arg("dim"), py::arg("dtype"), py::arg("admission") = false,
        "Device bytes per cached row (row, 8-byte slot word, lock share, and the admission sketch's share).");
#endif
}

}  // namespace tritonrec
