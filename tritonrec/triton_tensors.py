"""Moving numeric arrays between Triton's Python backend and the library.

Inputs: ``np.from_dlpack(pb_tensor)`` (zero-copy, read-only) works with numpy 1 and 2. Outputs:
``pb_utils.Tensor.from_dlpack`` works with numpy 2 but kills the stub with numpy 1.26 (the capsule
comes back renamed and numpy's deleter rejects it), while ``pb_utils.Tensor(name, array)`` fails
every response with numpy 2 ("output tensor shape does not match size of output"). So outputs go
by DLPack under numpy 2 and by copy under numpy 1, checked on this repository's two environments.
"""

from __future__ import annotations

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
