"""What every op module builds on: :class:`Step` (one op over a group of k columns), its errors
and codes, and :class:`ColumnStep` (what compiling one NVTabular op on one column gives).

A step takes the group's values as one (n, k) array, n rows by k columns, and per-column
parameters as length-k vectors, and reproduces the arithmetic of the NVTabular 23.08 op it stands
for, dtype for dtype: an op that computes in float32 under pandas computes in float32 here. Each
step serialises to a JSON-able ``params`` dict plus named arrays (``arrays``), and is rebuilt by
its ``from_saved``; ``signature`` is what must be equal for two columns to share a group.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np


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

    @classmethod
    def from_saved(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Step:
        """The step saved with ``params()`` and ``arrays()``. The default: ``params()``'s keys are the
        constructor's arguments (a step with arrays overrides this)."""
        return cls(**params)

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


def vector(values: Any, dtype: Any) -> np.ndarray:
    return np.asarray(values, dtype=dtype).reshape(-1)


def float_compute_dtype(dtype: np.dtype) -> np.dtype:
    """pandas arithmetic with a Python float keeps a float dtype and promotes others to float64."""
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


def row_of_each_value(lengths: Any, xp: Any) -> Any:
    """int64 (sum(lengths),): for each value of a list column, the number of its row
    (``repeat(arange(n), lengths)``; cupy's ``repeat`` takes no array of counts)."""
    lengths = lengths.astype(np.int64, copy=False)
    if xp is np:
        return np.repeat(np.arange(lengths.shape[0], dtype=np.int64), lengths)
    ends = xp.cumsum(lengths)
    total = int(ends[-1]) if lengths.shape[0] else 0
    return xp.searchsorted(ends, xp.arange(total, dtype=np.int64), side="right").astype(np.int64)


class UnsupportedOpError(ValueError):
    """The workflow uses an op (or an option of one) the plan cannot reproduce exactly."""

    def __init__(self, op: str, column: str, reason: str) -> None:
        super().__init__(f"cannot compile op {op} on column {column!r}: {reason}")
        self.op = op
        self.column = column


class ColumnStep:
    """One op on one column before grouping: a signature, per-column parameters, how the
    parameters of a group's columns merge into one :class:`Step`, and the output dtype."""

    def __init__(self, signature: tuple[Any, ...], params: dict[str, Any], merge: Callable[[list[dict[str, Any]]], Step],
                 dtype: np.dtype) -> None:
        self.signature = signature
        self.params = params
        self.merge = merge
        self.dtype = np.dtype(dtype)
        """dtype of the step's output on this column."""


CompileOp = Callable[[Any, str, np.dtype, str, bool], ColumnStep]
"""``compile(op, column, dtype, out_name, on_list) -> ColumnStep``: an NVTabular op on one source
``column`` of ``dtype`` (a list column's values when ``on_list``), giving output ``out_name``;
raises :class:`UnsupportedOpError` for what the plan cannot reproduce."""


def positive_buckets(op: Any, key: Any, column: str) -> int:
    """``op.num_buckets`` (an int, or a dict keyed by ``key``) for one output; refused unless >= 1."""
    buckets = op.num_buckets if isinstance(op.num_buckets, int) else op.num_buckets.get(key)
    if not buckets or int(buckets) < 1:
        raise UnsupportedOpError(type(op).__name__, column, f"num_buckets {buckets!r}: expected a positive integer")
    return int(buckets)


@dataclasses.dataclass
class Chain:
    """How one output column is computed before grouping: from raw input column(s) through steps.

    Attributes:
        inputs: the raw input columns: one for a column's chain; a cross's sources (workflow inputs
            as they came in, of one dtype: one group); empty for a staged cross.
        steps: the ops, in order.
        dtype: the output's dtype.
        cross: True for a HashedCross (of ``inputs``, or of ``staged``).
        staged: a cross of transformed columns or of columns of different dtypes: each source's own
            chain. It compiles to one group per source (the chain, then an ``IndexedHash``, into a
            hidden uint64 column) and one group XOR-ing them.
    """

    inputs: tuple[str, ...]
    steps: list[ColumnStep]
    dtype: np.dtype
    cross: bool = False
    staged: tuple[Chain, ...] = ()

    def then(self, step: ColumnStep) -> Chain:
        """This chain followed by ``step``."""
        return dataclasses.replace(self, steps=[*self.steps, step], dtype=step.dtype)

    def raw_columns(self) -> tuple[str, ...]:
        """Every raw input column the chain reads."""
        return tuple(c for part in self.staged for c in part.inputs) if self.staged else self.inputs

    def on_list(self, list_inputs: set[str]) -> bool:
        """True for a chain of one list (multi-hot) input column."""
        return not self.cross and self.inputs[0] in list_inputs
