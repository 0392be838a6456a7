"""TransformPlan: a fitted NVTabular workflow compiled to vectorised array code.

A plan is a directory (written and read by :mod:`tritonrec.transform.plan_io`). Running it needs
numpy (cupy on a GPU) and, for the fastest categorical lookups on the CPU, tritonrec's own compiled
core; nvtabular, dask and pandas are needed only to compile it.

Columns that go through the same chain of ops run together as one *group*: the group's values are
one (n, k) array and each op is one array operation over all k columns.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tritonrec.transform.ops import BadValueError, Categorify, Step, row_of_each_value


class PlanLoadError(OSError):
    """A plan directory cannot be loaded; the message names the file and the reason."""


@dataclasses.dataclass(frozen=True)
class ColumnSpec:
    """One column of a plan's input or output: its name, numpy dtype (of its values, for a list
    column) and whether each row is a list of values (a multi-hot column)."""

    name: str
    dtype: np.dtype
    is_list: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype.name, **({"list": True} if self.is_list else {})}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ColumnSpec:
        return cls(str(data["name"]), np.dtype(data["dtype"]), bool(data.get("list", False)))


@dataclasses.dataclass(frozen=True)
class ListColumn:
    """A batch of a list column in NVTabular's flat form: row ``i`` is
    ``values[offsets[i]:offsets[i + 1]]``.

    Attributes:
        values: (nnz,) array of the column's dtype (numpy, or cupy for a GPU plan).
        offsets: integer (n + 1,) array, ``offsets[0] == 0``, non-decreasing, ``offsets[-1] == nnz``.
    """

    values: Any
    offsets: Any

    @property
    def lengths(self) -> Any:
        """Integer (n,) number of values in each row."""
        return self.offsets[1:] - self.offsets[:-1]

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    @classmethod
    def from_rows(cls, rows: Any, dtype: Any) -> ListColumn:
        """The column of ``rows``: one list or array per row (None: an empty row), as pandas holds a
        list column; values cast to ``dtype``. TypeError or ValueError for a row that does not cast."""
        parts = [np.asarray(r if r is not None else [], dtype=dtype).reshape(-1) for r in rows]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([p.size for p in parts], out=offsets[1:])
        return cls(np.concatenate(parts) if parts else np.zeros(0, dtype=dtype), offsets)


def check_offsets(name: str, offsets: Any, nnz: int, xp: Any = np) -> Any:
    """int64 ``offsets`` of list column ``name`` with ``nnz`` values, checked.

    Raises:
        ValueError: naming the column: not 1-D integers, not starting at 0, decreasing, or not
            ending at the number of values.
    """
    offsets = xp.asarray(offsets)
    if offsets.ndim != 1 or offsets.dtype.kind not in "iu" or offsets.shape[0] < 1:
        raise ValueError(f"list column {name!r}: offsets have dtype {offsets.dtype} and shape {tuple(offsets.shape)}: "
                         "expected integers (n + 1,)")
    offsets = offsets.astype(np.int64, copy=False)
    if int(offsets[0]) != 0:
        raise ValueError(f"list column {name!r}: offsets start at {int(offsets[0])}: expected 0")
    steps = offsets[1:] - offsets[:-1]
    if steps.shape[0] and int(steps.min()) < 0:
        row = int(xp.argmax(steps < 0))
        raise ValueError(f"list column {name!r}: offsets decrease at row {row} ({int(offsets[row])} -> {int(offsets[row + 1])}): "
                         "expected non-decreasing offsets")
    if int(offsets[-1]) != nnz:
        raise ValueError(f"list column {name!r}: offsets end at {int(offsets[-1])} but there are {nnz} values")
    return offsets


@dataclasses.dataclass
class PlanGroup:
    """Columns that share one chain of steps.

    ``inputs[j]`` (an input column) becomes ``outputs[j]`` (an output column) through ``steps``;
    the same input may feed several groups.
    """

    inputs: list[str]
    outputs: list[str]
    input_dtype: np.dtype
    steps: list[Step]
    is_list: bool = False
    """A group of one list column: it runs on the column's flat values (and offsets)."""

    @property
    def on_host(self) -> bool:
        """A group of string columns: it runs with numpy even in a GPU plan (strings cannot be
        device arrays); its output then moves to the device."""
        return self.input_dtype == object

    def run_in(self, values: Any, row_index: Any, xp: Any) -> Any:
        """:meth:`run` in a plan on ``xp``: a host group on the host, its output moved to ``xp``."""
        if self.on_host and xp is not np:
            return xp.asarray(self.run(np.asarray(values), np.asarray(row_index), np))
        return self.run(values, row_index, xp)

    @property
    def output_dtype(self) -> np.dtype:
        dtype = self.input_dtype
        for step in self.steps:
            dtype = np.dtype(step.output_dtype(dtype))
        return dtype

    def run(self, values: Any, row_index: Any, xp: Any) -> Any:
        """(n, k) group input of ``input_dtype`` -> (n, k) output of ``output_dtype``.

        NaN and infinities are values here, as in pandas (log of a negative number is NaN), so
        numpy's floating-point warnings are silenced.
        """
        return self._run(values, row_index, xp, None)[0]

    def run_list(self, column: ListColumn, row_index: Any, xp: Any) -> ListColumn:
        """A list group's column -> its output column (values of ``output_dtype``).

        ``row_index`` is int64 (n,), one entry per row; each value gets its row's."""
        row_index = xp.asarray(row_index)
        value_index = row_index[row_of_each_value(column.lengths, xp)]
        values, offsets = self._run(column.values.reshape(-1, 1), value_index, xp, column.offsets, row_index)
        return ListColumn(values.reshape(-1), offsets)

    def _run(self, values: Any, row_index: Any, xp: Any, offsets: Any, row_positions: Any = None) -> tuple[Any, Any]:
        """The steps on ``values``; for a list group ``row_index`` is per value, ``offsets`` and
        ``row_positions`` (the per-row index) are the rows', and structural steps change them."""
        with np.errstate(all="ignore"):
            try:
                for step in self.steps:
                    if step.structural:
                        values, offsets = step.apply_list(values, offsets, xp)
                        row_index = row_positions[row_of_each_value(offsets[1:] - offsets[:-1], xp)]
                        continue
                    values = step.apply(values, row_index, xp)
            except BadValueError as e:
                if isinstance(e.column, int):
                    raise BadValueError(self.inputs[e.column], e.row, e.reason) from None
                raise
        return values, offsets


def missing_and_extra(given: Mapping[str, Any], expected: Sequence[str]) -> tuple[list[str], list[str]]:
    """Names of ``expected`` absent from ``given`` (in order), and names in ``given`` not expected (sorted)."""
    return [name for name in expected if name not in given], sorted(set(given) - set(expected))


class TransformPlan:
    """A compiled workflow: runs ``nvtabular.Workflow.transform``'s arithmetic on numpy arrays.

    Attributes:
        input_schema: the raw columns a request carries, in order, with their dtypes.
        output_schema: the transformed columns, in the workflow's output order, with dtypes.
        nvtabular_version: the NVTabular release whose semantics the plan reproduces.
        fingerprint: hex digest of the NVTabular version and every fitted statistic; parts trained
            against other statistics (embedding stores, scorers) are refused by it.
    """

    def __init__(
        self,
        input_schema: Sequence[ColumnSpec],
        output_schema: Sequence[ColumnSpec],
        groups: Sequence[PlanGroup],
        nvtabular_version: str,
        xp: Any = np,
        fingerprint: str | None = None,
        hidden_schema: Sequence[ColumnSpec] = (),
    ) -> None:
        self.input_schema = list(input_schema)
        self.output_schema = list(output_schema)
        # intermediate columns: outputs of earlier groups that later groups take as inputs (the
        # per-column hashes of a HashedCross of transformed or mixed-dtype columns)
        self.hidden_schema = list(hidden_schema)
        self.groups = list(groups)
        self.nvtabular_version = nvtabular_version
        self.xp = xp
        self._input_dtypes = {c.name: c.dtype for c in self.input_schema}
        self.list_inputs = [c.name for c in self.input_schema if c.is_list]
        self.list_outputs = [c.name for c in self.output_schema if c.is_list]
        out_dtypes = {c.name: c.dtype for c in [*self.output_schema, *self.hidden_schema]}
        readable = dict(self._input_dtypes)  # what a group may read: inputs, and hidden columns made before it
        hidden = {c.name: c.dtype for c in self.hidden_schema}
        for group in self.groups:
            lists = {name in self.list_inputs for name in group.inputs} | {name in self.list_outputs for name in group.outputs}
            if lists != {group.is_list} or (group.is_list and len(group.inputs) != 1):
                raise ValueError(f"group {group.inputs} -> {group.outputs}: a list group is one list column in and out, "
                                 "and list columns are in list groups only")
            for name in group.inputs:
                if name not in readable:
                    raise ValueError(f"group input {name!r} is neither in the input schema nor a hidden column made before")
                if readable[name] != group.input_dtype:
                    raise ValueError(f"group input {name!r} has dtype {group.input_dtype}, schema says {readable[name]}")
            for name in group.outputs:
                if out_dtypes.get(name) != group.output_dtype:
                    raise ValueError(f"output {name!r}: groups compute {group.output_dtype}, schema says {out_dtypes.get(name)}")
                if name in hidden:
                    readable[name] = hidden[name]
        produced = [name for g in self.groups for name in g.outputs]
        if sorted(produced) != sorted(out_dtypes):
            raise ValueError("the groups do not produce exactly the output and hidden schemas' columns")
        # Where each output column lives: (group number, column within the group).
        self._output_site = {name: (gi, j) for gi, g in enumerate(self.groups) for j, name in enumerate(g.outputs)}
        self._build_packing()
        self.fingerprint = fingerprint or self._compute_fingerprint()

    # ----------------------------------------------------------------------------------- packing
    def _build_packing(self) -> None:
        """Packed layout: one (n, k) tensor per dtype, columns in schema order."""
        self.packed_inputs: dict[str, list[str]] = {}
        for col in self.input_schema:
            if not col.is_list:
                self.packed_inputs.setdefault(col.dtype.name, []).append(col.name)
        self.packed_outputs: dict[str, list[str]] = {}
        for col in self.output_schema:
            if not col.is_list:
                self.packed_outputs.setdefault(col.dtype.name, []).append(col.name)
        in_pos = {name: (d, i) for d, names in self.packed_inputs.items() for i, name in enumerate(names)}
        out_pos = {name: (d, i) for d, names in self.packed_outputs.items() for i, name in enumerate(names)}
        # For each group: (packed input dtype, column indices) when all inputs share one tensor.
        self._group_packed_in: list[tuple[str, np.ndarray]] = []
        self._group_packed_out: list[tuple[str, Any]] = []
        if self.hidden_schema:  # staged groups: transform_packed goes by columns
            return
        for g in self.groups:
            if g.is_list:  # list columns travel as their own (values, offsets), never packed
                self._group_packed_in.append(("", np.zeros(0, dtype=np.int64)))
                self._group_packed_out.append(("", slice(0, 0)))
                continue
            dtype_name = g.input_dtype.name
            idx = np.array([in_pos[name][1] for name in g.inputs], dtype=np.int64)
            self._group_packed_in.append((dtype_name, idx))
            out_dtype = g.output_dtype.name
            out_idx = np.array([out_pos[name][1] for name in g.outputs], dtype=np.int64)
            contiguous = out_idx.size > 0 and bool(np.all(np.diff(out_idx) == 1))
            self._group_packed_out.append(
                (out_dtype, slice(int(out_idx[0]), int(out_idx[-1]) + 1) if contiguous else out_idx)
            )

    # ------------------------------------------------------------------------------ categorical
    def categorical_codes(self) -> dict[str, tuple[int, int, int]]:
        """Output columns encoded by Categorify, in output order: name -> ``(cardinality,
        oov_first, oov_end)``. ``cardinality`` is the embedding table size a model needs (codes
        ``0 .. cardinality-1``); codes in ``[oov_first, oov_end)`` are out-of-vocabulary values."""

        found = {}
        for group in self.groups:
            encoders = [s for s in group.steps if isinstance(s, Categorify)]
            if encoders:
                for name, ranges in zip(group.outputs, encoders[-1].code_ranges()):
                    found[name] = ranges
        return {c.name: found[c.name] for c in self.output_schema if c.name in found}

    def oov_inputs(self) -> dict[str, tuple[str, int, int]]:
        """Raw input columns that Categorify encodes one to one (a non-list group of as many outputs
        as inputs), in input order: input -> ``(output, oov_first, oov_end)``, the output column
        whose codes in ``[oov_first, oov_end)`` mean the input's value was out of vocabulary."""
        codes = self.categorical_codes()
        found: dict[str, tuple[str, int, int]] = {}
        for group in self.groups:
            if group.is_list or len(group.inputs) != len(group.outputs):
                continue
            for name, output in zip(group.inputs, group.outputs):
                if output in codes and name not in found:
                    found[name] = (output, codes[output][1], codes[output][2])
        return {c.name: found[c.name] for c in self.input_schema if c.name in found}

    def _compute_fingerprint(self) -> str:
        from tritonrec.transform.plan_io import fingerprint  # noqa: PLC0415 - plan_io builds plans

        return fingerprint(self.nvtabular_version, self.groups)

    # ---------------------------------------------------------------------------------- running
    def _row_index(self, n: int, row_index: Any | None) -> Any:
        if row_index is None:
            return np.arange(n, dtype=np.int64)
        row_index = np.asarray(row_index, dtype=np.int64).reshape(-1)
        if row_index.shape[0] != n:
            raise ValueError(f"row_index has {row_index.shape[0]} entries, expected one per row ({n})")
        return row_index

    def _check_list_column(self, name: str, column: Any) -> ListColumn:
        xp = self.xp
        if isinstance(column, tuple) and len(column) == 2:
            column = ListColumn(*column)
        if not isinstance(column, ListColumn):
            raise TypeError(f"input column {name!r} is a list column: expected a ListColumn (values, offsets), got {type(column).__name__}")
        values = self._check_column(name, column.values)
        return ListColumn(values, check_offsets(name, column.offsets, int(values.shape[0]), xp))

    def _check_column(self, name: str, values: Any) -> Any:
        expected = self._input_dtypes[name]
        xp = np if expected == object else self.xp  # strings stay on the host
        values = xp.asarray(values)
        if values.ndim == 2 and values.shape[1] == 1:
            values = values.reshape(-1)
        if values.ndim != 1:
            raise ValueError(f"input column {name!r} has shape {tuple(values.shape)}: expected (n,) or (n, 1)")
        if values.dtype != expected:
            if not np.can_cast(values.dtype, expected, casting="safe"):
                raise TypeError(f"input column {name!r} has dtype {values.dtype}: expected {expected}")
            values = values.astype(expected)
        return values

    def transform(self, columns: Mapping[str, Any], row_index: Any | None = None) -> dict[str, Any]:
        """Transforms a batch given as one array per input column.

        Args:
            columns: input column name -> (n,) array (numpy, or cupy for a GPU plan) of the schema's
                dtype, or one that casts to it safely; for a list column, a :class:`ListColumn`
                (or a ``(values, offsets)`` pair) of n rows. Float NaN is a missing value.
            row_index: int64 (n,) position of each row within its request (affects only hash
                buckets for out-of-vocabulary values); default ``arange(n)``, one request.

        Returns:
            Output column name -> (n,) C-contiguous array of the output schema's dtype (a
            :class:`ListColumn` with int64 offsets for a list column), in the workflow's output order.

        Raises:
            KeyError: an input column is missing. ValueError: an unexpected column, a wrong shape
            or columns of different lengths. TypeError: a dtype that does not cast safely.
        """
        missing, extra = missing_and_extra(columns, list(self._input_dtypes))
        if missing:
            raise KeyError(f"input column(s) {missing} missing: expected {[c.name for c in self.input_schema]}")
        if extra:
            raise ValueError(f"unexpected input column(s) {extra}: expected {[c.name for c in self.input_schema]}")
        checked = {
            name: self._check_list_column(name, columns[name]) if name in self.list_inputs else self._check_column(name, columns[name])
            for name in self._input_dtypes
        }
        lengths = {name: len(v) if isinstance(v, ListColumn) else int(v.shape[0]) for name, v in checked.items()}
        n = next(iter(lengths.values()), 0)
        if any(length != n for length in lengths.values()):
            raise ValueError(f"input columns have different lengths: {lengths}")
        return self.transform_unchecked(checked, self._row_index(n, row_index))

    def transform_unchecked(self, columns: Mapping[str, Any], row_index: Any) -> dict[str, Any]:
        """:meth:`transform` for inputs already checked: every input column present, 1-D, of the
        schema's dtype and of one length n; ``row_index`` int64 (n,)."""
        xp = self.xp
        columns = dict(columns)
        results = []
        for group in self.groups:
            if group.is_list:
                results.append(group.run_list(columns[group.inputs[0]], row_index, xp))
                continue
            block = (np if group.on_host else xp).stack([columns[n] for n in group.inputs], axis=1)
            results.append(group.run_in(block, row_index, xp))
            if self.hidden_schema:
                for j, name in enumerate(group.outputs):
                    columns[name] = results[-1][:, j]
        out = {}
        for spec in self.output_schema:
            gi, j = self._output_site[spec.name]
            out[spec.name] = results[gi] if spec.is_list else xp.ascontiguousarray(results[gi][:, j])
        return out

    def _check_packed(self, tensors: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
        """(the packed inputs as arrays of their dtype and the list columns checked, rows) of
        :meth:`transform_packed`'s ``tensors``; KeyError, ValueError or TypeError naming the input."""
        xp = self.xp
        expected = [*self.packed_inputs, *self.list_inputs]
        missing, extra = missing_and_extra(tensors, expected)
        if missing:
            raise KeyError(f"packed input(s) {missing} missing: expected {sorted(expected)}")
        if extra:
            raise ValueError(f"unexpected packed input(s) {extra}: expected {sorted(expected)}")
        n = None
        checked = {}
        for name in self.list_inputs:
            checked[name] = self._check_list_column(name, tensors[name])
            if n is None:
                n = len(checked[name])
            elif len(checked[name]) != n:
                raise ValueError(f"list column {name!r} has {len(checked[name])} rows, other inputs have {n}")
        for dtype_name, names in self.packed_inputs.items():
            values = (np if dtype_name == "object" else xp).asarray(tensors[dtype_name])
            if values.ndim != 2 or values.shape[1] != len(names):
                raise ValueError(f"packed input {dtype_name!r} has shape {tuple(values.shape)}: expected (n, {len(names)})")
            if values.dtype != np.dtype(dtype_name):
                raise TypeError(f"packed input {dtype_name!r} has dtype {values.dtype}: expected {dtype_name}")
            if n is None:
                n = int(values.shape[0])
            elif values.shape[0] != n:
                raise ValueError(f"packed inputs have different numbers of rows ({n} and {values.shape[0]})")
            checked[dtype_name] = values
        return checked, n or 0

    def transform_packed(self, tensors: Mapping[str, Any], row_index: Any | None = None) -> dict[str, Any]:
        """Transforms a batch in the packed layout: one (n, k) array per dtype.

        Args:
            tensors: dtype name (e.g. ``"int64"``) -> (n, k) array whose columns are
                ``packed_inputs[dtype]`` in that order; and each list column by its name, as in
                :meth:`transform` (list columns are never packed).
            row_index: as in :meth:`transform`.

        Returns:
            dtype name -> (n, k) C-contiguous array whose columns are ``packed_outputs[dtype]``;
            list output columns by name (:class:`ListColumn`).
        """
        xp = self.xp
        checked, n = self._check_packed(tensors)
        rows = self._row_index(n, row_index)
        if self.hidden_schema:
            columns = {name: values[:, j] for d, values in checked.items() if d in self.packed_inputs
                       for j, name in enumerate(self.packed_inputs[d])}
            columns.update({name: checked[name] for name in self.list_inputs})
            out = self.transform_unchecked(columns, rows)
            packed = {d: xp.stack([out[c] for c in names], axis=1) if n else xp.empty((0, len(names)), dtype=np.dtype(d))
                      for d, names in self.packed_outputs.items()}
            return {**packed, **{name: out[name] for name in self.list_outputs}}
        outputs = {d: xp.empty((n, len(names)), dtype=np.dtype(d)) for d, names in self.packed_outputs.items()}
        for group, (in_dtype, in_idx), (out_dtype, out_idx) in zip(
            self.groups, self._group_packed_in, self._group_packed_out
        ):
            if group.is_list:
                outputs[group.outputs[0]] = group.run_list(checked[group.inputs[0]], rows, xp)
                continue
            values = checked[in_dtype]
            if in_idx.size != values.shape[1] or not np.array_equal(in_idx, np.arange(values.shape[1])):
                values = values[:, in_idx if group.on_host else xp.asarray(in_idx)]
            outputs[out_dtype][:, out_idx if isinstance(out_idx, slice) else xp.asarray(out_idx)] = group.run_in(values, rows, xp)
        return outputs

    # ------------------------------------------------------------------------------ persistence
    def to(self, xp: Any) -> TransformPlan:
        """The same plan running on array module ``xp`` (e.g. cupy), its arrays moved there."""
        groups = [PlanGroup(g.inputs, g.outputs, g.input_dtype, g.steps if g.on_host else [s.to(xp) for s in g.steps], g.is_list)
                  for g in self.groups]
        return TransformPlan(self.input_schema, self.output_schema, groups, self.nvtabular_version, xp, self.fingerprint, self.hidden_schema)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the plan to directory ``path`` (created; existing plan files are replaced); see
        :mod:`tritonrec.transform.plan_io` for the layout."""
        from tritonrec.transform.plan_io import save_plan  # noqa: PLC0415 - plan_io builds plans

        return save_plan(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], verify: bool = True) -> TransformPlan:
        """Loads a plan directory written by :meth:`save`.

        Args:
            path: the plan directory.
            verify: check every array file against the size and SHA-256 recorded in the
                manifest (default). The manifest's own seal is always checked.

        Raises:
            PlanLoadError: naming the file and the reason: missing or damaged files (with the
                recorded and the found checksum), an edited manifest, another format version, an
                unsupported NVTabular version, or a fingerprint mismatch.
        """
        from tritonrec.transform.plan_io import load_plan  # noqa: PLC0415 - plan_io builds plans

        return load_plan(path, verify)

    def __repr__(self) -> str:
        return (
            f"TransformPlan({len(self.input_schema)} inputs -> {len(self.output_schema)} outputs, "
            f"{len(self.groups)} groups, nvtabular {self.nvtabular_version}, fingerprint {self.fingerprint})"
        )
