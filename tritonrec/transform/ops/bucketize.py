"""``Bucketize``."""

from __future__ import annotations

from typing import Any

import numpy as np

from tritonrec.transform.ops.base import ColumnStep, CompileOp, Step, UnsupportedOpError


class Bucketize(Step):
    """``nvtabular.ops.Bucketize(boundaries)``: ``np.digitize(x, boundaries, right=False)`` per
    column (NaN lands past the last boundary), int32 out.

    Args:
        boundaries: per column, its increasing boundaries (lists may differ in length).
    """

    kind = "bucketize"

    def __init__(self, boundaries: list[list[float]]) -> None:
        self.boundaries = [list(map(float, b)) for b in boundaries]

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return np.dtype(np.int32)

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        bins = self._vectors(values.dtype, xp, lambda: [xp.asarray(np.asarray(b, dtype=np.float64)) for b in self.boundaries])
        out = xp.empty(values.shape, dtype=np.int32)
        for j, b in enumerate(bins):
            out[:, j] = xp.digitize(values[:, j], b, right=False)
        return out

    def params(self) -> dict[str, Any]:
        return {"boundaries": self.boundaries}


def compile_bucketize(op: Any, column: str, dtype: np.dtype, out_name: str, on_list: bool) -> ColumnStep:
    boundaries = [float(b) for b in op.boundaries(column)]
    if any(b > a for a, b in zip(boundaries[1:], boundaries)):
        raise UnsupportedOpError("Bucketize", column, f"boundaries {boundaries} are not increasing")
    return ColumnStep(("bucketize",), {"boundaries": boundaries}, lambda ps: Bucketize([p["boundaries"] for p in ps]),
                      np.dtype(np.int32))


COMPILERS: dict[str, CompileOp] = {"Bucketize": compile_bucketize}
STEPS: tuple[type[Step], ...] = (Bucketize,)
