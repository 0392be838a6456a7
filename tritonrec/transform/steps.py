"""The operations a plan runs, each applied to a group of columns at once.

A step takes the group's values as one (n, k) array, n rows by k columns, and per-column
parameters as length-k vectors, and reproduces the arithmetic of the NVTabular 23.08 op it stands
for, dtype for dtype: an op that computes in float32 under pandas computes in float32 here.

Each step serialises to a JSON-able ``params`` dict plus named arrays (``arrays``), and is rebuilt
by :func:`step_from_manifest`. ``signature`` is what must be equal for two columns to share a group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from tritonrec.transform._hashing import IndexHashCache, combine_with_index, pandas_hash_array
from tritonrec.transform._table import HASH_NAME, KeyTable

class BadValueError(ValueError):
    """A value a step cannot transform (e.g. bytes that are not UTF-8 in a string column).

    ``column`` is the position of its column in the step's group (the group renames it to the
    input column's name), ``row`` its row in the batch.
    """

    def __init__(self, column: int | str, row: int, reason: str) -> None:
        where = f"input column {column!r}" if isinstance(column, str) else f"column {column}"
        super().__init__(f"{where}, row {row}: {reason}")
        self.column = column
        self.row = row
        self.reason = reason


def _numeric_keys(values: Any, nulls: Any, vocab_dtype: np.dtype, xp: Any) -> Any:
    """int64 table keys of numeric category values, cast to ``vocab_dtype`` as NVTabular casts
    them before its merge; float keys are the float64 bits, with -0.0 as 0.0 (they merge as equal).
    ``nulls`` (bool, or None) marks values whose key does not matter (set to 0)."""
    if nulls is not None:
        values = xp.where(nulls, values.dtype.type(0), values)
    keys = values.astype(vocab_dtype, copy=False)
    if vocab_dtype.kind == "f":
        return (keys.astype(np.float64) + 0.0).view(np.int64)
    return keys.astype(np.int64, copy=False)


_INDEX_HASHES = IndexHashCache()
"""pandas' hashes of row positions, shared by every step that hashes with the row's index."""


def _index_hashes(row_index: Any, xp: Any) -> Any:
    """uint64 (n,) pandas hashes of the int64 (n,) row positions, in ``xp``'s memory."""
    return xp.asarray(_INDEX_HASHES.get(np.asarray(row_index)))


def _value_hashes(values: Any, xp: Any) -> Any:
    """pandas' per-value hash (uint64, the shape of ``values``) of a numeric or string block."""
    return _string_hashes(values)[0] if values.dtype == object else pandas_hash_array(values, xp)


def _category_keys(values: Any, key_dtype: np.dtype, xp: Any) -> tuple[Any, Any, Any]:
    """Table keys of an (n, k) block of category values, as Categorify and TargetEncode look them up.

    Returns:
        ``(keys, nulls, string_hashes)``: int64 keys (numeric values cast to ``key_dtype``, see
        :func:`_numeric_keys`; for strings, pandas' hash of the value); the null mask (None for an
        integer block); and the strings' pandas hashes (uint64), None for a numeric block.
    """
    if key_dtype.kind == "O":
        hashes, nulls = _string_hashes(values)
        return hashes.view(np.int64), nulls, hashes
    nulls = xp.isnan(values) if values.dtype.kind == "f" else None
    return _numeric_keys(values, nulls, key_dtype, xp), nulls, None


def _string_hashes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pandas' hashes (uint64) of an object (n, k) block of str / bytes / None, and its nulls (bool).

    Raises:
        BadValueError: bytes that are not UTF-8, or a value that is not a string, naming its
            column (position in the block) and row.
    """
    from tritonrec import _native  # noqa: PLC0415

    hashes = np.empty(values.shape, dtype=np.uint64)
    nulls = np.empty(values.shape, dtype=np.uint8)
    for j in range(values.shape[1]):
        try:
            hashes[:, j], nulls[:, j] = _native.hash_strings(values[:, j])
        except (TypeError, ValueError) as e:  # "value <row>: <reason>"
            where, _, reason = str(e).partition(": ")
            raise BadValueError(j, int(where.split()[-1]), reason) from None
    return hashes, nulls.view(np.bool_)


class IncompatibleStepError(ValueError):
    """A saved step this version of tritonrec cannot run as saved (e.g. a table built with another hash)."""


NULL_CODE = 1
"""Categorify's code for a null value."""
OOV_CODE = 2
"""Categorify's code for an out-of-vocabulary value (the first hash bucket when hashing)."""


class Step(ABC):
    """One op over a group of k columns."""

    kind: ClassVar[str]
    structural: ClassVar[bool] = False
    """True for a step that changes a list column's row lengths (it has ``apply_list``)."""

    @abstractmethod
    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        """dtype of the step's output for an input of ``input_dtype``."""

    @abstractmethod
    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        """Applies the op.

        Args:
            values: (n, k) array; never modified (it may be a read-only view of a request).
            row_index: int64 (n,) position of each row within its request.
            xp: the array module of ``values`` (numpy, or cupy on a GPU).

        Returns:
            A new (n, k) array of dtype ``output_dtype(values.dtype)``.
        """

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-serialisable parameters (vectors as lists)."""

    def arrays(self) -> dict[str, np.ndarray]:
        """Large parameters, saved as array files beside the manifest."""
        return {}

    def signature(self) -> tuple[Any, ...]:
        """Columns whose steps have equal signatures run in one group."""
        return (self.kind,)

    def to(self, xp: Any) -> Step:
        """This step with its arrays in the memory space of ``xp`` (itself when nothing moves)."""
        return self

    def _vectors(self, dtype: np.dtype, xp: Any, make: Any) -> Any:
        """Per-column parameters cast to ``dtype`` in ``xp``'s memory, made once per (dtype, xp)."""
        cache = self.__dict__.setdefault("_vector_cache", {})
        key = (dtype.str, xp.__name__)
        if key not in cache:
            cache[key] = make()
        return cache[key]


def _vector(values: Any, dtype: Any) -> np.ndarray:
    return np.asarray(values, dtype=dtype).reshape(-1)


def _float_compute_dtype(dtype: np.dtype) -> np.dtype:
    """pandas arithmetic with a Python float keeps a float dtype and promotes others to float64."""
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


class FillMissing(Step):
    """``nvtabular.ops.FillMissing(fill_val)``: NaN -> the column's fill value (float columns)."""

    kind = "fill_missing"

    def __init__(self, fill_values: Any) -> None:
        self.fill_values = _vector(fill_values, np.float64)  # (k,)

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return input_dtype

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        if values.dtype.kind != "f":
            return values
        fill = self._vectors(values.dtype, xp, lambda: xp.asarray(self.fill_values.astype(values.dtype)))
        return xp.where(xp.isnan(values), fill, values)

    def params(self) -> dict[str, Any]:
        return {"fill_values": self.fill_values.tolist()}


class Clip(Step):
    """``nvtabular.ops.Clip(min_value, max_value)``: values below min -> min, above max -> max.

    NaN stays NaN (pandas' comparison is False for NaN), and the dtype is kept.
    """

    kind = "clip"

    def __init__(self, min_values: Any | None, max_values: Any | None) -> None:
        self.min_values = None if min_values is None else _vector(min_values, np.float64)
        self.max_values = None if max_values is None else _vector(max_values, np.float64)

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


class LogOp(Step):
    """``nvtabular.ops.LogOp()``: ``log(x.astype(float32) + 1)``, float32 out."""

    kind = "log"

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return np.dtype(np.float32)

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        return xp.log(values.astype(np.float32) + np.float32(1))

    def params(self) -> dict[str, Any]:
        return {}


class Normalize(Step):
    """``nvtabular.ops.Normalize(out_dtype)``: ``(x - mean) / std`` (``x - mean`` where std == 0).

    Computed in the input's float dtype with the statistics rounded to it, as pandas does with
    Python floats; then cast to ``out_dtype`` (float64 unless the op said otherwise).
    """

    kind = "normalize"

    def __init__(self, means: Any, stds: Any, out_dtype: Any) -> None:
        self.means = _vector(means, np.float64)
        self.stds = _vector(stds, np.float64)
        self.out_dtype = np.dtype(out_dtype)

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return self.out_dtype

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        compute = _float_compute_dtype(values.dtype)
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
        self.mins = _vector(mins, stat)
        self.difs = _vector(difs, stat)
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


class HashBucket(Step):
    """``nvtabular.ops.HashBucket(num_buckets)`` on numeric and string columns: pandas' hash of the
    value (for strings, of its UTF-8 bytes; a null hashes to 2^64 - 1) and of the row's index (its
    position in the request, as for Categorify's hash buckets) modulo the column's
    ``num_buckets``, int32 out."""

    kind = "hash_bucket"

    def __init__(self, num_buckets: Any) -> None:
        self.num_buckets = _vector(num_buckets, np.int64)

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return np.dtype(np.int32)

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        buckets = self._vectors(np.dtype(np.uint64), xp, lambda: xp.asarray(self.num_buckets.astype(np.uint64)))
        return (IndexedHash().apply(values, row_index, xp) % buckets).astype(np.int32)

    def params(self) -> dict[str, Any]:
        return {"num_buckets": self.num_buckets.tolist()}


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
        self.num_buckets = _vector(num_buckets, np.int64)
        self.vocab_dtype = np.dtype(vocab_dtype)
        self.out_dtype = np.dtype(out_dtype)
        if self.vocab_dtype.kind not in "iufO":
            raise ValueError(f"vocabulary dtype {self.vocab_dtype} is neither numeric nor strings (object)")
        self._hashed = bool((self.num_buckets > 0).any())

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return self.out_dtype

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        keys, nulls, string_hashes = _category_keys(values, self.vocab_dtype, xp)
        codes = self.table.lookup_block(keys)
        missing = codes < 0
        if bool(missing.any()):
            if self._hashed:
                buckets = xp.asarray(self.num_buckets)
                value_hash = pandas_hash_array(values, xp) if string_hashes is None else string_hashes
                row_hash = combine_with_index(value_hash, _index_hashes(row_index, xp)[:, None])
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


class IndexedHash(Step):
    """The first half of a ``HashedCross`` over columns of different dtypes or transformed
    columns: each value's pandas hash combined with its row's index, uint64 out (same shape)."""

    kind = "indexed_hash"

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return np.dtype(np.uint64)

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        return combine_with_index(_value_hashes(values, xp), _index_hashes(row_index, xp)[:, None])

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
        self.defaults = _vector(defaults, np.float64)
        self.nulls = _vector(nulls, np.float64)
        self.key_dtype = np.dtype(key_dtype)
        self.out_dtype = np.dtype(out_dtype)

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return self.out_dtype

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        keys, nulls, _ = _category_keys(values, self.key_dtype, xp)
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


def _saved_table(kind: str, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> KeyTable:
    """The key table of a saved table-backed step, refused when built with another slot hash."""
    if params["table_hash"] != HASH_NAME:
        raise IncompatibleStepError(f"{kind} table built with hash {params['table_hash']!r}; this tritonrec probes with {HASH_NAME!r}: re-export the plan")
    return KeyTable(arrays["slots"], params["max_probe"])


def row_of_each_value(lengths: Any, xp: Any) -> Any:
    """int64 (sum(lengths),): for each value of a list column, the number of its row
    (``repeat(arange(n), lengths)``; cupy's ``repeat`` takes no array of counts)."""
    lengths = lengths.astype(np.int64, copy=False)
    if xp is np:
        return np.repeat(np.arange(lengths.shape[0], dtype=np.int64), lengths)
    ends = xp.cumsum(lengths)
    total = int(ends[-1]) if lengths.shape[0] else 0
    return xp.searchsorted(ends, xp.arange(total, dtype=np.int64), side="right").astype(np.int64)


class ListSlice(Step):
    """``nvtabular.ops.ListSlice(start, end, pad, pad_value)`` on a list column: each row becomes
    ``row[start:end]`` (Python slicing), padded with ``pad_value`` to ``max_elements`` when ``pad``.

    The one structural step: it changes the rows' lengths, so it runs through :meth:`apply_list` on
    the column's flat values and offsets instead of :meth:`apply`. ``start``/``end`` are the op's
    own attributes after its constructor's normalisation (``ListSlice(3)`` is ``start 0, end 3``).
    """

    kind = "list_slice"
    structural = True

    def __init__(self, start: int, end: int, pad: bool, pad_value: float, max_elements: int) -> None:
        self.start, self.end = int(start), int(end)
        self.pad, self.pad_value, self.max_elements = bool(pad), float(pad_value), int(max_elements)

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return input_dtype

    def apply(self, values: Any, row_index: Any, xp: Any) -> Any:
        raise TypeError("ListSlice runs on a list column's values and offsets (apply_list)")

    def apply_list(self, values: Any, offsets: Any, xp: Any) -> tuple[Any, Any]:
        """(nnz, 1) values and int64 (n + 1,) offsets -> the sliced (padded) values and offsets."""
        lengths = offsets[1:] - offsets[:-1]
        def bound(b: int) -> Any:  # Python's slice bound for a row of each length, in [0, length]
            return xp.clip(lengths + b, 0, None) if b < 0 else xp.minimum(lengths, b)
        first, last = bound(self.start), bound(self.end)
        kept = xp.clip(last - first, 0, None)
        out_lengths = xp.maximum(kept, self.max_elements) if self.pad else kept  # only shorter rows are padded
        out_offsets = xp.zeros(offsets.shape[0], dtype=np.int64)
        xp.cumsum(out_lengths, out=out_offsets[1:])
        total = int(out_offsets[-1])
        out = xp.full((total, values.shape[1]), self.pad_value, dtype=values.dtype) if self.pad else xp.empty((total, values.shape[1]), dtype=values.dtype)
        rows = row_of_each_value(kept, xp)  # the row of each kept value
        within = xp.arange(rows.shape[0], dtype=np.int64) - (xp.cumsum(kept) - kept)[rows]
        out[out_offsets[:-1][rows] + within] = values[offsets[:-1][rows] + first[rows] + within]
        return out, out_offsets

    def params(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "pad": self.pad, "pad_value": self.pad_value, "max_elements": self.max_elements}

    def signature(self) -> tuple[Any, ...]:
        return (self.kind, self.start, self.end, self.pad, self.pad_value)


def step_from_manifest(kind: str, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Step:
    """Rebuilds a step saved with ``kind``, ``params()`` and ``arrays()``; KeyError for an unknown kind."""
    if kind == FillMissing.kind:
        return FillMissing(params["fill_values"])
    if kind == Clip.kind:
        return Clip(params["min_values"], params["max_values"])
    if kind == LogOp.kind:
        return LogOp()
    if kind == Normalize.kind:
        return Normalize(params["means"], params["stds"], params["out_dtype"])
    if kind == NormalizeMinMax.kind:
        return NormalizeMinMax(params["mins"], params["difs"], params["integer_stats"], params["out_dtype"])
    if kind == Bucketize.kind:
        return Bucketize(params["boundaries"])
    if kind == HashBucket.kind:
        return HashBucket(params["num_buckets"])
    if kind == HashedCross.kind:
        return HashedCross(params["num_buckets"])
    if kind == IndexedHash.kind:
        return IndexedHash()
    if kind == XorBuckets.kind:
        return XorBuckets(params["num_buckets"])
    if kind == TargetEncode.kind:
        return TargetEncode(_saved_table(kind, params, arrays), arrays["values"], params["defaults"], params["nulls"],
                            params["key_dtype"], params["out_dtype"])
    if kind == ListSlice.kind:
        return ListSlice(params["start"], params["end"], params["pad"], params["pad_value"], params["max_elements"])
    if kind == Categorify.kind:
        return Categorify(_saved_table(kind, params, arrays), params["num_buckets"], params["vocab_dtype"], params["out_dtype"])
    raise KeyError(f"unknown step kind {kind!r}")
