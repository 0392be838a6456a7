"""``Normalize``."""

from __future__ import annotations

from typing import Any

import numpy as np

from tritonrec.transform.ops.base import ColumnStep, CompileOp, Step, UnsupportedOpError, float_compute_dtype, vector


class Normalize(Step):
    """``nvtabular.ops.Normalize(out_dtype)``: ``(x - mean) / std`` (``x - mean`` where std == 0).

    Computed in the input's float dtype with the statistics rounded to it, as pandas does with
    Python floats; then cast to ``out_dtype`` (float64 unless the op said otherwise).
    """

    kind = "normalize"

    def __init__(self, means: Any, stds: Any, out_dtype: Any) -> None:
        self.means = vector(means, np.float64)
        self.stds = vector(stds, np.float64)
        self.out_dtype = np.dtype(out_dtype)

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return self.out_dtype

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        compute = float_compute_dtype(values.dtype)
        mean, divisor = self._vectors(
            compute,
            xp,
            lambda: (xp.asarray(self.means.astype(compute)), xp.asarray(np.where(self.stds > 0, self.stds, 1.0).astype(compute))),
        )
        return ((values - mean) / divisor).astype(self.out_dtype, copy=False)

    def params(self) -> dict[str, Any]:
        return {"means": self.means.tolist(), "stds": self.stds.tolist(), "out_dtype": self.out_dtype.name}

    def signature(self) -> tuple[Any, ...]:
        return (self.kind, self.out_dtype.name)


def compile_normalize(op: Any, column: str, dtype: np.dtype, out_name: str, on_list: bool) -> ColumnStep:
    if column not in op.means:
        raise UnsupportedOpError("Normalize", column, "no fitted statistics for this column (workflow not fitted?)")
    out = np.dtype(op.output_dtype)
    return ColumnStep(
        ("normalize", out.name),
        {"mean": op.means[column], "std": op.stds[column]},
        lambda ps: Normalize([p["mean"] for p in ps], [p["std"] for p in ps], out),
        out,
    )


COMPILERS: dict[str, CompileOp] = {"Normalize": compile_normalize}
STEPS: tuple[type[Step], ...] = (Normalize,)
