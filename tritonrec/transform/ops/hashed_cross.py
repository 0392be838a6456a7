"""``HashedCross``: crossed columns hashed into buckets, in one group or staged."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tritonrec.transform._hashing import combine_with_index
from tritonrec.transform.ops.base import Chain, ColumnStep, Step, UnsupportedOpError, positive_buckets
from tritonrec.transform.ops.keys import index_hashes, value_hashes


class IndexedHash(Step):
    """The first half of a ``HashedCross`` over columns of different dtypes or transformed
    columns: each value's pandas hash combined with its row's index, uint64 out (same shape)."""

    kind = "indexed_hash"

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return np.dtype(np.uint64)

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        return combine_with_index(value_hashes(values, xp), index_hashes(row_index, xp)[:, None])

    def params(self) -> dict[str, Any]:
        return {}


class XorBuckets(Step):
    """The second half: the XOR over the group's k uint64 columns (from :class:`IndexedHash`),
    modulo ``num_buckets``; int32 out, shape (n, 1)."""

    kind = "xor_buckets"

    def __init__(self, num_buckets: int) -> None:
        self.num_buckets = int(num_buckets)

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return np.dtype(np.int32)

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        crossed = xp.zeros(values.shape[0], dtype=np.uint64)
        for j in range(values.shape[1]):
            crossed ^= values[:, j]
        return (crossed % np.uint64(self.num_buckets)).astype(np.int32).reshape(-1, 1)

    def params(self) -> dict[str, Any]:
        return {"num_buckets": self.num_buckets}

    def signature(self) -> tuple[Any, ...]:
        return (self.kind, self.num_buckets)


class HashedCross(XorBuckets):
    """``nvtabular.ops.HashedCross(num_buckets)``: one output column from the group's k input
    columns (one dtype): the XOR over the columns of pandas' hash of each value combined with its
    row's index (its position in the request), modulo ``num_buckets``; int32 out, shape (n, 1)."""

    kind = "hashed_cross"

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        return super().apply(IndexedHash().apply(values, row_index, xp), row_index, xp)


def cross_chain(op: Any, out_name: str, sources: list[str], available: Mapping[str, Chain],
                input_dtypes: Mapping[str, np.dtype]) -> Chain:
    """The chain of a HashedCross output: a cross of its raw input columns (workflow inputs as they
    came in, of one dtype: one group) or a staged cross (each source's chain, then the XOR)."""
    buckets = positive_buckets(op, tuple(sources), out_name)
    raw_inputs = all(s in input_dtypes and not (s in available and available[s].steps) for s in sources)
    if raw_inputs and len({input_dtypes[s].name for s in sources}) == 1:
        step = ColumnStep(("hashed_cross", buckets), {}, lambda ps: HashedCross(buckets), np.dtype(np.int32))
        return Chain(tuple(sources), [step], step.dtype, cross=True)
    parts = []
    for source in sources:
        if source in available:
            part = available[source]
        elif source in input_dtypes:
            part = Chain((source,), [], input_dtypes[source])
        else:
            raise UnsupportedOpError("HashedCross", out_name, f"source column {source!r} not found")
        if part.cross:
            raise UnsupportedOpError("HashedCross", out_name, f"column {source!r} is itself a cross (crosses of crosses are not supported)")
        parts.append(part)
    step = ColumnStep(("hashed_cross", buckets), {}, lambda ps: XorBuckets(buckets), np.dtype(np.int32))
    return Chain((), [step], step.dtype, cross=True, staged=tuple(parts))


STEPS: tuple[type[Step], ...] = (IndexedHash, XorBuckets, HashedCross)
