// pybind11 bindings of the persistent tier (RocksDB).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "persistent/rocksdb_tier.hpp"

namespace py = pybind11;

namespace tritonrec {
namespace {

py::array require_bytes_rows(const py::handle& obj, const char* name, int64_t n, bool writeable) {
  if (!py::isinstance<py::array>(obj)) throw py::type_error(std::string(name) + ": expected a numpy array");
  auto array = py::reinterpret_borrow<py::array>(obj);
  if (array.ndim() != 2 || array.shape(0) != n || !(array.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) + ": expected a C-contiguous (" + std::to_string(n) + ", dim) array");
  }
  if (writeable && !array.writeable()) throw py::value_error(std::string(name) + ": expected a writeable array");
  return array;
}

py::array_t<int64_t> require_keys(const py::handle& obj) {
  if (!py::isinstance<py::array_t<int64_t>>(obj)) throw py::type_error("keys: expected an int64 numpy array");
  auto keys = py::reinterpret_borrow<py::array_t<int64_t>>(obj);
  if (keys.ndim() != 1 || !(keys.flags() & py::array::c_style)) throw py::type_error("keys: expected a C-contiguous 1-D array");
  return keys;
}

}  // namespace

void bind_persistent(py::module_& m) {
  py::class_<PersistentTier>(m, "PersistentTier",
                             "Rows of every table of a store in one RocksDB database (batched MultiGet).")
      .def(py::init([](const std::string& path, bool create_if_missing, int64_t block_cache_bytes, const std::string& secondary_path) {
             py::gil_scoped_release release;  // opening replays the MANIFEST and WAL
             return new PersistentTier(PersistentTierOptions{path, create_if_missing, block_cache_bytes, 10, secondary_path});
           }),
           py::arg("path"), py::arg("create_if_missing") = false, py::arg("block_cache_bytes") = 64ll << 20,
           py::arg("secondary_path") = "",
           "Opens the database at path: as the primary (the one writer), or with secondary_path as a read-only "
           "secondary keeping its info log there. RuntimeError with RocksDB's status when it cannot.")
      .def(
          "put",
          [](PersistentTier& tier, uint32_t table, py::handle keys_obj, py::handle rows_obj) {
            auto keys = require_keys(keys_obj);
            auto rows = require_bytes_rows(rows_obj, "rows", keys.shape(0), false);
            const int64_t row_bytes = rows.shape(1) * rows.itemsize();
            const auto* data = static_cast<const uint8_t*>(rows.data());
            const int64_t n = keys.shape(0);
            const int64_t* key_data = keys.data();
            py::gil_scoped_release release;  // RocksDB errors surface as RuntimeError
            tier.put(table, key_data, data, n, row_bytes);
          },
          py::arg("table"), py::arg("keys"), py::arg("rows"),
          "Writes rows (C-contiguous (n, dim), the table's storage dtype) in one atomic batch.")
      .def(
          "erase",
          [](PersistentTier& tier, uint32_t table, py::handle keys_obj) {
            auto keys = require_keys(keys_obj);
            return tier.erase(table, keys.data(), keys.shape(0));
          },
          py::arg("table"), py::arg("keys"), "Erases keys; returns how many existed.")
      .def(
          "multi_get",
          [](const PersistentTier& tier, uint32_t table, py::handle keys_obj, py::handle out_obj, py::handle found_obj) {
            auto keys = require_keys(keys_obj);
            auto out = require_bytes_rows(out_obj, "out", keys.shape(0), true);
            if (!py::isinstance<py::array_t<uint8_t>>(found_obj)) throw py::type_error("found: expected a uint8 array");
            auto found = py::reinterpret_borrow<py::array_t<uint8_t>>(found_obj);
            if (found.ndim() != 1 || found.shape(0) != keys.shape(0)) throw py::value_error("found: expected shape (n,)");
            const int64_t row_bytes = out.shape(1) * out.itemsize();
            auto* out_data = static_cast<uint8_t*>(out.mutable_data());
            uint8_t* found_data = found.mutable_data();
            const int64_t n = keys.shape(0);
            const int64_t* key_data = keys.data();
            py::gil_scoped_release release;
            return tier.multi_get(table, key_data, n, out_data, found_data, row_bytes);
          },
          py::arg("table"), py::arg("keys"), py::arg("out"), py::arg("found"),
          "Reads rows into out ((n, dim), storage dtype); found[i] = 1 where present. Returns the count found.")
      .def(
          "scan",
          [](const PersistentTier& tier, uint32_t table, int64_t dim, py::object dtype, int64_t chunk, py::function fn) {
            py::dtype dt = py::dtype::from_args(dtype);
            const int64_t row_bytes = dim * dt.itemsize();
            tier.scan(table, row_bytes, chunk, [&](const int64_t* keys, const uint8_t* rows, int64_t n) {
              py::array_t<int64_t> k(n, keys);
              py::array r(dt, {n, dim}, {row_bytes, static_cast<int64_t>(dt.itemsize())}, rows);
              fn(k, r);
            });
          },
          py::arg("table"), py::arg("dim"), py::arg("dtype"), py::arg("chunk"), py::arg("fn"),
          "Calls fn(keys, rows) over every row of a table, in chunks (copies).")
      .def("compact", &PersistentTier::compact, py::call_guard<py::gil_scoped_release>(),
           "Compacts the whole database (after a bulk load).")
      .def("count", &PersistentTier::count,
           py::arg("table"), "Rows held for a table.")
      .def_property_readonly("disk_bytes", &PersistentTier::disk_bytes, "Live data on disk, in bytes (estimate).")
      .def(
          "verify_file_checksums",
          [](const PersistentTier& tier, int threads) {
            VerifiedFiles verified;
            {
              py::gil_scoped_release release;
              verified = tier.verify_file_checksums(threads);
            }
            return py::make_tuple(verified.files, verified.bytes);
          },
          py::arg("threads") = 1,
          "Reads every live table file (threads files at once) against its whole-file CRC32C in RocksDB's MANIFEST; "
          "returns (files, bytes). RuntimeError naming the file and both checksums on a mismatch, or a file written "
          "without a checksum.")
      .def("catch_up", &PersistentTier::catch_up, py::call_guard<py::gil_scoped_release>(),
           "A secondary: reads the primary's writes made since it opened or last caught up.")
      .def_property_readonly("sequence_number", &PersistentTier::sequence_number,
                             "Sequence number of the last write this instance sees (a secondary's moves on catch_up).")
      .def_property_readonly("is_secondary", &PersistentTier::is_secondary, "True when opened as a read-only secondary.");
}

}  // namespace tritonrec
