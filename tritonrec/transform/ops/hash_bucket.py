"""``HashBucket``."""

from __future__ import annotations

from typing import Any

import numpy as np

from tritonrec.transform.ops.base import ColumnStep, CompileOp, Step, UnsupportedOpError, positive_buckets, vector
from tritonrec.transform.ops.hashed_cross import IndexedHash


class HashBucket(Step):
    """``nvtabular.ops.HashBucket(num_buckets)`` on numeric and string columns: pandas' hash of the
    value (for strings, of its UTF-8 bytes; a null hashes to 2^64 - 1) and of the row's index (its
    position in the request, as for Categorify's hash buckets) modulo the column's
    ``num_buckets``, int32 out."""

    kind = "hash_bucket"

    def __init__(self, num_buckets: Any) -> None:
        self.num_buckets = vector(num_buckets, np.int64)

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return np.dtype(np.int32)

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        buckets = self._vectors(np.dtype(np.uint64), xp, lambda: xp.asarray(self.num_buckets.astype(np.uint64)))
        return (IndexedHash().apply(values, row_index, xp) % buckets).astype(np.int32)

    def params(self) -> dict[str, Any]:
        return {"num_buckets": self.num_buckets.tolist()}


def compile_hash_bucket(op: Any, column: str, dtype: np.dtype, out_name: str, on_list: bool) -> ColumnStep:
    if dtype.kind not in "iufO":
        raise UnsupportedOpError("HashBucket", column, f"input dtype {dtype} (numeric or string columns)")
    buckets = positive_buckets(op, column, column)
    return ColumnStep(("hash_bucket",), {"buckets": int(buckets)}, lambda ps: HashBucket([p["buckets"] for p in ps]),
                      np.dtype(np.int32))


COMPILERS: dict[str, CompileOp] = {"HashBucket": compile_hash_bucket}
STEPS: tuple[type[Step], ...] = (HashBucket,)
