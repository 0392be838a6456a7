"""``ListSlice``: the one step that changes a list column's row lengths."""

from __future__ import annotations

from typing import Any

import numpy as np

from tritonrec.transform.ops.base import ColumnStep, CompileOp, Step, UnsupportedOpError, row_of_each_value


class ListSlice(Step):
    """``nvtabular.ops.ListSlice(start, end, pad, pad_value)`` on a list column: each row becomes
    ``row[start:end]`` (Python slicing), padded with ``pad_value`` to ``max_elements`` when ``pad``.

    The one structural step: it changes the rows' lengths, so it runs through :meth:`apply_list` on
    the column's flat values and offsets instead of :meth:`apply`. ``start``/``end`` are the op's
    own attributes after its constructor's normalisation (``ListSlice(3)`` is ``start 0, end 3``).
    """

    kind = "list_slice"
    structural = True

    def __init__(self, start: int, end: int, pad: bool, pad_value: float, max_elements: int) -> None:
        self.start, self.end = int(start), int(end)
        self.pad, self.pad_value, self.max_elements = bool(pad), float(pad_value), int(max_elements)

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return input_dtype

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        raise TypeError("ListSlice runs on a list column's values and offsets (apply_list)")

    def apply_list(self, values: Any, offsets: Any, xp: Any) -> tuple[Any, Any]:
        """(nnz, 1) values and int64 (n + 1,) offsets -> the sliced (padded) values and offsets."""
        lengths = offsets[1:] - offsets[:-1]
        def bound(b: int) -> Any:  # Python's slice bound for a row of each length, in [0, length]
            return xp.clip(lengths + b, 0, None) if b < 0 else xp.minimum(lengths, b)
        first, last = bound(self.start), bound(self.end)
        kept = xp.clip(last - first, 0, None)
        out_lengths = xp.maximum(kept, self.max_elements) if self.pad else kept  # only shorter rows are padded
        out_offsets = xp.zeros(offsets.shape[0], dtype=np.int64)
        xp.cumsum(out_lengths, out=out_offsets[1:])
        total = int(out_offsets[-1])
        out = xp.full((total, values.shape[1]), self.pad_value, dtype=values.dtype) if self.pad else xp.empty((total, values.shape[1]), dtype=values.dtype)
        rows = row_of_each_value(kept, xp)  # the row of each kept value
        within = xp.arange(rows.shape[0], dtype=np.int64) - (xp.cumsum(kept) - kept)[rows]
        out[out_offsets[:-1][rows] + within] = values[offsets[:-1][rows] + first[rows] + within]
        return out, out_offsets

    def params(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "pad": self.pad, "pad_value": self.pad_value, "max_elements": self.max_elements}

    def signature(self) -> tuple[Any, ...]:
        return (self.kind, self.start, self.end, self.pad, self.pad_value)


def compile_list_slice(op: Any, column: str, dtype: np.dtype, out_name: str, on_list: bool) -> ColumnStep:
    if not on_list:
        raise UnsupportedOpError("ListSlice", column, "ListSlice on a column that is not a list")
    if op.pad and op.max_elements > 1 << 20:
        raise UnsupportedOpError("ListSlice", column, f"pad=True pads every row to {op.max_elements} values: give the slice an end")
    return ColumnStep(("list_slice", int(op.start), int(op.end), bool(op.pad), float(op.pad_value)), {},
                      lambda ps: ListSlice(op.start, op.end, op.pad, op.pad_value, op.max_elements), dtype)


COMPILERS: dict[str, CompileOp] = {"ListSlice": compile_list_slice}
STEPS: tuple[type[Step], ...] = (ListSlice,)
