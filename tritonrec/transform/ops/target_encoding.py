"""``TargetEncoding``: category values -> their encodings through a key table."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np

from tritonrec.transform._table import HASH_NAME, KeyTable
from tritonrec.transform.ops.base import ColumnStep, CompileOp, Step, UnsupportedOpError, vector
from tritonrec.transform.ops.keys import category_keys, category_table, saved_table


class TargetEncode(Step):
    """``nvtabular.ops.TargetEncoding`` at serving time: each category's encoding, computed at
    compile time by the op itself on its full-data statistics (``(sum + p_smooth * mean) / (count +
    p_smooth)``), looked up by value; unseen values get the target's mean; nulls get the null
    category's encoding when the statistics hold one, else the mean. With ``kfold > 1`` NVTabular
    encodes training rows with out-of-fold statistics chosen by row position, which has no meaning
    at serving time: the plan serves the full-data encoding (what ``kfold=1`` gives).

    Args:
        table: (column, key) -> position in ``values``; keys as Categorify's (numeric or string hash).
        values: float64 (m,) encodings of every column's categories, already in ``out_dtype``'s precision.
        defaults: (k,) per column, the encoding of an unseen value. nulls: (k,) of a null.
        key_dtype: dtype the categories were stored with (int, float, or object).
        out_dtype: the op's output dtype.
    """

    kind = "target_encode"

    def __init__(self, table: KeyTable, values: Any, defaults: Any, nulls: Any, key_dtype: Any, out_dtype: Any) -> None:
        self.table = table
        self.values = np.asarray(values, dtype=np.float64).reshape(-1)
        self.defaults = vector(defaults, np.float64)
        self.nulls = vector(nulls, np.float64)
        self.key_dtype = np.dtype(key_dtype)
        self.out_dtype = np.dtype(out_dtype)

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return self.out_dtype

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        keys, nulls, _ = category_keys(values, self.key_dtype, xp)
        found = self.table.lookup_block(keys)
        table_values, defaults, null_values = self._vectors(self.out_dtype, xp, lambda: (
            xp.asarray(self.values.astype(self.out_dtype)), xp.asarray(self.defaults.astype(self.out_dtype)),
            xp.asarray(self.nulls.astype(self.out_dtype))))
        out = xp.where(found >= 0, table_values[xp.maximum(found, 0)], defaults)
        if nulls is not None:
            out = xp.where(nulls, null_values, out)
        return out.astype(self.out_dtype, copy=False)

    def to(self, xp: Any) -> Step:
        if xp is self.table.xp:
            return self
        if self.key_dtype.kind == "O":
            raise ValueError("TargetEncoding of string columns runs on the host only (strings cannot move to a GPU array)")
        return TargetEncode(self.table.to(xp), self.values, self.defaults, self.nulls, self.key_dtype, self.out_dtype)

    def params(self) -> dict[str, Any]:
        return {"defaults": self.defaults.tolist(), "nulls": self.nulls.tolist(), "key_dtype": self.key_dtype.name,
                "out_dtype": self.out_dtype.name, "max_probe": self.table.max_probe, "table_hash": HASH_NAME}

    def arrays(self) -> dict[str, np.ndarray]:
        slots = self.table.slots
        return {"slots": slots if isinstance(slots, np.ndarray) else slots.get(), "values": self.values}

    def signature(self) -> tuple[Any, ...]:
        return (self.kind, self.key_dtype.name, self.out_dtype.name)

    @classmethod
    def from_saved(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> TargetEncode:
        return cls(saved_table(cls.kind, params, arrays), arrays["values"], params["defaults"], params["nulls"], params["key_dtype"],
                   params["out_dtype"])


def compile_target_encoding(op: Any, column: str, dtype: np.dtype, out_name: str, on_list: bool) -> ColumnStep:
    """The encodings of ``column``'s categories for the target of ``out_name``, computed by the op
    itself (with kfold=1: the full-data statistics) on the distinct values of its statistics."""
    import pandas as pd  # noqa: PLC0415
    from merlin.dag import ColumnSelector  # noqa: PLC0415

    path = op.stats.get(column)
    if not path:
        raise UnsupportedOpError("TargetEncoding", column, "no fitted statistics for this column (a multi-column group, or not fitted?)")
    targets = [t for t in op.target_columns if out_name == f"TE_{column}_{t}"] if not isinstance(op.out_col, list) else []
    if len(targets) != 1:
        raise UnsupportedOpError("TargetEncoding", column, f"output {out_name!r}: only the default TE_<column>_<target> names are supported")
    stats = pd.read_parquet(path)
    categories = stats[column]
    key_dtype = np.dtype(categories.dtype)
    if key_dtype.kind not in "iufO" or (key_dtype.kind == "O") != (dtype.kind == "O"):
        raise UnsupportedOpError("TargetEncoding", column, f"statistics of dtype {key_dtype} on an input of dtype {dtype}")
    values = categories.dropna().to_numpy()
    probe = pd.DataFrame({column: pd.Series(list(values) + ([None] if key_dtype.kind in "fO" else []), dtype=categories.dtype)})
    full_data = copy.copy(op)
    full_data.kfold = 1  # serve the full-data encoding: folds by row position mean nothing at serving time
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoded = full_data.transform(ColumnSelector([column]), probe)[out_name].to_numpy()
    out = np.dtype(op.output_dtype)
    mean = (op.target_mean or op.means)[targets[0]]
    null_value = float(encoded[-1]) if key_dtype.kind in "fO" else float(np.asarray(mean, dtype=out))
    return ColumnStep(
        ("target_encode", key_dtype.name, out.name),
        {"keys": values, "encodings": encoded[: len(values)].astype(np.float64), "default": float(np.asarray(mean, dtype=out)),
         "null": null_value, "column": column},
        lambda ps: _merge_target_encoding(ps, key_dtype, out),
        out,
    )


def _merge_target_encoding(params: list[dict[str, Any]], key_dtype: np.dtype, out: np.dtype) -> TargetEncode:
    encodings = np.concatenate([p["encodings"] for p in params])
    starts = np.cumsum([0] + [len(p["keys"]) for p in params])
    positions = [np.arange(starts[j], starts[j + 1], dtype=np.int64) for j in range(len(params))]  # into ``encodings``
    table = category_table(params, key_dtype, "TargetEncoding", positions)
    return TargetEncode(table, encodings, [p["default"] for p in params], [p["null"] for p in params], key_dtype, out)


COMPILERS: dict[str, CompileOp] = {"TargetEncoding": compile_target_encoding}
STEPS: tuple[type[Step], ...] = (TargetEncode,)
