"""``Clip``."""

from __future__ import annotations

from typing import Any

import numpy as np

from tritonrec.transform.ops.base import ColumnStep, CompileOp, Step, UnsupportedOpError, vector


class Clip(Step):
    """``nvtabular.ops.Clip(min_value, max_value)``: values below min -> min, above max -> max.

    NaN stays NaN (pandas' comparison is False for NaN), and the dtype is kept.
    """

    kind = "clip"

    def __init__(self, min_values: Any | None, max_values: Any | None) -> None:
        self.min_values = None if min_values is None else vector(min_values, np.float64)
        self.max_values = None if max_values is None else vector(max_values, np.float64)

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return input_dtype

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        low, high = self._vectors(
            values.dtype,
            xp,
            lambda: tuple(None if v is None else xp.asarray(v.astype(values.dtype)) for v in (self.min_values, self.max_values)),
        )
        if low is not None:
            values = xp.where(values < low, low, values)
        if high is not None:
            values = xp.where(values > high, high, values)
        return values

    def params(self) -> dict[str, Any]:
        return {
            "min_values": None if self.min_values is None else self.min_values.tolist(),
            "max_values": None if self.max_values is None else self.max_values.tolist(),
        }

    def signature(self) -> tuple[Any, ...]:
        return (self.kind, self.min_values is not None, self.max_values is not None)


def compile_clip(op: Any, column: str, dtype: np.dtype, out_name: str, on_list: bool) -> ColumnStep:
    for bound in (op.min_value, op.max_value):
        if bound is not None and dtype.kind in "iu" and float(bound) != int(bound):
            raise UnsupportedOpError("Clip", column, f"a non-integer bound {bound!r} on integer dtype {dtype} changes the dtype")
    has_min, has_max = op.min_value is not None, op.max_value is not None
    return ColumnStep(
        ("clip", has_min, has_max),
        {"min": op.min_value, "max": op.max_value},
        lambda ps: Clip(
            [p["min"] for p in ps] if has_min else None,
            [p["max"] for p in ps] if has_max else None,
        ),
        dtype,
    )


COMPILERS: dict[str, CompileOp] = {"Clip": compile_clip}
STEPS: tuple[type[Step], ...] = (Clip,)
