"""Type stubs of ``tritonrec._native``, the host helpers of the transform and the serving core (C++,
csrc/native_bindings.cpp, pybind11).

Kept apart from ``embedding_cache._core`` so that ``tritonrec.transform`` and ``embedding_cache`` do
not import each other. Every array is a numpy array in host memory, C-contiguous with the dtype
stated.
"""

from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

def key_table_lookup(slots: npt.NDArray[np.int64], max_probe: int, keys: npt.NDArray[np.int64], out: npt.NDArray[np.int64]) -> None:
    """Codes of a block of keys in a transform plan's key table (host memory, GIL released).

    slots: int64 (capacity, 2), rows [key, column << 32 | code]; max_probe: the table's longest
    displacement, in slots; keys: int64 (rows, columns), key (i, j) looked up in column j;
    out: int64 (rows, columns), written with the code or -1 where absent.
    """

def hash_strings(values: npt.NDArray[np.object_]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint8]]:
    """pandas' hash (``pandas.util.hash_array``, no index) of each string of a host object array.

    values: any shape, holding str, UTF-8 bytes or None / NaN (null). Returns (hashes uint64,
    nulls uint8) of the same shape; a null hashes to 2**64 - 1. ValueError for bytes that are not
    UTF-8 (naming the flat index), TypeError for another element type.
    """

def host_dlpack_capsule(array: npt.NDArray[Any]) -> Any:
    """A DLPack "dltensor" capsule viewing a C-contiguous host array (bool, int, uint or float), no
    copy; it keeps ``array`` alive until the consumer's deleter runs and accepts any name a consumer
    gives it (Triton's Python backend renames taken capsules "used_dlpack")."""
