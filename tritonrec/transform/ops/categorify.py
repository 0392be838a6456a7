"""``Categorify``: category values -> codes through a key table."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tritonrec.transform._hashing import combine_with_index, pandas_hash_array
from tritonrec.transform._table import HASH_NAME, KeyTable
from tritonrec.transform.ops.base import NULL_CODE, OOV_CODE, ColumnStep, CompileOp, Step, UnsupportedOpError, vector
from tritonrec.transform.ops.keys import category_keys, category_table, index_hashes, saved_table


class Categorify(Step):
    """``nvtabular.ops.Categorify`` at transform time, for numeric and string columns.

    Codes: 0 is never produced (padding), 1 = null, 2 = out of vocabulary (or, with ``num_buckets``
    for the column, 2 + pandas' row hash of the value modulo ``num_buckets``), then the vocabulary
    codes that the fitted statistics assign. Values are cast to the vocabulary's dtype before the
    lookup, as NVTabular casts them before its merge.

    Args:
        table: the (column, key) -> code table of the group's vocabularies.
        num_buckets: int64 (k,) hash buckets per column, 0 where the column has none.
        vocab_dtype: dtype the vocabulary was stored with (int, float, or object for strings: those
            are keyed by pandas' 64-bit hash of the value, so an unseen string takes a vocabulary
            code only if its hash equals that string's, with probability ~ vocabulary size / 2^64).
        out_dtype: dtype of the codes (``Categorify(dtype=...)``; int64 by default).
    """

    kind = "categorify"

    def __init__(self, table: KeyTable, num_buckets: Any, vocab_dtype: Any, out_dtype: Any) -> None:
        self.table = table
        self.num_buckets = vector(num_buckets, np.int64)
        self.vocab_dtype = np.dtype(vocab_dtype)
        self.out_dtype = np.dtype(out_dtype)
        if self.vocab_dtype.kind not in "iufO":
            raise ValueError(f"vocabulary dtype {self.vocab_dtype} is neither numeric nor strings (object)")
        self._hashed = bool((self.num_buckets > 0).any())

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return self.out_dtype

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        keys, nulls, string_hashes = category_keys(values, self.vocab_dtype, xp)
        codes = self.table.lookup_block(keys)
        missing = codes < 0
        if bool(missing.any()):
            if self._hashed:
                buckets = xp.asarray(self.num_buckets)
                value_hash = pandas_hash_array(values, xp) if string_hashes is None else string_hashes
                row_hash = combine_with_index(value_hash, index_hashes(row_index, xp)[:, None])
                hashed = (row_hash % xp.maximum(buckets, 1).astype(np.uint64)).astype(np.int64) + OOV_CODE
                oov = xp.where(buckets > 0, hashed, OOV_CODE)
            else:
                oov = OOV_CODE
            codes = xp.where(missing, oov, codes)
        if nulls is not None:
            codes = xp.where(nulls, NULL_CODE, codes)
        return codes.astype(self.out_dtype, copy=False)

    def code_ranges(self) -> list[tuple[int, int, int]]:
        """Per column of the group: ``(cardinality, oov_first, oov_end)``: codes lie in
        ``[0, cardinality)``; codes in ``[oov_first, oov_end)`` mean out of vocabulary (the OOV
        code, or the hash buckets)."""
        slots = self.table.slots
        slots = slots if isinstance(slots, np.ndarray) else slots.get()
        tags = slots[:, 1][slots[:, 1] != -1]
        columns = tags >> np.int64(32)
        codes = tags & np.int64(0xFFFFFFFF)
        k = self.num_buckets.shape[0]
        max_code = np.full(k, -1, dtype=np.int64)
        np.maximum.at(max_code, columns, codes)
        oov_end = OOV_CODE + np.maximum(self.num_buckets, 1)
        return [(int(max(m + 1, e)), OOV_CODE, int(e)) for m, e in zip(max_code, oov_end)]

    def params(self) -> dict[str, Any]:
        return {
            "num_buckets": self.num_buckets.tolist(),
            "vocab_dtype": self.vocab_dtype.name,
            "out_dtype": self.out_dtype.name,
            "max_probe": self.table.max_probe,
            "table_hash": HASH_NAME,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        slots = self.table.slots
        return {"slots": slots if isinstance(slots, np.ndarray) else slots.get()}  # cupy -> host

    def signature(self) -> tuple[Any, ...]:
        return (self.kind, self.vocab_dtype.name, self.out_dtype.name)

    def to(self, xp: Any) -> Step:
        if xp is self.table.xp:
            return self
        if self.vocab_dtype.kind == "O":
            raise ValueError("Categorify of string columns runs on the host only (strings cannot move to a GPU array)")
        return Categorify(self.table.to(xp), self.num_buckets, self.vocab_dtype, self.out_dtype)

    @classmethod
    def from_saved(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Categorify:
        return cls(saved_table(cls.kind, params, arrays), params["num_buckets"], params["vocab_dtype"], params["out_dtype"])


def categorify_buckets(op: Any, column: str) -> int:
    """Categorify's ``num_buckets`` for one column (an int, or a dict by column); 0 for none."""
    buckets = op.num_buckets
    return (buckets if isinstance(buckets, int) else (buckets or {}).get(column, 0)) or 0


def compile_categorify(op: Any, column: str, dtype: np.dtype, out_name: str, on_list: bool) -> ColumnStep:
    """Categorify on one column, or on a list column's values (without hash buckets; numbers only)."""
    import pandas as pd  # noqa: PLC0415
    from merlin.dag import ColumnSelector  # noqa: PLC0415

    if on_list:
        _check_list(op, column, dtype)
    if op.storage_name.get(column, column) != column:
        raise UnsupportedOpError("Categorify", column, "multi-column (joint or combo) encoding is not supported yet")
    # encode_type "combo" on a single column encodes it as "joint" does
    if op.single_table:
        raise UnsupportedOpError("Categorify", column, "single_table=True is not supported")
    if op.search_sorted:
        raise UnsupportedOpError("Categorify", column, "search_sorted=True is not supported")
    path = op.categories.get(column)  # a file, or with split_out > 1 a directory of parts (read as one)
    if not path:
        raise UnsupportedOpError("Categorify", column, "no fitted vocabulary (workflow not fitted?)")
    if not Path(path).exists():
        raise FileNotFoundError(f"Categorify vocabulary of column {column!r} not found at {path}")
    num_buckets = categorify_buckets(op, column)
    vocab = pd.read_parquet(path, columns=[column])[column]
    if vocab.dtype.kind not in "iufO" or (vocab.dtype.kind == "O" and dtype.kind != "O"):
        raise UnsupportedOpError("Categorify", column, f"vocabulary of dtype {vocab.dtype} on an input of dtype {dtype}")
    # The codes of the vocabulary come from the op itself, run on the vocabulary's values: the plan
    # takes NVTabular's own label assignment instead of re-deriving it.
    values = vocab.dropna().to_numpy()
    if values.size:
        frame = pd.DataFrame({column: values})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            codes = np.asarray(op.transform(ColumnSelector([column]), frame)[column], dtype=np.int64)
    else:  # no value reached freq_threshold (or hash buckets only): every value is OOV or a bucket
        codes = np.zeros(0, dtype=np.int64)  # (the op itself fails on an empty frame)
    keep = codes >= OOV_CODE + max(num_buckets, 1)  # bucket and null codes come from the rules
    vocab_dtype = np.dtype(vocab.dtype)
    keys = values[keep].astype(vocab_dtype)
    out = np.dtype(op.output_dtype)
    return ColumnStep(
        ("categorify", vocab_dtype.name, out.name),
        {"keys": keys, "codes": codes[keep], "num_buckets": int(num_buckets), "column": column},
        lambda ps: _merge_categorify(ps, vocab_dtype, out),
        out,
    )


def _merge_categorify(params: list[dict[str, Any]], vocab_dtype: np.dtype, out: np.dtype) -> Categorify:
    table = category_table(params, vocab_dtype, "Categorify", [p["codes"] for p in params])
    return Categorify(table, [p["num_buckets"] for p in params], vocab_dtype, out)


def _check_list(op: Any, column: str, dtype: np.dtype) -> None:
    buckets = categorify_buckets(op, column)
    if buckets:
        raise UnsupportedOpError("Categorify", column, f"num_buckets={buckets} on a list column (nvtabular 23.08's CPU transform "
                                 "cannot hash list values either)")
    if dtype.kind == "O":
        raise UnsupportedOpError("Categorify", column, "lists of strings are not supported (lists of numbers are)")


COMPILERS: dict[str, CompileOp] = {"Categorify": compile_categorify}
STEPS: tuple[type[Step], ...] = (Categorify,)
