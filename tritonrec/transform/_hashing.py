"""Hashes that the plan must reproduce bit for bit, in numpy (or cupy, through ``xp``).

NVTabular 23.08 on the CPU hashes out-of-vocabulary values with ``pandas.util.hash_pandas_object``
with ``index=True``: the hash of a value is combined with the hash of its row's index label. For a
DataFrame built from a request that label is the row's position in the request, so the plan takes
the position of every row (``row_index``) and reproduces pandas' combination exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def pandas_hash_array(values: Any, xp: Any = np) -> Any:
    """``pandas.util.hash_array`` for numeric arrays (any shape), as uint64.

    Args:
        values: int, uint, float or bool array of itemsize <= 8 (host numpy or device cupy).
        xp: the array module of ``values``.

    Returns:
        uint64 array of the same shape: pandas' per-element hash (splitmix64 finaliser of the
        value's bits, zero-extended to 64 bits).
    """
    values = xp.asarray(values)
    if values.dtype == np.bool_:
        bits = values.astype(np.uint64)
    elif values.dtype.kind in "iuf" and values.dtype.itemsize <= 8:
        bits = values.view(f"u{values.dtype.itemsize}").astype(np.uint64)
    else:
        raise TypeError(f"cannot reproduce pandas' hash of dtype {values.dtype}: expected a numeric dtype")
    bits ^= bits >> np.uint64(30)
    bits *= _MIX_1
    bits ^= bits >> np.uint64(27)
    bits *= _MIX_2
    bits ^= bits >> np.uint64(31)
    return bits


def combine_with_index(value_hash: Any, index_hash: Any) -> Any:
    """pandas' ``combine_hash_arrays([value_hash, index_hash], 2)`` (CPython's tuple hash), uint64.

    Args:
        value_hash: uint64 array (n, ...) of value hashes.
        index_hash: uint64 array broadcastable to ``value_hash`` of row-index hashes.
    """
    out = value_hash ^ np.uint64(0x345678)
    out *= np.uint64(1000003)
    out ^= index_hash
    out *= np.uint64(1000003 + 82520 + 2 + 2)
    out += np.uint64(97531)
    return out


class IndexHashCache:
    """Hashes of row positions 0..n-1, computed once and grown on demand (host memory)."""

    def __init__(self, initial: int = 4096) -> None:
        self._hashes = pandas_hash_array(np.arange(initial, dtype=np.int64))

    def get(self, row_index: np.ndarray) -> np.ndarray:
        """uint64 (n,) hashes of the int64 (n,) row positions ``row_index`` (all >= 0)."""
        if row_index.size and int(row_index.max()) >= self._hashes.size:
            size = max(int(row_index.max()) + 1, 2 * self._hashes.size)
            self._hashes = pandas_hash_array(np.arange(size, dtype=np.int64))
        return self._hashes[row_index]
