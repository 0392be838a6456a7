// pybind11 bindings of embedding_cache._core.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "device/device_info.hpp"

namespace py = pybind11;

namespace tritonrec {
void bind_host_store(py::module_& m);
void bind_gpu_cache(py::module_& m);
#if TRITONREC_HAS_ROCKSDB
void bind_persistent(py::module_& m);
#endif
}  // namespace tritonrec

PYBIND11_MODULE(_core, m) {
  m.doc() = "C++/CUDA core of embedding_cache.";

  m.attr("__version__") = TRITONREC_VERSION;
  m.attr("has_cuda") = py::bool_(TRITONREC_HAS_CUDA);

  m.attr("has_rocksdb") = py::bool_(TRITONREC_HAS_ROCKSDB);
  tritonrec::bind_host_store(m);
  tritonrec::bind_gpu_cache(m);
#if TRITONREC_HAS_ROCKSDB
  tritonrec::bind_persistent(m);
#endif

  m.def(
      "cuda_device_count",
      []() {
        tritonrec::DeviceCount found = tritonrec::cuda_device_count();
        return py::make_tuple(found.count, found.error.empty() ? py::object(py::none())
                                                               : py::object(py::str(found.error)));
      },
      R"doc(Number of CUDA devices the runtime sees.

Returns:
    (count, error): count is an int >= 0; error is None on success, else a one-line reason
    (no driver, no device, or a build without CUDA), in which case count is 0.
)doc");
}
