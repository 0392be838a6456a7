"""``NormalizeMinMax``."""

from __future__ import annotations

from typing import Any

import numpy as np

from tritonrec.transform.ops.base import ColumnStep, CompileOp, Step, UnsupportedOpError, vector


class NormalizeMinMax(Step):
    """``nvtabular.ops.NormalizeMinMax(out_dtype)``: ``(x - min) / (max - min)``, or ``x / (2 x)``
    where max == min; then cast to ``out_dtype`` (float64 unless the op said otherwise).

    pandas computes with the fitted min and max as numpy scalars, under numpy 1.26's value-based
    casting: a float column keeps its dtype (the statistics rounded to it); an integer column with
    integer statistics subtracts in int64 and divides in float64; with float statistics it computes
    in float64. Those rules are applied explicitly, so the result does not depend on the numpy
    version the plan runs under.

    Args:
        mins: (k,) fitted minimums; int64 when ``integer_stats``, else float64 (exact for float32).
        difs: (k,) ``max - min`` computed in the statistics' own type, stored likewise.
        integer_stats: the statistics are integers (every column of the op was an integer column).
        out_dtype: the op's output dtype.
    """

    kind = "normalize_minmax"

    def __init__(self, mins: Any, difs: Any, integer_stats: bool, out_dtype: Any) -> None:
        stat = np.int64 if integer_stats else np.float64
        self.mins = vector(mins, stat)
        self.difs = vector(difs, stat)
        self.integer_stats = bool(integer_stats)
        self.out_dtype = np.dtype(out_dtype)

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return self.out_dtype

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        flat = self.difs == 0  # x / (2 x) in those columns
        if values.dtype.kind == "f":
            lo, dif = self._vectors(values.dtype, xp, lambda: (xp.asarray(self.mins.astype(values.dtype)),
                                                               xp.asarray(np.where(flat, 1, self.difs).astype(values.dtype))))
            scaled = (values - lo) / dif
            same = values / (values * values.dtype.type(2))
        else:
            wide = values.astype(np.int64)
            if self.integer_stats:
                lo, dif = self._vectors(np.dtype(np.int64), xp, lambda: (xp.asarray(self.mins), xp.asarray(np.where(flat, 1, self.difs).astype(np.float64))))
                with np.errstate(over="ignore"):
                    scaled = (wide - lo).astype(np.float64) / dif
            else:
                lo, dif = self._vectors(np.dtype(np.float64), xp, lambda: (xp.asarray(self.mins), xp.asarray(np.where(flat, 1.0, self.difs))))
                scaled = (wide.astype(np.float64) - lo) / dif
            with np.errstate(over="ignore"):
                same = wide.astype(np.float64) / (wide * np.int64(2)).astype(np.float64)
        if flat.any():
            with np.errstate(invalid="ignore", divide="ignore"):
                scaled = xp.where(xp.asarray(flat), same, scaled)
        return scaled.astype(self.out_dtype, copy=False)

    def params(self) -> dict[str, Any]:
        return {"mins": self.mins.tolist(), "difs": self.difs.tolist(), "integer_stats": self.integer_stats, "out_dtype": self.out_dtype.name}

    def signature(self) -> tuple[Any, ...]:
        return (self.kind, self.integer_stats, self.out_dtype.name)


def compile_normalize_minmax(op: Any, column: str, dtype: np.dtype, out_name: str, on_list: bool) -> ColumnStep:
    if column not in op.mins or column not in op.maxs:
        raise UnsupportedOpError("NormalizeMinMax", column, "no fitted statistics for this column (workflow not fitted?)")
    if dtype.name not in ("int64", "float32", "float64"):
        raise UnsupportedOpError("NormalizeMinMax", column, f"input dtype {dtype} (supported: int64, float32, float64)")
    lo, hi = op.mins[column], op.maxs[column]
    integer_stats = isinstance(lo, (int, np.integer)) and isinstance(hi, (int, np.integer))
    if not integer_stats and not (np.isfinite(float(lo)) and np.isfinite(float(hi))):
        raise UnsupportedOpError("NormalizeMinMax", column, f"fitted min {lo!r} / max {hi!r} are not finite (an all-null column?)")
    with np.errstate(over="ignore"):
        dif = np.int64(hi) - np.int64(lo) if integer_stats else np.asarray(hi) - np.asarray(lo)  # in the statistics' own type
    out = np.dtype(op.output_dtype)
    return ColumnStep(
        ("normalize_minmax", integer_stats, out.name),
        {"min": int(lo) if integer_stats else float(lo), "dif": int(dif) if integer_stats else float(dif)},
        lambda ps: NormalizeMinMax([p["min"] for p in ps], [p["dif"] for p in ps], integer_stats, out),
        out,
    )


COMPILERS: dict[str, CompileOp] = {"NormalizeMinMax": compile_normalize_minmax}
STEPS: tuple[type[Step], ...] = (NormalizeMinMax,)
