"""numpy dtype <-> Triton data type names (``config.pbtxt`` ``TYPE_*`` and tensor datatypes)."""

from __future__ import annotations

import numpy as np

_TRITON_BY_NUMPY = {
    "bool": "BOOL",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "object": "STRING",  # config.pbtxt's TYPE_STRING; BYTES on the wire: str or bytes, UTF-8
}
_NUMPY_BY_TRITON = {**{v: k for k, v in _TRITON_BY_NUMPY.items()}, "BYTES": "object"}


def triton_dtype(dtype: np.dtype | str) -> str:
    """Triton's datatype name (``"INT64"``) for a numpy dtype; ValueError when Triton has none."""
    name = np.dtype(dtype).name
    try:
        return _TRITON_BY_NUMPY[name]
    except KeyError:
        raise ValueError(f"numpy dtype {name} has no Triton equivalent") from None


def wire_dtype(dtype: np.dtype | str) -> str:
    """The datatype of a tensor of ``dtype`` in a request: as :func:`triton_dtype`, but ``BYTES``
    for strings (object arrays), which config.pbtxt calls ``TYPE_STRING``."""
    return "BYTES" if np.dtype(dtype) == np.dtype(object) else triton_dtype(dtype)


def numpy_dtype(triton: str) -> np.dtype:
    """numpy dtype for a Triton datatype name, with or without the ``TYPE_`` prefix."""
    key = triton.removeprefix("TYPE_")
    try:
        return np.dtype(_NUMPY_BY_TRITON[key])
    except KeyError:
        raise ValueError(f"Triton datatype {triton!r} has no numpy equivalent here") from None
