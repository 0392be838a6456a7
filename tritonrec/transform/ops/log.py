"""``LogOp``."""

from __future__ import annotations

from typing import Any

import numpy as np

from tritonrec.transform.ops.base import ColumnStep, CompileOp, Step


class LogOp(Step):
    """``nvtabular.ops.LogOp()``: ``log(x.astype(float32) + 1)``, float32 out."""

    kind = "log"

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return np.dtype(np.float32)

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        return xp.log(values.astype(np.float32) + np.float32(1))

    def params(self) -> dict[str, Any]:
        return {}


def compile_log(op: Any, column: str, dtype: np.dtype, out_name: str, on_list: bool) -> ColumnStep:
    return ColumnStep(("log",), {}, lambda ps: LogOp(), np.dtype(np.float32))


COMPILERS: dict[str, CompileOp] = {"LogOp": compile_log}
STEPS: tuple[type[Step], ...] = (LogOp,)
