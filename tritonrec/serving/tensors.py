"""Moving numeric arrays between Triton's Python backend and the library.

Inputs: ``np.from_dlpack(pb_tensor)`` (zero-copy, read-only) works with numpy 1 and 2. Outputs go by
DLPack without a copy, through a capsule made by ``tritonrec._native.host_dlpack_capsule``, not
numpy's own: the Python backend renames a capsule it takes "used_dlpack" where the DLPack protocol
says "used_dltensor", and numpy's capsule destructor then fails ("PyCapsule_GetPointer called with
incorrect name" in the server's log under numpy 2; a dead stub under numpy 1.26). Our capsule, like
torch's, treats any new name as taken. (``pb_utils.Tensor(name, array)`` is no way round: under
numpy 2 it fails every response with "output tensor shape does not match size of output".)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tritonrec import _native
from tritonrec.serving.requests import RequestError


def input_array(tensor: Any) -> np.ndarray:
    """A read-only host numpy view of a numeric ``pb_utils.Tensor`` (no copy)."""
    return np.from_dlpack(tensor)


NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


def check_string_inputs(string_inputs: set[str], allow_under_numpy_2: bool) -> None:
    """Refuses BYTES inputs where the Python stub cannot read them: under numpy 2, the stub of
    Triton 2.51 (the nvidia-pytriton 0.7.0 wheel's) builds every BYTES input with a pybind11 that
    predates numpy 2, misreads it and dies on the first request (seen on this project's GPU
    machine). ``allow_under_numpy_2`` is for a stub built for numpy 2.

    Raises:
        ValueError: the refusal, naming the inputs and the way out.
    """
    if string_inputs and NUMPY_2 and not allow_under_numpy_2:
        raise ValueError(
            f"string (BYTES) inputs {sorted(string_inputs)} need numpy < 2 in the Python stub's environment "
            f"(numpy {np.__version__} here): Triton 2.51's Python stub reads BYTES tensors with a pybind11 that "
            "predates numpy 2 and dies on the first request. Install numpy<2, or set the parameter "
            "'bytes_inputs_under_numpy2' to 'true' for a stub built for numpy 2"
        )


def input_reader(string_inputs: set[str], numeric: Callable[[Any], Any] = input_array) -> Callable[[Any], Any]:
    """``numeric`` (default :func:`input_array`; :func:`device_input_array` on a GPU instance) for
    numeric inputs; the inputs named in ``string_inputs`` (BYTES, which DLPack cannot carry) as the
    host object array of bytes that ``as_numpy()`` gives."""
    if not string_inputs:
        return numeric
    return lambda tensor: tensor.as_numpy() if tensor.name() in string_inputs else numeric(tensor)


def output_tensor(pb_utils: Any, name: str, array: np.ndarray) -> Any:
    """A ``pb_utils.Tensor`` named ``name`` viewing a C-contiguous host array (no copy).

    The tensor keeps ``array`` alive until Triton has taken the response; the caller must not
    write to it after this call.
    """
    if array.dtype == object:  # strings: BYTES, which DLPack cannot carry
        return pb_utils.Tensor(name, array)
    return pb_utils.Tensor.from_dlpack(name, _native.host_dlpack_capsule(np.ascontiguousarray(array)))


def device_input_array(tensor: Any) -> Any:
    """A ``pb_utils.Tensor`` as a cupy array on the current device (DLPack when it is in device
    memory; copied there when Triton hands it over in host memory)."""
    import cupy  # noqa: PLC0415 - GPU instances only

    return cupy.from_dlpack(tensor) if not tensor.is_cpu() else cupy.asarray(input_array(tensor))


def device_output_tensor(pb_utils: Any, name: str, array: Any) -> Any:
    """A ``pb_utils.Tensor`` named ``name`` over a C-contiguous cupy array (no copy).

    Through torch's DLPack capsule: the stub misreads cupy 14's ``toDlpack()`` capsule, and with
    the cupy array itself its capsule's destructor fails ("PyCapsule_GetPointer called with
    incorrect name"), as numpy's does (see :func:`output_tensor`).
    """
    import torch  # noqa: PLC0415 - GPU instances only
    from torch.utils.dlpack import to_dlpack  # noqa: PLC0415

    return pb_utils.Tensor.from_dlpack(name, to_dlpack(torch.as_tensor(array, device=f"cuda:{array.device.id}")))


def respond(pb_utils: Any, requests: list[Any], execute: Callable[[list[dict[str, Any]]], list[Any]],
            to_input: Callable[[Any], Any], to_outputs: Callable[[dict[str, Any]], list[Any]], what: str) -> list[Any]:
    """One ``execute`` of a tritonrec backend: inputs of every request -> ``execute`` -> responses.

    Args:
        pb_utils: the ``triton_python_backend_utils`` module.
        requests: the ``pb_utils.InferenceRequest`` objects of this execute.
        execute: the library's batched call: per request input name -> array, to per request
            either output name -> array or the exception that rejects it.
        to_input: a ``pb_utils.Tensor`` -> the array ``execute`` takes (e.g. :func:`input_array`).
        to_outputs: one request's outputs -> its ``pb_utils.Tensor`` list.
        what: names the step in the error of a fault of the library itself ("transform").

    Returns:
        One ``InferenceResponse`` per request: its outputs, or an error naming what was wrong,
        with a code: ``INVALID_ARG`` for a :class:`RequestError` (the client's fault: gRPC
        ``INVALID_ARGUMENT``, HTTP 400), ``INTERNAL`` for anything else (ours: HTTP 500). A fault
        of the library fails this execute's requests; the model keeps serving.
    """
    # request.inputs() once per request: get_input_tensor_by_name would rebuild it per input.
    batch = [{tensor.name(): to_input(tensor) for tensor in request.inputs()} for request in requests]
    try:
        results = execute(batch)
    except Exception as e:  # noqa: BLE001 - reported to the client, the server serves on
        error = internal_error(pb_utils, e, what)
        return [pb_utils.InferenceResponse(error=error) for _ in requests]
    return [
        pb_utils.InferenceResponse(error=triton_error(pb_utils, r, what)) if isinstance(r, Exception)
        else pb_utils.InferenceResponse(output_tensors=to_outputs(r))
        for r in results
    ]


def triton_error(pb_utils: Any, error: Exception, what: str) -> Any:
    """The ``pb_utils.TritonError`` of one request's failure: ``INVALID_ARG`` with the message of
    a :class:`RequestError` (the request was at fault), else ``INTERNAL`` naming the step
    (``what``) and the exception's type."""
    if isinstance(error, RequestError):
        return pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG)
    return internal_error(pb_utils, error, what)


def internal_error(pb_utils: Any, error: Exception, what: str) -> Any:
    """``INTERNAL``: ``"<what> failed: <type>: <message>"``, a fault of ours in step ``what``."""
    return pb_utils.TritonError(f"{what} failed: {type(error).__name__}: {error}", pb_utils.TritonError.INTERNAL)
