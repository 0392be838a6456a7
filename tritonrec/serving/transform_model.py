"""The transform as a Triton model sees it, without Triton: its tensors, request checks, batching.

``backends/nvtabular_transform/model.py`` is a thin adapter over :class:`TransformModel`: it hands
each request's input arrays in and sends the arrays or the error it gets back out.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tritonrec.serving.config import ConfigError, parameter, transform_conventions
from tritonrec.serving.dtypes import triton_dtype, wire_dtype
from tritonrec.serving.fingerprint import FingerprintMismatchError
from tritonrec.serving.lists import (
    check_list_layout, check_list_rows, list_from_tensors, list_layout_for, list_tensor_names, list_tensor_specs, list_to_tensors,
    merge_list_requests,
)
from tritonrec.serving.requests import RequestError, row_slices, run_batched
from tritonrec.serving.specs import TensorSpec
from tritonrec.transform.ops import BadValueError
from tritonrec.transform.plan import ColumnSpec, ListColumn, PlanLoadError, TransformPlan, missing_and_extra

LAYOUTS = ("per-column", "packed")


def check_layout(what: str, layout: str) -> None:
    """Raises ValueError naming ``what`` unless ``layout`` is one of :data:`LAYOUTS`."""
    if layout not in LAYOUTS:
        raise ValueError(f"{what} {layout!r}: expected one of {LAYOUTS}")


LOAD_ERRORS = (PlanLoadError, ConfigError, FingerprintMismatchError, ValueError, ImportError)
"""What loading a transform model raises for a bad plan or configuration (the message says what)."""


def _side_specs(schema: Sequence[ColumnSpec], layout: str, packed: Mapping[str, Sequence[str]], packed_name: Callable[[str], str],
                list_layout: str) -> list[TensorSpec]:
    """The tensors of one side (inputs or outputs) of the model in ``layout``: one per column, or
    one per dtype (``packed``: dtype -> its columns, named by ``packed_name``) and each list
    column's own pair."""
    if layout == "per-column":
        return _column_specs(schema, list_layout)
    lists = [s for c in schema if c.is_list for s in list_tensor_specs(c.name, c.dtype, list_layout)]
    return [TensorSpec(packed_name(d), np.dtype(d), (len(cols),)) for d, cols in packed.items()] + lists


def _column_specs(schema: Sequence[Any], list_layout: str) -> list[TensorSpec]:
    """Per-column layout: a [batch, 1] tensor per column, a list column's two tensors in its place."""
    specs: list[TensorSpec] = []
    for c in schema:
        specs.extend(list_tensor_specs(c.name, c.dtype, list_layout) if c.is_list else [TensorSpec(c.name, c.dtype, (1,))])
    return specs


def _castable(sent: np.dtype, plan: np.dtype) -> bool:
    """A value of dtype ``sent`` becomes the plan's without losing the integers clients send:
    a wider (or equal) integer, an integer or bool for a float, a wider float."""
    return (sent.kind in "iub" and plan.kind == "f") or (sent.kind != "O" and plan.kind != "O" and np.can_cast(sent, plan, "safe"))


def _input_dtypes(plan: TransformPlan, layout: str, declared: Mapping[str, Any]) -> dict[str, np.dtype]:
    """The declared input dtypes that differ from the plan's, checked (ValueError naming the column)."""
    if declared and layout != "per-column":
        raise ValueError("input_dtypes: only for the per-column layout (a packed tensor has one dtype per tensor)")
    columns = {c.name: c for c in plan.input_schema}
    out = {}
    for name, dtype in _expand(declared, [c for c in columns if not columns[c].is_list]).items():
        if name not in columns or columns[name].is_list:
            raise ValueError(f"input_dtypes: {name!r} is not a raw (non-list) input column of the plan ({sorted(columns)})")
        sent, planned = np.dtype(dtype), columns[name].dtype
        if sent != planned and not _castable(sent, planned):
            raise ValueError(f"input_dtypes: column {name!r} sent as {sent} cannot become the plan's {planned} without loss")
        if sent != planned:
            out[name] = sent
    return out


def _expand(declared: Mapping[str, Any], names: list[str]) -> dict[str, Any]:
    """``declared`` with glob patterns (``C*``) replaced by the ``names`` they match (ValueError
    for a pattern that matches none); later entries win."""
    out: dict[str, Any] = {}
    for key, value in declared.items():
        if any(ch in key for ch in "*?["):
            matched = [n for n in names if fnmatch.fnmatchcase(n, key)]
            if not matched:
                raise ValueError(f"input_dtypes: pattern {key!r} matches no raw input column ({names})")
            out.update(dict.fromkeys(matched, value))
        else:
            out[key] = value
    return out


def _float32_packing(plan: TransformPlan) -> dict[str, list[str]]:
    """The plan's packed outputs with its float64 columns in the float32 tensor (output order)."""
    floats = [c.name for c in plan.output_schema if not c.is_list and c.dtype.name in ("float32", "float64")]
    packing = {d: list(names) for d, names in plan.packed_outputs.items() if d not in ("float32", "float64")}
    if floats:
        packing["float32"] = floats
    return packing


def packed_input_name(dtype: np.dtype | str) -> str:
    """Name of the packed input tensor of one dtype, e.g. ``INPUT_INT64``."""
    return f"INPUT_{triton_dtype(dtype)}"


def packed_output_name(dtype: np.dtype | str) -> str:
    """Name of the packed output tensor of one dtype, e.g. ``OUTPUT_FP32``."""
    return f"OUTPUT_{triton_dtype(dtype)}"


class TransformModel:
    """Serves a :class:`TransformPlan` in one of two tensor layouts.

    ``per-column``: one input tensor per raw column, named as the column, [batch, 1]; one output per
    transformed column, [batch, 1] (NVTabular's Triton convention). ``packed``: one input tensor per
    dtype, ``INPUT_<TYPE>`` [batch, k], columns in ``plan.packed_inputs`` order; outputs
    ``OUTPUT_<TYPE>`` [batch, k] in ``plan.packed_outputs`` order.

    The output layout may differ from the input layout (``output_layout``): an ensemble takes
    either input layout and passes packed tensors to its next step.

    Args:
        plan: the compiled transform.
        layout: input layout, ``"per-column"`` or ``"packed"``.
        max_batch_size: the most rows one request may carry (0: no limit).
        output_layout: output layout (default: ``layout``).
        list_layout: how list columns travel (see :func:`~tritonrec.serving.lists.list_tensor_names`).
        null_string: the value of a string column that means null, as NVTabular's null (e.g. ``""``
            for clients that send missing categories as empty strings); None: every string is a value.
        input_dtypes: raw column (or glob pattern, ``C*``) -> the dtype clients send it as (per-column layout), cast to the
            plan's on the way in: a wider integer, an integer or bool for a float column, a wider
            float (e.g. Merlin's clients send categorical ids as INT32 and integer features as INT64).
        cast_float64: packed outputs carry float64 columns (e.g. ``Normalize`` without ``out_dtype``)
            cast to float32 in ``OUTPUT_FP32``, all float columns in the workflow's output order.

    Attributes:
        rows_total: rows transformed so far (requests that were rejected do not count).
        oov_columns: the Categorify output columns (see :meth:`TransformPlan.categorical_codes`),
            whose out-of-vocabulary values :attr:`oov_total` counts (every value of a list column).
    """

    def __init__(
        self, plan: TransformPlan, layout: str = "per-column", max_batch_size: int = 0, output_layout: str | None = None,
        list_layout: str = "padded", null_string: str | None = None, input_dtypes: Mapping[str, Any] | None = None,
        cast_float64: bool = False,
    ) -> None:
        output_layout = output_layout or layout
        if null_string is not None and not isinstance(null_string, str):
            raise ValueError(f"null_string {null_string!r}: expected a string (or None: no null marker)")
        self.null_string = null_string
        """A string column's value that stands for null (Triton's BYTES cannot carry one), or None."""
        self.input_dtypes = _input_dtypes(plan, layout, input_dtypes or {})
        """Raw column -> the dtype its tensor is declared with, where it differs from the plan's (cast on the way in)."""
        self.cast_float64 = bool(cast_float64)
        check_layout("layout", layout)
        check_layout("output_layout", output_layout)
        check_list_layout(list_layout, max_batch_size)
        self.plan = plan
        self.layout = layout
        self.output_layout = output_layout
        self.list_layout = list_layout
        self.max_batch_size = int(max_batch_size)
        self._out_packing = _float32_packing(plan) if cast_float64 and output_layout == "packed" else plan.packed_outputs
        self.inputs = [s if s.name not in self.input_dtypes else dataclasses.replace(s, dtype=self.input_dtypes[s.name])
                       for s in _side_specs(plan.input_schema, layout, plan.packed_inputs, packed_input_name, list_layout)]
        self.outputs = _side_specs(plan.output_schema, output_layout, self._out_packing, packed_output_name, list_layout)
        self._plan_dtypes = {c.name: c.dtype for c in plan.input_schema}
        self._input_by_name = {s.name: s for s in self.inputs}
        self._list_inputs = {c.name: list_tensor_names(c.name, list_layout) for c in plan.input_schema if c.is_list}
        self._list_tensors = {t for pair in self._list_inputs.values() for t in pair}
        self.rows_total = 0
        self._oov_at = _oov_locations(plan, output_layout, self._out_packing)
        self.oov_inputs = list(self._oov_at)
        """Raw columns whose out-of-vocabulary rows :meth:`oov_flags` marks (see :meth:`TransformPlan.oov_inputs`)."""
        codes = plan.categorical_codes()
        self.oov_columns = list(codes)
        # (slot, column) counted column by column: list columns (value by value), and every column
        # when the outputs are per column; packed outputs are counted a tensor at a time
        self._oov_by_column = [(slot, c) for slot, c in enumerate(self.oov_columns)
                               if c in plan.list_outputs or output_layout == "per-column"]
        self._oov_counts = np.zeros(len(codes), dtype=np.int64)
        self._oov_first = np.array([c[1] for c in codes.values()], dtype=np.int64)
        self._oov_end = np.array([c[2] for c in codes.values()], dtype=np.int64)
        # Packed outputs: per output tensor, the Categorify columns in it and their counter slots.
        positions = {n: (d, j) for d, names in plan.packed_outputs.items() for j, n in enumerate(names)}
        # (tensor, its columns, counter slots, first and end OOV codes in the plan's memory)
        self._oov_blocks: list[tuple[str, Any, np.ndarray, Any, Any]] = []
        if output_layout == "packed":
            by_dtype: dict[str, list[tuple[int, int]]] = {}
            for slot, column in enumerate(self.oov_columns):
                if column in plan.list_outputs:
                    continue
                dtype_name, j = positions[column]
                by_dtype.setdefault(dtype_name, []).append((j, slot))
            for dtype_name, pairs in by_dtype.items():
                idx = np.array([j for j, _ in pairs], dtype=np.int64)
                slots = np.array([slot for _, slot in pairs], dtype=np.int64)
                width = len(plan.packed_outputs[dtype_name])
                columns = slice(None) if np.array_equal(idx, np.arange(width)) else idx
                self._oov_blocks.append((packed_output_name(dtype_name), columns, slots,
                                         plan.xp.asarray(self._oov_first[slots]), plan.xp.asarray(self._oov_end[slots])))

    @property
    def oov_total(self) -> dict[str, int]:
        """Output column -> values encoded out of vocabulary so far (Categorify outputs)."""
        return dict(zip(self.oov_columns, self._oov_counts.tolist()))

    def oov_flags(self, result: Mapping[str, Any]) -> np.ndarray:
        """bool [rows, len(oov_inputs)] in host memory: True where the request's value of that raw
        column was encoded out of vocabulary. ``result``: one request's outputs (from :meth:`execute`)."""
        xp = self.plan.xp
        flags = [(result[tensor][:, j] >= first) & (result[tensor][:, j] < end) for tensor, j, first, end in self._oov_at.values()]
        if not flags:
            rows = next(iter(result.values())).shape[0] if result else 0
            return np.zeros((rows, 0), dtype=bool)
        stacked = xp.stack(flags, axis=1)
        return stacked if xp is np else stacked.get()

    def _count(self, merged: Mapping[str, np.ndarray], rows: int, lists: Mapping[str, ListColumn]) -> None:
        self.rows_total += rows
        if not self.oov_columns or rows == 0:
            return
        xp = self.plan.xp
        for slot, column in self._oov_by_column:
            codes = lists[column].values if column in lists else merged[column]
            self._oov_counts[slot] += int(xp.count_nonzero((codes >= self._oov_first[slot]) & (codes < self._oov_end[slot])))
        for tensor, columns, slots, first, end in self._oov_blocks:
            block = merged[tensor][:, columns]
            counts = ((block >= first) & (block < end)).sum(axis=0)
            self._oov_counts[slots] += counts if xp is np else counts.get()

    @classmethod
    def from_directory(
        cls, plan_dir: str | Path, layout: str = "per-column", max_batch_size: int = 0, output_layout: str | None = None,
        list_layout: str = "padded", **conventions: Any,
    ) -> TransformModel:
        """Loads the plan in ``plan_dir`` (see :meth:`TransformPlan.load` for its errors);
        ``conventions``: ``null_string``, ``input_dtypes``, ``cast_float64``."""
        return cls(TransformPlan.load(plan_dir), layout, max_batch_size, output_layout, list_layout, **conventions)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], plan_dir: str | Path) -> TransformModel:
        """The model a ``config.pbtxt`` (Triton's JSON form) describes, its plan loaded from
        ``plan_dir``: parameters ``layout``, ``output_layout`` and the conventions of
        :func:`~tritonrec.serving.config.transform_conventions`; lists padded when Triton batches
        (``max_batch_size`` > 0), else flat with offsets. Errors: :data:`LOAD_ERRORS`."""
        layout = parameter(config, "layout", "per-column")
        max_batch_size = int(config.get("max_batch_size", 0))
        return cls.from_directory(plan_dir, layout, max_batch_size, parameter(config, "output_layout", layout),
                                  list_layout_for(max_batch_size), **transform_conventions(config))

    def _strings(self, values: np.ndarray) -> np.ndarray:
        """A string block with :attr:`null_string` (as str or UTF-8 bytes) replaced by None (null)."""
        if self.null_string is None or values.size == 0:
            return values
        marked = (values == self.null_string) | (values == self.null_string.encode())
        return np.where(marked, None, values) if marked.any() else values

    def check_request(self, tensors: Mapping[str, Any]) -> int:
        """Checks one request's inputs; returns its number of rows.

        Raises:
            RequestError: a missing or unexpected input, a wrong dtype or shape, rows that differ
                between inputs, or more rows than ``max_batch_size``; the message names the input.
        """
        missing, extra = missing_and_extra(tensors, list(self._input_by_name))
        if missing:
            raise RequestError(f"missing input(s) {missing}: this model takes {sorted(self._input_by_name)}")
        if extra:
            raise RequestError(f"unexpected input(s) {extra}: this model takes {sorted(self._input_by_name)}")
        rows = None
        for name, spec in self._input_by_name.items():
            array = tensors[name]
            if array.dtype != spec.dtype:
                raise RequestError(f"input {name!r} has dtype {wire_dtype(array.dtype)}: expected {spec.triton_dtype}")
            if name in self._list_tensors:
                continue
            if array.ndim != 1 + len(spec.dims) or tuple(array.shape[1:]) != spec.dims:
                raise RequestError(f"input {name!r} has shape {list(array.shape)}: expected [batch, {', '.join(map(str, spec.dims))}]")
            if rows is None:
                rows = int(array.shape[0])
            elif array.shape[0] != rows:
                raise RequestError(f"input {name!r} has {array.shape[0]} rows, other inputs have {rows}")
        return check_list_rows(tensors, self._list_inputs, self.list_layout, rows, "list column", self.max_batch_size, self.plan.xp)

    def _list_columns(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, ListColumn]:
        """The list input columns of the (checked) requests, merged."""
        xp = self.plan.xp
        merged = {}
        for column, (values_name, second) in self._list_inputs.items():
            merged[column] = merge_list_requests(
                [list_from_tensors(column, r[values_name], r[second], self.list_layout, xp) for r in batch], xp)
        return merged

    def _list_outputs(self, column: str, result: ListColumn, rows: Sequence[int]) -> list[dict[str, Any]]:
        """Per request (of ``rows`` rows each), the two output tensors of list output ``column``."""
        xp = self.plan.xp
        values_name, second = list_tensor_names(column, self.list_layout)
        out = []
        for block in row_slices(rows):
            first = int(result.offsets[block.start])
            offsets = result.offsets[block.start : block.stop + 1] - first
            values, other = list_to_tensors(ListColumn(result.values[first : first + int(offsets[-1])], offsets), self.list_layout, xp)
            out.append({values_name: values, second: other})
        return out

    def packed_input_columns(self) -> dict[str, list[str]]:
        """Packed input tensor name -> its column names in order (empty for the per-column layout)."""
        if self.layout != "packed":
            return {}
        return {packed_input_name(d): list(names) for d, names in self.plan.packed_inputs.items()}

    def execute(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, np.ndarray] | RequestError]:
        """Transforms several requests in one plan run.

        Args:
            requests: per request, input name -> array ([batch, ...] as in ``inputs``; host memory).

        Returns:
            Per request, in order: output name -> C-contiguous array the caller owns, or the
            :class:`RequestError` that rejects that request (the others are still served).
        """
        return run_batched(requests, self.check_request, self._run, retry_on=(BadValueError,))

    def _column(self, spec: TensorSpec, parts: list[Any], xp: Any) -> Any:
        """One input tensor of every request of a batch, joined (strings on the host, nulls marked;
        a declared input dtype cast to the plan's)."""
        if spec.dtype == object:
            return self._strings(_concat(parts, np))
        joined = _concat(parts, xp)
        return joined.astype(self._plan_dtypes[spec.name]) if spec.name in self.input_dtypes else joined

    def _packed_outputs(self, columns: Mapping[str, Any], xp: Any) -> dict[str, Any]:
        """Output column -> (n,) array, as the packed output tensors (cast where they pack another dtype)."""
        return {packed_output_name(d): xp.stack([columns[c].astype(d, copy=False) for c in names], axis=1)
                for d, names in self._out_packing.items()}

    def _run(self, batch: list[Mapping[str, Any]], rows: list[int]) -> list[Any]:
        """Checked requests (``rows`` rows each) merged and transformed in one plan run; per request
        its outputs (a value no step can take raises BadValueError)."""
        xp = self.plan.xp  # numpy, or cupy for a plan on a GPU (requests then hold cupy arrays)
        row_index = np.concatenate([np.arange(n, dtype=np.int64) for n in rows])
        lists = self._list_columns(batch)
        if self.layout == "per-column":
            columns = {
                spec.name: self._column(spec, [r[spec.name] for r in batch], xp).reshape(-1)
                for spec in self.inputs if spec.name not in self._list_tensors
            }
            transformed = self.plan.transform_unchecked({**columns, **lists}, row_index)  # checked per request above
            if self.output_layout == "per-column":
                merged = {c.name: transformed[c.name].reshape(-1, 1) for c in self.plan.output_schema if not c.is_list}
            else:
                merged = self._packed_outputs(transformed, xp)
        else:
            packed = {
                spec.dtype.name: self._column(spec, [r[spec.name] for r in batch], xp)
                for spec in self.inputs if spec.name not in self._list_tensors
            }
            transformed = self.plan.transform_packed({**packed, **lists}, row_index=row_index)
            if self.output_layout == "packed" and self._out_packing is self.plan.packed_outputs:
                merged = {packed_output_name(d): transformed[d] for d in self.plan.packed_outputs}
            elif self.output_layout == "packed":
                merged = self._packed_outputs({n: transformed[d][:, j] for d, names in self.plan.packed_outputs.items()
                                               for j, n in enumerate(names)}, xp)
            else:
                merged = {}
                for dtype_name, names in self.plan.packed_outputs.items():
                    for j, name in enumerate(names):
                        merged[name] = xp.ascontiguousarray(transformed[dtype_name][:, j : j + 1])
        self._count(merged, int(row_index.shape[0]), {c: transformed[c] for c in self.plan.list_outputs})
        list_parts = [self._list_outputs(c, transformed[c], rows) for c in self.plan.list_outputs]
        results = []
        for k, block in enumerate(row_slices(rows)):
            result = dict(merged) if len(rows) == 1 else {name: xp.ascontiguousarray(a[block]) for name, a in merged.items()}
            for parts in list_parts:
                result.update(parts[k])
            results.append(result)
        return results


def _oov_locations(plan: TransformPlan, output_layout: str, packing: Mapping[str, list[str]]) -> dict[str, tuple[str, int, int, int]]:
    """Raw column -> where a request's outputs hold its codes and its OOV range: ``(output tensor,
    column index in it, oov_first, oov_end)`` (index 0 of a [rows, 1] tensor for per-column outputs)."""
    positions = {n: (packed_output_name(d), j) for d, names in packing.items() for j, n in enumerate(names)}
    located = {}
    for column, (output, first, end) in plan.oov_inputs().items():
        tensor, j = (output, 0) if output_layout == "per-column" else positions[output]
        located[column] = (tensor, j, first, end)
    return located


def _concat(arrays: list[Any], xp: Any = np) -> Any:
    return arrays[0] if len(arrays) == 1 else xp.concatenate(arrays)


