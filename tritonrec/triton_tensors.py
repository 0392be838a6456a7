"""Moving numeric arrays between Triton's Python backend and the library.

Inputs: ``np.from_dlpack(pb_tensor)`` (zero-copy, read-only) works with numpy 1 and 2. Outputs:
``pb_utils.Tensor.from_dlpack`` works with numpy 2 but kills the stub with numpy 1.26 (the capsule
comes back renamed and numpy's deleter rejects it), while ``pb_utils.Tensor(name, array)`` fails
every response with numpy 2 ("output tensor shape does not match size of output"). So outputs go
by DLPack under numpy 2 and by copy under numpy 1, checked on this repository's two environments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


def input_array(tensor: Any) -> np.ndarray:
    """A read-only host numpy view of a ``pb_utils.Tensor`` (no copy)."""
    return np.from_dlpack(tensor)


def output_tensor(pb_utils: Any, name: str, array: np.ndarray) -> Any:
    """A ``pb_utils.Tensor`` named ``name`` for a C-contiguous host array the caller owns."""
    if NUMPY_2:
        return pb_utils.Tensor.from_dlpack(name, array)
    return pb_utils.Tensor(name, array)


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
        One ``InferenceResponse`` per request: its outputs, or an error naming what was wrong.
        A fault of the library fails this execute's requests; the model keeps serving.
    """
    # request.inputs() once per request: get_input_tensor_by_name would rebuild it per input.
    batch = [{tensor.name(): to_input(tensor) for tensor in request.inputs()} for request in requests]
    try:
        results = execute(batch)
    except Exception as e:  # noqa: BLE001 - reported to the client, the server serves on
        message = f"{what} failed: {type(e).__name__}: {e}"
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError(message)) for _ in requests]
    return [
        pb_utils.InferenceResponse(error=pb_utils.TritonError(str(r))) if isinstance(r, Exception)
        else pb_utils.InferenceResponse(output_tensors=to_outputs(r))
        for r in results
    ]
