// pybind11 bindings of tritonrec._native: the host helpers the transform and the serving core share
// (the key-table probe, pandas' string hash, zero-copy DLPack export of host arrays). Apart from
// embedding_cache._core so that tritonrec.transform and embedding_cache do not import each other.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <string>
#include <vector>

#include "transform/key_table.hpp"
#include "transform/string_hash.hpp"

namespace py = pybind11;

namespace tritonrec {
void bind_dlpack(py::module_& m);
}  // namespace tritonrec

PYBIND11_MODULE(_native, m) {
  m.doc() = "Host helpers of tritonrec's transform and serving core (C++).";
  m.attr("__version__") = TRITONREC_VERSION;
  tritonrec::bind_dlpack(m);

  m.def(
      "key_table_lookup",
      [](py::array slots, int64_t max_probe, py::array keys, py::array out) {
        auto require = [](const py::array& a, const char* name, int ndim) {
          if (!py::isinstance<py::array_t<int64_t>>(a) || a.ndim() != ndim ||
              !(a.flags() & py::array::c_style)) {
            throw py::type_error(std::string(name) + ": expected a C-contiguous int64 array of " +
                                 std::to_string(ndim) + " dimensions");
          }
        };
        require(slots, "slots", 2);
        require(keys, "keys", 2);
        require(out, "out", 2);
        const int64_t capacity = slots.shape(0);
        if (slots.shape(1) != 2 || capacity <= 0 || (capacity & (capacity - 1)) != 0) {
          throw py::value_error("slots: expected shape (power of two, 2)");
        }
        if (max_probe < 0 || max_probe >= capacity) {
          throw py::value_error("max_probe: expected 0 <= max_probe < capacity");
        }
        if (out.shape(0) != keys.shape(0) || out.shape(1) != keys.shape(1)) {
          throw py::value_error("out: expected the shape of keys");
        }
        if (!out.writeable()) throw py::value_error("out: expected a writeable array");
        tritonrec::KeyTableView table{static_cast<const int64_t*>(slots.data()), capacity, max_probe};
        const auto* key_data = static_cast<const int64_t*>(keys.data());
        auto* out_data = static_cast<int64_t*>(out.mutable_data());
        const int64_t rows = keys.shape(0), columns = keys.shape(1);
        py::gil_scoped_release release;
        tritonrec::key_table_lookup(table, key_data, rows, columns, out_data);
      },
      py::arg("slots"), py::arg("max_probe"), py::arg("keys"), py::arg("out"),
      R"doc(Codes of a block of keys in a transform plan's key table (host memory, GIL released).

Args:
    slots: int64 (capacity, 2) C-contiguous table, rows [key, column << 32 | code].
    max_probe: the table's longest displacement, in slots.
    keys: int64 (rows, columns) C-contiguous; key (i, j) is looked up in column j.
    out: int64 (rows, columns) C-contiguous, written with the code or -1 where absent.
)doc");

  m.def(
      "hash_strings",
      [](py::array values) {
        if (values.dtype().kind() != 'O') {
          throw py::type_error("values: expected an object array of str or bytes, got dtype " + std::string(py::str(values.dtype())));
        }
        py::array flat = values.attr("reshape")(-1);
        const py::ssize_t n = flat.shape(0);
        py::array_t<uint64_t> hashes(n);
        py::array_t<uint8_t> nulls(n);
        auto* h = hashes.mutable_data();
        auto* z = nulls.mutable_data();
        PyObject** items = static_cast<PyObject**>(flat.mutable_data());
        const py::ssize_t stride = flat.strides(0) / static_cast<py::ssize_t>(sizeof(PyObject*));
        for (py::ssize_t i = 0; i < n; ++i) {
          PyObject* item = items[i * stride];
          z[i] = 0;
          if (PyUnicode_Check(item)) {
            Py_ssize_t size = 0;
            const char* data = PyUnicode_AsUTF8AndSize(item, &size);
            if (data == nullptr) {  // lone surrogates: not encodable
              PyErr_Clear();
              throw py::value_error("value " + std::to_string(i) + ": a str that is not valid Unicode (it cannot be encoded as UTF-8)");
            }
            h[i] = tritonrec::pandas_string_hash(reinterpret_cast<const uint8_t*>(data), static_cast<size_t>(size));
          } else if (PyBytes_Check(item)) {
            const auto* data = reinterpret_cast<const uint8_t*>(PyBytes_AS_STRING(item));
            const auto size = static_cast<size_t>(PyBytes_GET_SIZE(item));
            if (!tritonrec::is_utf8(data, size)) {
              throw py::value_error("value " + std::to_string(i) + ": bytes that are not valid UTF-8");
            }
            h[i] = tritonrec::pandas_string_hash(data, size);
          } else if (item == Py_None || (PyFloat_Check(item) && std::isnan(PyFloat_AS_DOUBLE(item)))) {
            h[i] = tritonrec::kPandasNullHash;
            z[i] = 1;
          } else {
            throw py::type_error("value " + std::to_string(i) + ": expected str, bytes or None, got " +
                                 std::string(Py_TYPE(item)->tp_name));
          }
        }
        std::vector<py::ssize_t> shape(values.shape(), values.shape() + values.ndim());
        return py::make_tuple(hashes.reshape(shape), nulls.reshape(shape));
      },
      py::arg("values"),
      R"doc(pandas' hash of each string of an object array (pandas.util.hash_array, no index).

Args:
    values: object array of any shape holding str, bytes (UTF-8) or None / NaN (null).

Returns:
    (hashes, nulls): uint64 and uint8 arrays of the same shape; a null hashes to 2**64 - 1.

Raises:
    ValueError: bytes that are not valid UTF-8 (the message gives the flat index).
    TypeError: an element of another type.
)doc");
}
