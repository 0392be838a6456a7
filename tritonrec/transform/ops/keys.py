"""Keys and hashes of category values: how Categorify and TargetEncode find a value in their table."""

from __future__ import annotations

from typing import Any

import numpy as np

from tritonrec.transform._hashing import IndexHashCache, pandas_hash_array
from tritonrec.transform._table import HASH_NAME, KeyTable
from tritonrec.transform.ops.base import BadValueError, IncompatibleStepError, UnsupportedOpError


def numeric_keys(values: Any, nulls: Any, vocab_dtype: np.dtype, xp: Any) -> Any:
    """int64 table keys of numeric category values, cast to ``vocab_dtype`` as NVTabular casts
    them before its merge; float keys are the float64 bits, with -0.0 as 0.0 (they merge as equal).
    ``nulls`` (bool, or None) marks values whose key does not matter (set to 0)."""
    if nulls is not None:
        values = xp.where(nulls, values.dtype.type(0), values)
    keys = values.astype(vocab_dtype, copy=False)
    if vocab_dtype.kind == "f":
        return (keys.astype(np.float64) + 0.0).view(np.int64)
    return keys.astype(np.int64, copy=False)


INDEX_HASHES = IndexHashCache()
"""pandas' hashes of row positions, shared by every step that hashes with the row's index."""


def index_hashes(row_index: Any, xp: Any) -> Any:
    """uint64 (n,) pandas hashes of the int64 (n,) row positions, in ``xp``'s memory."""
    return xp.asarray(INDEX_HASHES.get(np.asarray(row_index)))


def value_hashes(values: Any, xp: Any) -> Any:
    """pandas' per-value hash (uint64, the shape of ``values``) of a numeric or string block."""
    return string_hashes(values)[0] if values.dtype == object else pandas_hash_array(values, xp)


def category_keys(values: Any, key_dtype: np.dtype, xp: Any) -> tuple[Any, Any, Any]:
    """Table keys of an (n, k) block of category values, as Categorify and TargetEncode look them up.

    Returns:
        ``(keys, nulls, string_hashes)``: int64 keys (numeric values cast to ``key_dtype``, see
        :func:`numeric_keys`; for strings, pandas' hash of the value); the null mask (None for an
        integer block); and the strings' pandas hashes (uint64), None for a numeric block.
    """
    if key_dtype.kind == "O":
        hashes, nulls = string_hashes(values)
        return hashes.view(np.int64), nulls, hashes
    nulls = xp.isnan(values) if values.dtype.kind == "f" else None
    return numeric_keys(values, nulls, key_dtype, xp), nulls, None


def string_hashes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pandas' hashes (uint64) of an object (n, k) block of str / bytes / None, and its nulls (bool).

    Raises:
        BadValueError: bytes that are not UTF-8, or a value that is not a string, naming its
            column (position in the block) and row.
    """
    from tritonrec import _native  # noqa: PLC0415

    hashes = np.empty(values.shape, dtype=np.uint64)
    nulls = np.empty(values.shape, dtype=np.uint8)
    for j in range(values.shape[1]):
        try:
            hashes[:, j], nulls[:, j] = _native.hash_strings(values[:, j])
        except (TypeError, ValueError) as e:  # "value <row>: <reason>"
            where, _, reason = str(e).partition(": ")
            raise BadValueError(j, int(where.split()[-1]), reason) from None
    return hashes, nulls.view(np.bool_)


def saved_table(kind: str, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> KeyTable:
    """The key table of a saved table-backed step, refused when built with another slot hash."""
    if params["table_hash"] != HASH_NAME:
        raise IncompatibleStepError(f"{kind} table built with hash {params['table_hash']!r}; this tritonrec probes with {HASH_NAME!r}: re-export the plan")
    return KeyTable(arrays["slots"], params["max_probe"])


def table_keys(values: np.ndarray, key_dtype: np.dtype, column: str, op_name: str) -> np.ndarray:
    """int64 table keys of a column's categories: the value, float64 bits, or pandas' string hash."""
    if key_dtype.kind == "O":
        from tritonrec import _native  # noqa: PLC0415

        hashes = _native.hash_strings(np.asarray(values, dtype=object))[0]
        if np.unique(hashes).size != hashes.size:
            raise UnsupportedOpError(op_name, column, "two category strings share a 64-bit hash")
        return hashes.view(np.int64)
    if key_dtype.kind == "f":
        return (np.asarray(values).astype(np.float64) + 0.0).view(np.int64)
    return np.asarray(values).astype(np.int64)


def category_table(params: list[dict[str, Any]], key_dtype: np.dtype, op_name: str, values: list[np.ndarray]) -> KeyTable:
    """One key table for a group's columns: (column j, key of each of ``params[j]["keys"]``) ->
    the matching entry of ``values[j]`` (int64)."""
    keys = [table_keys(p["keys"], key_dtype, p["column"], op_name) for p in params]
    columns = [np.full(k.shape[0], j, dtype=np.int64) for j, k in enumerate(keys)]
    return KeyTable.build(np.concatenate(columns), np.concatenate(keys), np.concatenate(values))
