"""List (multi-hot) columns as Triton tensors: two tensors per column, in one of two layouts.

``padded`` (models that Triton batches, ``max_batch_size`` > 0): ``<column>__values`` [batch, width]
padded rows and ``<column>__lengths`` INT32 [batch, 1]. ``offsets`` (``max_batch_size`` 0):
``<column>__values`` flat [nnz] and ``<column>__offsets`` INT32 [n + 1]. Host (numpy) or device
(cupy, ``xp``) arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tritonrec.serving.requests import RequestError
from tritonrec.serving.specs import TensorSpec
from tritonrec.transform.plan import ListColumn, check_offsets

LIST_LAYOUTS = ("padded", "offsets")


def list_layout_for(max_batch_size: int) -> str:
    """The list convention of a model: padded values + lengths when Triton batches it, flat values +
    offsets (NVTabular's) with ``max_batch_size`` 0 (Triton cannot batch flat values and offsets)."""
    return "padded" if max_batch_size else "offsets"


def check_list_layout(list_layout: str, max_batch_size: int) -> None:
    """Raises ValueError for a list layout that is not one of :data:`LIST_LAYOUTS`, or flat
    offsets with Triton batching (which cannot batch them)."""
    if list_layout not in LIST_LAYOUTS:
        raise ValueError(f"list_layout {list_layout!r}: expected one of {LIST_LAYOUTS}")
    if list_layout == "offsets" and max_batch_size:
        raise ValueError(f"list_layout 'offsets' with max_batch_size {max_batch_size}: flat values and offsets cannot be "
                         "batched by Triton; use max_batch_size 0, or list_layout 'padded'")


def list_tensor_names(column: str, list_layout: str) -> tuple[str, str]:
    """The two tensors of list column ``column``: ``<column>__values`` and ``<column>__lengths``
    (``padded``: [batch, width] values, zeros past each row's length, and INT32 [batch, 1] lengths)
    or ``<column>__offsets`` (``offsets``: flat [nnz] values and INT32 [n + 1] offsets)."""
    return f"{column}__values", f"{column}__{'lengths' if list_layout == 'padded' else 'offsets'}"


def list_tensor_specs(column: str, dtype: np.dtype, list_layout: str) -> list[TensorSpec]:
    values, second = list_tensor_names(column, list_layout)
    if list_layout == "padded":
        return [TensorSpec(values, dtype, (-1,)), TensorSpec(second, np.dtype(np.int32), (1,))]
    return [TensorSpec(values, dtype, (-1,), batched=False), TensorSpec(second, np.dtype(np.int32), (-1,), batched=False)]


def check_list_tensors(column: str, values: Any, second: Any, list_layout: str, xp: Any = np) -> int:
    """Checks the two tensors of list column ``column`` in ``list_layout``; returns its rows.

    Raises:
        RequestError: naming the tensor: a wrong shape, a length below 0 or over the padded width,
            or offsets that do not start at 0, decrease or do not end at the number of values.
    """
    values_name, second_name = list_tensor_names(column, list_layout)
    if list_layout == "padded":
        if values.ndim != 2:
            raise RequestError(f"input {values_name!r} has shape {list(values.shape)}: expected [batch, width] (rows padded to one width)")
        if second.ndim != 2 or second.shape[1] != 1 or second.shape[0] != values.shape[0]:
            raise RequestError(f"input {second_name!r} has shape {list(second.shape)}: expected [{values.shape[0]}, 1] "
                               f"(one length per row of {values_name!r})")
        lengths = second.reshape(-1)
        width = int(values.shape[1])
        bad = (lengths < 0) | (lengths > width)
        if lengths.shape[0] and bool(bad.any()):
            row = int(xp.argmax(bad))
            raise RequestError(f"input {second_name!r}: row {row} has length {int(lengths[row])}: expected 0 .. {width} "
                               f"(the width of {values_name!r})")
        return int(values.shape[0])
    if values.ndim != 1:
        raise RequestError(f"input {values_name!r} has shape {list(values.shape)}: expected [nnz] (all rows' values, flat)")
    try:
        offsets = check_offsets(column, second, int(values.shape[0]), xp)
    except ValueError as e:
        raise RequestError(f"input {second_name!r}: {e}") from None
    return int(offsets.shape[0]) - 1


def check_list_rows(tensors: Mapping[str, Any], columns: Any, list_layout: str, rows: int | None, what: str,
                    max_batch_size: int, xp: Any = np) -> int:
    """The end of a request check: each list column's tensors checked, their rows equal to the
    other inputs' ``rows`` (None: no other input), and no more than ``max_batch_size`` (0: any).

    Raises:
        RequestError: naming the tensor, the ``what`` + column whose rows differ, or the batch size.
    """
    for column in columns:
        values_name, second = list_tensor_names(column, list_layout)
        list_rows = check_list_tensors(column, tensors[values_name], tensors[second], list_layout, xp)
        if rows is None:
            rows = list_rows
        elif list_rows != rows:
            raise RequestError(f"{what} {column!r} has {list_rows} rows, other inputs have {rows}")
    rows = rows or 0
    if max_batch_size and rows > max_batch_size:
        raise RequestError(f"request has {rows} rows: the maximum batch size is {max_batch_size}")
    return rows


def list_from_tensors(column: str, values: Any, second: Any, list_layout: str, xp: Any = np) -> ListColumn:
    """A checked list column's two tensors -> :class:`ListColumn` (int64 offsets)."""
    if list_layout == "padded":
        return padded_to_list(column, values, second, xp)
    return ListColumn(values, second.astype(np.int64))


def list_to_tensors(column: ListColumn, list_layout: str, xp: Any = np) -> tuple[Any, Any]:
    """:func:`list_from_tensors` reversed: a ListColumn -> its two tensors in ``list_layout``
    (padded values and int32 [n, 1] lengths, or flat values and int32 offsets)."""
    if list_layout == "padded":
        return list_to_padded(column, xp)
    return xp.ascontiguousarray(column.values), column.offsets.astype(np.int32)


def merge_list_requests(parts: Sequence[ListColumn], xp: Any = np) -> ListColumn:
    """Several requests' rows of one list column, in order, as one column."""
    if len(parts) == 1:
        return parts[0]
    ends = np.cumsum([0] + [int(p.offsets[-1]) for p in parts[:-1]])
    offsets = xp.concatenate([parts[0].offsets[:1]] + [p.offsets[1:] + int(e) for p, e in zip(parts, ends)])
    return ListColumn(xp.concatenate([p.values for p in parts]), offsets)


def padded_to_list(name: str, values: Any, lengths: Any, xp: Any = np) -> ListColumn:
    """[batch, width] padded values and [batch, 1] lengths (each in 0 .. width, as
    :func:`check_list_tensors` checks) of list column ``name`` -> ListColumn."""
    lengths = lengths.reshape(-1).astype(np.int64)
    width = int(values.shape[1])
    mask = xp.arange(width, dtype=np.int64)[None, :] < lengths[:, None]
    offsets = xp.zeros(lengths.shape[0] + 1, dtype=np.int64)
    xp.cumsum(lengths, out=offsets[1:])
    return ListColumn(values[mask], offsets)


def list_to_padded(column: ListColumn, xp: Any = np) -> tuple[Any, Any]:
    """ListColumn -> ([n, width] values padded with zeros, width = the longest row; int32 [n, 1] lengths)."""
    lengths = column.lengths
    n = lengths.shape[0]
    width = int(lengths.max()) if n else 0
    out = xp.zeros((n, width), dtype=column.values.dtype)
    out[xp.arange(width, dtype=np.int64)[None, :] < lengths[:, None]] = column.values
    return out, lengths.astype(np.int32).reshape(-1, 1)
