"""The transform as a Triton model sees it, without Triton: tensor specs, request checks, batching.

``backends/nvtabular_transform/model.py`` is a thin adapter over :class:`TransformModel`: it hands
each request's input arrays in and sends the arrays or the error it gets back out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tritonrec.transform.plan import ListColumn, TransformPlan, check_offsets, missing_and_extra
from tritonrec.transform.steps import BadValueError
from tritonrec.triton_types import triton_dtype, wire_dtype

LAYOUTS = ("per-column", "packed")
LIST_LAYOUTS = ("padded", "offsets")


def list_layout_for(max_batch_size: int) -> str:
    """The list convention of a model: padded values + lengths when Triton batches it, flat values +
    offsets (NVTabular's) with ``max_batch_size`` 0 (Triton cannot batch flat values and offsets)."""
    return "padded" if max_batch_size else "offsets"


def check_list_layout(list_layout: str, max_batch_size: int) -> None:
    """Raises ValueError for a list layout that is not one of :data:`LIST_LAYOUTS`, or flat
    offsets with Triton batching (which cannot batch them)."""
    if list_layout not in LIST_LAYOUTS:
        raise ValueError(f"list_layout {list_layout!r}: expected one of {LIST_LAYOUTS}")
    if list_layout == "offsets" and max_batch_size:
        raise ValueError(f"list_layout 'offsets' with max_batch_size {max_batch_size}: flat values and offsets cannot be "
                         "batched by Triton; use max_batch_size 0, or list_layout 'padded'")


class RequestError(ValueError):
    """A request the model cannot transform; the message names the input and what was expected."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A tensor crossing Triton: name, numpy dtype, and dims without the batch dimension."""

    name: str
    dtype: np.dtype
    dims: tuple[int, ...]
    batched: bool = True
    """False for a tensor without a batch dimension (a list column's flat values or offsets):
    ``dims`` is then its whole shape."""

    @property
    def triton_dtype(self) -> str:
        return triton_dtype(self.dtype)

    def config_dims(self, max_batch_size: int) -> tuple[int, ...]:
        """The dims config.pbtxt declares: without the batch dimension when Triton batches
        (``max_batch_size`` > 0), the whole shape (batch as -1) when it does not."""
        return (-1, *self.dims) if self.batched and max_batch_size == 0 else self.dims


def list_tensor_names(column: str, list_layout: str) -> tuple[str, str]:
    """The two tensors of list column ``column``: ``<column>__values`` and ``<column>__lengths``
    (``padded``: [batch, width] values, zeros past each row's length, and INT32 [batch, 1] lengths)
    or ``<column>__offsets`` (``offsets``: flat [nnz] values and INT32 [n + 1] offsets)."""
    return f"{column}__values", f"{column}__{'lengths' if list_layout == 'padded' else 'offsets'}"


def list_tensor_specs(column: str, dtype: np.dtype, list_layout: str) -> list[TensorSpec]:
    values, second = list_tensor_names(column, list_layout)
    if list_layout == "padded":
        return [TensorSpec(values, dtype, (-1,)), TensorSpec(second, np.dtype(np.int32), (1,))]
    return [TensorSpec(values, dtype, (-1,), batched=False), TensorSpec(second, np.dtype(np.int32), (-1,), batched=False)]


def _column_specs(schema: Sequence[Any], list_layout: str) -> list[TensorSpec]:
    """Per-column layout: a [batch, 1] tensor per column, a list column's two tensors in its place."""
    specs: list[TensorSpec] = []
    for c in schema:
        specs.extend(list_tensor_specs(c.name, c.dtype, list_layout) if c.is_list else [TensorSpec(c.name, c.dtype, (1,))])
    return specs


def check_list_tensors(column: str, values: Any, second: Any, list_layout: str, xp: Any = np) -> int:
    """Checks the two tensors of list column ``column`` in ``list_layout``; returns its rows.

    Raises:
        RequestError: naming the tensor: a wrong shape, a length below 0 or over the padded width,
            or offsets that do not start at 0, decrease or do not end at the number of values.
    """
    values_name, second_name = list_tensor_names(column, list_layout)
    if list_layout == "padded":
        if values.ndim != 2:
            raise RequestError(f"input {values_name!r} has shape {list(values.shape)}: expected [batch, width] (rows padded to one width)")
        if second.ndim != 2 or second.shape[1] != 1 or second.shape[0] != values.shape[0]:
            raise RequestError(f"input {second_name!r} has shape {list(second.shape)}: expected [{values.shape[0]}, 1] "
                               f"(one length per row of {values_name!r})")
        lengths = second.reshape(-1)
        width = int(values.shape[1])
        bad = (lengths < 0) | (lengths > width)
        if lengths.shape[0] and bool(bad.any()):
            row = int(xp.argmax(bad))
            raise RequestError(f"input {second_name!r}: row {row} has length {int(lengths[row])}: expected 0 .. {width} "
                               f"(the width of {values_name!r})")
        return int(values.shape[0])
    if values.ndim != 1:
        raise RequestError(f"input {values_name!r} has shape {list(values.shape)}: expected [nnz] (all rows' values, flat)")
    try:
        offsets = check_offsets(column, second, int(values.shape[0]), xp)
    except ValueError as e:
        raise RequestError(f"input {second_name!r}: {e}") from None
    return int(offsets.shape[0]) - 1


def check_list_rows(tensors: Mapping[str, Any], columns: Any, list_layout: str, rows: int | None, what: str,
                    max_batch_size: int, xp: Any = np) -> int:
    """The end of a request check: each list column's tensors checked, their rows equal to the
    other inputs' ``rows`` (None: no other input), and no more than ``max_batch_size`` (0: any).

    Raises:
        RequestError: naming the tensor, the ``what`` + column whose rows differ, or the batch size.
    """
    for column in columns:
        values_name, second = list_tensor_names(column, list_layout)
        list_rows = check_list_tensors(column, tensors[values_name], tensors[second], list_layout, xp)
        if rows is None:
            rows = list_rows
        elif list_rows != rows:
            raise RequestError(f"{what} {column!r} has {list_rows} rows, other inputs have {rows}")
    rows = rows or 0
    if max_batch_size and rows > max_batch_size:
        raise RequestError(f"request has {rows} rows: the maximum batch size is {max_batch_size}")
    return rows


def list_from_tensors(column: str, values: Any, second: Any, list_layout: str, xp: Any = np) -> ListColumn:
    """A checked list column's two tensors -> :class:`ListColumn` (int64 offsets)."""
    if list_layout == "padded":
        return padded_to_list(column, values, second, xp)
    return ListColumn(values, second.astype(np.int64))


def list_to_tensors(column: ListColumn, list_layout: str, xp: Any = np) -> tuple[Any, Any]:
    """:func:`list_from_tensors` reversed: a ListColumn -> its two tensors in ``list_layout``
    (padded values and int32 [n, 1] lengths, or flat values and int32 offsets)."""
    if list_layout == "padded":
        return list_to_padded(column, xp)
    return xp.ascontiguousarray(column.values), column.offsets.astype(np.int32)


def merge_list_requests(parts: Sequence[ListColumn], xp: Any = np) -> ListColumn:
    """Several requests' rows of one list column, in order, as one column."""
    if len(parts) == 1:
        return parts[0]
    ends = np.cumsum([0] + [int(p.offsets[-1]) for p in parts[:-1]])
    offsets = xp.concatenate([parts[0].offsets[:1]] + [p.offsets[1:] + int(e) for p, e in zip(parts, ends)])
    return ListColumn(xp.concatenate([p.values for p in parts]), offsets)


def padded_to_list(name: str, values: Any, lengths: Any, xp: Any = np) -> ListColumn:
    """[batch, width] padded values and [batch, 1] lengths (each in 0 .. width, as
    :func:`check_list_tensors` checks) of list column ``name`` -> ListColumn."""
    lengths = lengths.reshape(-1).astype(np.int64)
    width = int(values.shape[1])
    mask = xp.arange(width, dtype=np.int64)[None, :] < lengths[:, None]
    offsets = xp.zeros(lengths.shape[0] + 1, dtype=np.int64)
    xp.cumsum(lengths, out=offsets[1:])
    return ListColumn(values[mask], offsets)


def list_to_padded(column: ListColumn, xp: Any = np) -> tuple[Any, Any]:
    """ListColumn -> ([n, width] values padded with zeros, width = the longest row; int32 [n, 1] lengths)."""
    lengths = column.lengths
    n = lengths.shape[0]
    width = int(lengths.max()) if n else 0
    out = xp.zeros((n, width), dtype=column.values.dtype)
    out[xp.arange(width, dtype=np.int64)[None, :] < lengths[:, None]] = column.values
    return out, lengths.astype(np.int32).reshape(-1, 1)


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

    Attributes:
        rows_total: rows transformed so far (requests that were rejected do not count).
        oov_columns: the Categorify output columns (see :meth:`TransformPlan.categorical_codes`),
            whose out-of-vocabulary values :attr:`oov_total` counts (every value of a list column).
    """

    def __init__(
        self, plan: TransformPlan, layout: str = "per-column", max_batch_size: int = 0, output_layout: str | None = None,
        list_layout: str = "padded",
    ) -> None:
        output_layout = output_layout or layout
        for what, value in (("layout", layout), ("output_layout", output_layout)):
            if value not in LAYOUTS:
                raise ValueError(f"{what} {value!r}: expected one of {LAYOUTS}")
        check_list_layout(list_layout, max_batch_size)
        self.plan = plan
        self.layout = layout
        self.output_layout = output_layout
        self.list_layout = list_layout
        self.max_batch_size = int(max_batch_size)
        list_in = [s for c in plan.input_schema if c.is_list for s in list_tensor_specs(c.name, c.dtype, list_layout)]
        list_out = [s for c in plan.output_schema if c.is_list for s in list_tensor_specs(c.name, c.dtype, list_layout)]
        if layout == "per-column":
            self.inputs = _column_specs(plan.input_schema, list_layout)
        else:
            self.inputs = [
                TensorSpec(packed_input_name(d), np.dtype(d), (len(cols),)) for d, cols in plan.packed_inputs.items()
            ] + list_in
        if output_layout == "per-column":
            self.outputs = _column_specs(plan.output_schema, list_layout)
        else:
            self.outputs = [
                TensorSpec(packed_output_name(d), np.dtype(d), (len(cols),)) for d, cols in plan.packed_outputs.items()
            ] + list_out
        self._input_by_name = {s.name: s for s in self.inputs}
        self._list_inputs = {c.name: list_tensor_names(c.name, list_layout) for c in plan.input_schema if c.is_list}
        self._list_tensors = {t for pair in self._list_inputs.values() for t in pair}
        self.rows_total = 0
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
        list_layout: str = "padded",
    ) -> TransformModel:
        """Loads the plan in ``plan_dir`` (see :meth:`TransformPlan.load` for its errors)."""
        return cls(TransformPlan.load(plan_dir), layout, max_batch_size, output_layout, list_layout)

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

    def _list_columns(self, requests: Sequence[Mapping[str, Any]], good: list[tuple[int, int]]) -> dict[str, ListColumn]:
        """The list input columns of the good requests, merged (requests checked)."""
        xp = self.plan.xp
        merged = {}
        for column, (values_name, second) in self._list_inputs.items():
            merged[column] = merge_list_requests(
                [list_from_tensors(column, requests[i][values_name], requests[i][second], self.list_layout, xp) for i, _ in good], xp)
        return merged

    def _list_outputs(self, column: str, result: ListColumn, good: list[tuple[int, int]]) -> list[dict[str, Any]]:
        """Per good request, the two output tensors of list output ``column``."""
        xp = self.plan.xp
        values_name, second = list_tensor_names(column, self.list_layout)
        out, start = [], 0
        for _, rows in good:
            first = int(result.offsets[start])
            offsets = result.offsets[start : start + rows + 1] - first
            values, other = list_to_tensors(ListColumn(result.values[first : first + int(offsets[-1])], offsets), self.list_layout, xp)
            out.append({values_name: values, second: other})
            start += rows
        return out

    def execute(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, np.ndarray] | RequestError]:
        """Transforms several requests in one plan run.

        Args:
            requests: per request, input name -> array ([batch, ...] as in ``inputs``; host memory).

        Returns:
            Per request, in order: output name -> C-contiguous array the caller owns, or the
            :class:`RequestError` that rejects that request (the others are still served).
        """
        results, good = check_requests(requests, self.check_request)
        if not good:
            return results
        try:
            return self._execute_checked(requests, results, good)
        except BadValueError as e:  # a value no step can take: fail only the request(s) holding it
            if len(good) == 1:
                results[good[0][0]] = RequestError(str(e))
                return results
            for i, _ in good:
                results[i] = self.execute([requests[i]])[0]
            return results

    def _execute_checked(self, requests: Sequence[Mapping[str, Any]], results: list[Any], good: list[tuple[int, int]]) -> list[Any]:
        """:meth:`execute` for the requests ``good`` ((index, rows) pairs) that passed the checks."""
        xp = self.plan.xp  # numpy, or cupy for a plan on a GPU (requests then hold cupy arrays)
        row_index = np.concatenate([np.arange(rows, dtype=np.int64) for _, rows in good])
        lists = self._list_columns(requests, good)
        if self.layout == "per-column":
            columns = {
                spec.name: _concat([requests[i][spec.name] for i, _ in good], np if spec.dtype == object else xp).reshape(-1)
                for spec in self.inputs if spec.name not in self._list_tensors
            }
            transformed = self.plan.transform_unchecked({**columns, **lists}, row_index)  # checked per request above
            if self.output_layout == "per-column":
                merged = {c.name: transformed[c.name].reshape(-1, 1) for c in self.plan.output_schema if not c.is_list}
            else:
                merged = {
                    packed_output_name(d): xp.stack([transformed[c] for c in names], axis=1) for d, names in self.plan.packed_outputs.items()
                }
        else:
            packed = {
                spec.dtype.name: _concat([requests[i][spec.name] for i, _ in good], np if spec.dtype == object else xp)
                for spec in self.inputs if spec.name not in self._list_tensors
            }
            transformed = self.plan.transform_packed({**packed, **lists}, row_index=row_index)
            if self.output_layout == "packed":
                merged = {packed_output_name(d): transformed[d] for d in self.plan.packed_outputs}
            else:
                merged = {}
                for dtype_name, names in self.plan.packed_outputs.items():
                    for j, name in enumerate(names):
                        merged[name] = xp.ascontiguousarray(transformed[dtype_name][:, j : j + 1])
        self._count(merged, int(row_index.shape[0]), {c: transformed[c] for c in self.plan.list_outputs})
        list_parts = [self._list_outputs(c, transformed[c], good) for c in self.plan.list_outputs]
        start = 0
        for k, (i, rows) in enumerate(good):
            if len(good) == 1:
                results[i] = dict(merged)
            else:
                results[i] = {name: xp.ascontiguousarray(a[start : start + rows]) for name, a in merged.items()}
            for parts in list_parts:
                results[i].update(parts[k])
            start += rows
        return results


def check_requests(
    requests: Sequence[Mapping[str, Any]], check: Callable[[Mapping[str, Any]], int]
) -> tuple[list[Any], list[tuple[int, int]]]:
    """Checks each request of one execute with ``check`` (returns its rows or raises RequestError).

    Returns:
        ``(results, good)``: per request, the RequestError that rejects it or a placeholder to
        replace with its outputs; and (request number, rows) of every request that passed.
    """
    results: list[Any] = []
    good: list[tuple[int, int]] = []
    for i, tensors in enumerate(requests):
        try:
            good.append((i, check(tensors)))
            results.append({})
        except RequestError as e:
            results.append(e)
    return results, good


def _concat(arrays: list[Any], xp: Any = np) -> Any:
    return arrays[0] if len(arrays) == 1 else xp.concatenate(arrays)


def pack_request(model: TransformModel, columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Client side: raw columns ((n,) arrays; a :class:`ListColumn` or (values, offsets) pair for a
    list column) -> the model's input tensors ([n, ...] arrays; a list column's two tensors in the
    model's ``list_layout``)."""
    out: dict[str, np.ndarray] = {}
    for c in model.plan.input_schema:
        if c.is_list:
            column = columns[c.name]
            column = column if isinstance(column, ListColumn) else ListColumn(*column)
            column = ListColumn(np.asarray(column.values, dtype=c.dtype), np.asarray(column.offsets, dtype=np.int64))
            values_name, second = list_tensor_names(c.name, model.list_layout)
            out[values_name], out[second] = list_to_tensors(column, model.list_layout)
        elif model.layout == "per-column":
            out[c.name] = np.ascontiguousarray(np.asarray(columns[c.name], dtype=c.dtype).reshape(-1, 1))
    if model.layout == "packed":
        for d, names in model.plan.packed_inputs.items():
            out[packed_input_name(d)] = np.ascontiguousarray(np.stack([np.asarray(columns[c], dtype=np.dtype(d)) for c in names], axis=1))
    return {s.name: out[s.name] for s in model.inputs}


def unpack_response(model: TransformModel, outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Client side: the model's output tensors -> output column name -> (n,) array (a
    :class:`ListColumn` with int64 offsets for a list column)."""
    columns: dict[str, Any] = {}
    for c in model.plan.output_schema:
        if c.is_list:
            values_name, second = list_tensor_names(c.name, model.list_layout)
            columns[c.name] = list_from_tensors(c.name, np.asarray(outputs[values_name]), np.asarray(outputs[second]), model.list_layout)
        elif model.output_layout == "per-column":
            columns[c.name] = np.asarray(outputs[c.name]).reshape(-1)
    if model.output_layout == "packed":
        for d, names in model.plan.packed_outputs.items():
            tensor = np.asarray(outputs[packed_output_name(d)])
            for j, name in enumerate(names):
                columns[name] = tensor[:, j]
    return {c.name: columns[c.name] for c in model.plan.output_schema}
