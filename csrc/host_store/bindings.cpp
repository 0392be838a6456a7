// pybind11 bindings of the host store: ThreadPool and HostTable.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <utility>
#include <vector>

#include "host_store/host_table.hpp"
#include "host_store/tables_read.hpp"
#include "host_store/thread_pool.hpp"

namespace py = pybind11;

namespace tritonrec {
namespace {

template <typename T>
py::array_t<T> require(const py::handle& obj, const char* name, int ndim, bool writeable = false) {
  if (!py::isinstance<py::array_t<T>>(obj)) {
    throw py::type_error(std::string(name) + ": expected a numpy array of " + py::str(py::dtype::of<T>()).cast<std::string>());
  }
  auto array = py::reinterpret_borrow<py::array>(obj);
  if (array.ndim() != ndim || !(array.flags() & py::array::c_style)) {
    throw py::type_error(std::string(name) + ": expected a C-contiguous array of " + std::to_string(ndim) + " dimension(s)");
  }
  if (writeable && !array.writeable()) throw py::value_error(std::string(name) + ": expected a writeable array");
  return py::reinterpret_borrow<py::array_t<T>>(obj);
}

/// Keys (n,) int64 and rows (n, dim) float32 for a table, both C-contiguous, or a named error.
std::pair<py::array_t<int64_t>, py::array_t<float>> require_keys_rows(const HostTable& table, const py::handle& keys_obj,
                                                                      const py::handle& rows_obj) {
  auto keys = require<int64_t>(keys_obj, "keys", 1);
  auto rows = require<float>(rows_obj, "rows", 2);
  if (rows.shape(0) != keys.shape(0) || rows.shape(1) != table.dim()) {
    throw py::value_error("rows: expected shape (" + std::to_string(keys.shape(0)) + ", " + std::to_string(table.dim()) + ")");
  }
  return {keys, rows};
}

/// A binding of table.*op(keys, rows, n): keys int64 (n,) and rows float32 (n, dim) host arrays
/// checked, the GIL released during the call.
template <typename R>
auto with_keys_rows(R (HostTable::*op)(const int64_t*, const float*, int64_t)) {
  return [op](HostTable& table, py::handle keys_obj, py::handle rows_obj) {
    auto [keys, rows] = require_keys_rows(table, keys_obj, rows_obj);
    const int64_t n = keys.shape(0);
    py::gil_scoped_release release;
    return (table.*op)(keys.data(), rows.data(), n);
  };
}

/// A TablesRead for Python: holds the tables, the pool and the arrays while the read runs.
struct PyTablesRead {
  std::vector<py::object> keep;
  std::unique_ptr<TablesRead> read;
};

PyTablesRead* start_tables_read(const py::list& tables_obj, const py::list& keys_obj, const py::list& out_obj, const py::list& found_obj,
                                py::object pool_obj, bool streaming) {
  const size_t k = tables_obj.size();
  if (keys_obj.size() != k || out_obj.size() != k || found_obj.size() != k) {
    throw py::value_error("keys, out, found: expected one array each per table (" + std::to_string(k) + ")");
  }
  auto self = std::make_unique<PyTablesRead>();
  std::vector<TablesRead::Part> parts;
  for (size_t p = 0; p < k; ++p) {
    const auto& table = tables_obj[p].cast<const HostTable&>();
    auto keys = require<int64_t>(keys_obj[p], "keys", 1);
    auto out = require<float>(out_obj[p], "out", 2, true);
    auto found = require<uint8_t>(found_obj[p], "found", 1, true);
    const int64_t n = keys.shape(0);
    if (out.shape(0) != n || out.shape(1) != table.dim()) {
      throw py::value_error("out[" + std::to_string(p) + "]: expected shape (" + std::to_string(n) + ", " + std::to_string(table.dim()) + ")");
    }
    if (found.shape(0) != n) throw py::value_error("found[" + std::to_string(p) + "]: expected shape (" + std::to_string(n) + ",)");
    parts.push_back({&table, keys.data(), n, out.mutable_data(), found.mutable_data()});
    for (py::object o : {py::object(tables_obj[p]), py::object(keys), py::object(out), py::object(found)}) self->keep.push_back(o);
  }
  auto& pool = pool_obj.cast<ThreadPool&>();
  self->keep.push_back(pool_obj);
  py::gil_scoped_release release;  // the tables' locks may wait for a writer
  self->read = std::make_unique<TablesRead>(std::move(parts), pool, streaming);
  return self.release();
}

}  // namespace

/// Looks up column j of keys (n, k) in tables[j], writing out (n, k, dim) and found (n, k).
py::array_t<int64_t> find_columns(const py::list& tables_obj, const py::handle& keys_obj, const py::handle& out_obj,
                                  const py::handle& found_obj, ThreadPool& pool) {
  std::vector<const HostTable*> tables;
  for (const auto& t : tables_obj) tables.push_back(&t.cast<const HostTable&>());
  auto keys = require<int64_t>(keys_obj, "keys", 2);
  auto out = require<float>(out_obj, "out", 3, true);
  auto found = require<uint8_t>(found_obj, "found", 2, true);
  const int64_t n = keys.shape(0);
  const int64_t k = keys.shape(1);
  if (static_cast<int64_t>(tables.size()) != k) {
    throw py::value_error("tables: expected one table per keys column (" + std::to_string(k) + "), got " + std::to_string(tables.size()));
  }
  const int64_t dim = k ? tables[0]->dim() : 0;
  for (const auto* t : tables) {
    if (t->dim() != dim) throw py::value_error("tables: every table must have the same dim");
  }
  if (out.shape(0) != n || out.shape(1) != k || out.shape(2) != dim) {
    throw py::value_error("out: expected shape (" + std::to_string(n) + ", " + std::to_string(k) + ", " + std::to_string(dim) + ")");
  }
  if (found.shape(0) != n || found.shape(1) != k) {
    throw py::value_error("found: expected shape (" + std::to_string(n) + ", " + std::to_string(k) + ")");
  }
  py::array_t<int64_t> hits(k);
  int64_t* hit_data = hits.mutable_data();
  const int64_t* key_data = keys.data();
  float* out_data = out.mutable_data();
  uint8_t* found_data = found.mutable_data();
  {
    py::gil_scoped_release release;
    // Work items: (table, block of rows); small batches stay on the calling thread.
    const int64_t block = 2048;
    const int64_t blocks = (n + block - 1) / block;
    std::vector<std::atomic<int64_t>> counts(static_cast<size_t>(k));
    for (auto& c : counts) c.store(0);
    pool.parallel_for(k * blocks, n * k <= 4096 ? k * blocks : 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t j = item / blocks;
        const int64_t start = (item % blocks) * block;
        const int64_t rows = std::min(block, n - start);
        counts[static_cast<size_t>(j)].fetch_add(
            tables[static_cast<size_t>(j)]->find_strided(key_data + start * k + j, k, rows, out_data + (start * k + j) * dim, k * dim,
                                                         found_data + start * k + j, k),
            std::memory_order_relaxed);
      }
    });
    for (int64_t j = 0; j < k; ++j) hit_data[j] = counts[static_cast<size_t>(j)].load();
  }
  return hits;
}

void bind_host_store(py::module_& m) {
  m.def("find_columns", &find_columns, py::arg("tables"), py::arg("keys"), py::arg("out"), py::arg("found"), py::arg("pool"),
        R"doc(Looks up column j of keys in tables[j], all columns in one call, the GIL released.

Args:
    tables: k HostTables of one dim.
    keys: int64 (n, k) C-contiguous host array.
    out: float32 (n, k, dim) C-contiguous host array: rows of found keys, zeros for missing ones.
    found: uint8 (n, k) host array: 1 where found.
    pool: the ThreadPool to spread (table, row block) items over.

Returns:
    int64 (k,): keys found per table.
)doc");
  py::class_<ThreadPool>(m, "ThreadPool", "Worker threads for batched host lookups.")
      .def(py::init<int, int>(), py::arg("threads") = 0, py::arg("spin_us") = -1,
           "threads: total threads per call (0: the machine's hardware threads); spin_us: how long an idle worker "
           "watches for the next call before sleeping (-1: the environment's TRITONREC_POOL_SPIN_US, else 0).")
      .def_property_readonly("threads", &ThreadPool::threads)
      .def_property_readonly("spin_us", &ThreadPool::spin_us);

  py::class_<PyTablesRead>(m, "TablesRead",
                           "One read of several tables' keys, begun on a pool's workers: the calling thread is free until "
                           "finish(). The tables' read locks are held until then (their writers wait).")
      .def(py::init(&start_tables_read), py::arg("tables"), py::arg("keys"), py::arg("out"), py::arg("found"), py::arg("pool"),
           py::arg("streaming") = false,
           "tables: HostTables (one may appear more than once); keys[p] int64 (n_p,), out[p] float32 (n_p, dim of "
           "tables[p]) and found[p] uint8 (n_p,) C-contiguous host arrays. Returns at once.")
      .def(
          "finish",
          [](PyTablesRead& self) {
            py::gil_scoped_release release;
            return self.read->finish();
          },
          "Joins the read and waits for its end (call it on the thread that began it); releases the tables and "
          "returns each part's keys found (counted in the tables' stats).");

  py::enum_<RowDtype>(m, "RowDtype").value("float32", RowDtype::kFloat32).value("float16", RowDtype::kFloat16);

  py::class_<HostTable>(m, "HostTable",
                        "One embedding table in host memory: int64 key -> row of dim values (fp32 or fp16 storage).")
      .def(py::init([](int64_t dim, RowDtype dtype, int64_t slab_rows, int64_t expected_rows, int64_t max_rows) {
             try {
               return new HostTable(HostTableOptions{dim, dtype, slab_rows, expected_rows, max_rows});
             } catch (const std::invalid_argument& e) {
               throw py::value_error(e.what());
             }
           }),
           py::arg("dim"), py::arg("dtype") = RowDtype::kFloat32, py::arg("slab_rows") = 1 << 16,
           py::arg("expected_rows") = 0, py::arg("max_rows") = 0,
           "max_rows > 0 makes the table a frequency-aware cache of at most max_rows rows (see admit).")
      .def("insert_or_assign", with_keys_rows(&HostTable::insert_or_assign),
          py::arg("keys"), py::arg("rows"),
          "Inserts or overwrites rows. keys: int64 (n,); rows: float32 (n, dim), both C-contiguous host arrays.")
      .def("assign_if_present", with_keys_rows(&HostTable::assign_if_present),
          py::arg("keys"), py::arg("rows"), "Overwrites the rows of keys already held; others are left out.")
      .def("admit", with_keys_rows(&HostTable::admit),
          py::arg("keys"), py::arg("rows"),
          "Offers rows read from a lower tier: taken while there is room, else by frequency (TinyLFU admission, "
          "sampled-LFU eviction). Returns how many were taken.")
      .def(
          "erase",
          [](HostTable& table, py::handle keys_obj) {
            auto keys = require<int64_t>(keys_obj, "keys", 1);
            const int64_t n = keys.shape(0);
            py::gil_scoped_release release;
            return table.erase(keys.data(), n);
          },
          py::arg("keys"), "Erases keys (int64 (n,)); returns how many were present.")
      .def(
          "find",
          [](const HostTable& table, py::handle keys_obj, py::handle out_obj, py::handle found_obj, ThreadPool& pool, bool streaming) {
            auto keys = require<int64_t>(keys_obj, "keys", 1);
            auto out = require<float>(out_obj, "out", 2, true);
            auto found = require<uint8_t>(found_obj, "found", 1, true);
            const int64_t n = keys.shape(0);
            if (out.shape(0) != n || out.shape(1) != table.dim()) {
              throw py::value_error("out: expected shape (" + std::to_string(n) + ", " + std::to_string(table.dim()) + ")");
            }
            if (found.shape(0) != n) throw py::value_error("found: expected shape (" + std::to_string(n) + ",)");
            const int64_t* key_data = keys.data();
            float* out_data = out.mutable_data();
            uint8_t* found_data = found.mutable_data();
            py::gil_scoped_release release;
            return table.find(key_data, n, out_data, found_data, pool, streaming);
          },
          py::arg("keys"), py::arg("out"), py::arg("found"), py::arg("pool"), py::arg("streaming") = false,
          R"doc(Looks up keys with the GIL released.

Args:
    keys: int64 (n,) host array.
    out: float32 (n, dim) C-contiguous host array: rows of found keys, zeros for missing ones.
    found: uint8 (n,) host array: 1 where found.
    pool: the ThreadPool to split the batch over.
    streaming: write fp32 rows with non-temporal stores (past the CPU's caches; for memory a device copies next).

Returns:
    The number of keys found.
)doc")
      .def_property_readonly("dim", &HostTable::dim)
      .def_property_readonly("max_rows", &HostTable::max_rows)
      .def_property_readonly("dtype", &HostTable::dtype)
      .def_property_readonly("size", &HostTable::size, "Rows held.")
      .def_property_readonly("bytes", &HostTable::bytes, "Host memory held in bytes (slabs and index).")
      .def("stats", [](const HostTable& table) {
        HostTableStats s = table.stats();
        py::dict d;
        d["lookups"] = s.lookups;
        d["hits"] = s.hits;
        d["misses"] = s.misses;
        return d;
      }, "Counters since creation: lookups, hits, misses (keys).");
}

}  // namespace tritonrec
