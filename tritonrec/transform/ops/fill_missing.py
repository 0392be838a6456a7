"""``FillMissing`` and ``FillMedian``: NaN -> a fill value."""

from __future__ import annotations

from typing import Any

import numpy as np

from tritonrec.transform.ops.base import ColumnStep, CompileOp, Step, UnsupportedOpError, vector


class FillMissing(Step):
    """``nvtabular.ops.FillMissing(fill_val)``: NaN -> the column's fill value (float columns)."""

    kind = "fill_missing"

    def __init__(self, fill_values: Any) -> None:
        self.fill_values = vector(fill_values, np.float64)  # (k,)

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return input_dtype

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        if values.dtype.kind != "f":
            return values
        fill = self._vectors(values.dtype, xp, lambda: xp.asarray(self.fill_values.astype(values.dtype)))
        return xp.where(xp.isnan(values), fill, values)

    def params(self) -> dict[str, Any]:
        return {"fill_values": self.fill_values.tolist()}


def compile_fill_missing(op: Any, column: str, dtype: np.dtype, out_name: str, on_list: bool) -> ColumnStep:
    if op.add_binary_cols:
        raise UnsupportedOpError("FillMissing", column, "add_binary_cols=True is not supported")
    return ColumnStep(("fill_missing",), {"fill": float(op.fill_val)}, lambda ps: FillMissing([p["fill"] for p in ps]), dtype)


def compile_fill_median(op: Any, column: str, dtype: np.dtype, out_name: str, on_list: bool) -> ColumnStep:
    if op.add_binary_cols:
        raise UnsupportedOpError("FillMedian", column, "add_binary_cols=True is not supported")
    if column not in op.medians:
        raise UnsupportedOpError("FillMedian", column, "no fitted median for this column (workflow not fitted?)")
    return ColumnStep(("fill_missing",), {"fill": float(op.medians[column])}, lambda ps: FillMissing([p["fill"] for p in ps]),
                      dtype)


COMPILERS: dict[str, CompileOp] = {"FillMissing": compile_fill_missing, "FillMedian": compile_fill_median}
STEPS: tuple[type[Step], ...] = (FillMissing,)
