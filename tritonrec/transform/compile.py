"""compile_workflow: a fitted ``nvtabular.Workflow`` -> :class:`TransformPlan`.

Walks the workflow's graph from its output node, turns each op on each column into a step, and
groups output columns whose chains of steps match. An op or option the plan cannot reproduce
exactly stops the compile with :class:`UnsupportedOpError`, naming the op and the column.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tritonrec.transform._table import KeyTable
from tritonrec.transform.plan import ColumnSpec, PlanGroup, TransformPlan
from tritonrec.transform.steps import (
    OOV_CODE, Bucketize, Categorify, Clip, FillMissing, HashBucket, HashedCross, IndexedHash, ListSlice, LogOp, Normalize,
    NormalizeMinMax, Step, TargetEncode, XorBuckets,
)

LIST_OPS = ("Categorify", "ListSlice", "LogOp", "Rename", "ValueCount")
"""Ops the plan runs on list (multi-hot) columns; others are refused there, naming the op."""

class UnsupportedOpError(ValueError):
    """The workflow uses an op (or an option of one) the plan cannot reproduce exactly."""

    def __init__(self, op: str, column: str, reason: str) -> None:
        super().__init__(f"cannot compile op {op} on column {column!r}: {reason}")
        self.op = op
        self.column = column


class ColumnStep:
    """One op on one column before grouping: a signature and per-column parameters to merge."""

    def __init__(self, signature: tuple[Any, ...], params: dict[str, Any], merge: Callable[[list[dict[str, Any]]], Step]):
        self.signature = signature
        self.params = params
        self.merge = merge


def _load_workflow(workflow_or_saved_dir: Any) -> Any:
    import nvtabular  # noqa: PLC0415 - compile-time dependency only

    if isinstance(workflow_or_saved_dir, (str, os.PathLike)):
        path = Path(workflow_or_saved_dir)
        if not (path / "workflow.pkl").is_file():
            raise FileNotFoundError(f"{path}: not a saved nvtabular workflow (no workflow.pkl)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return nvtabular.Workflow.load(str(path))
    if not isinstance(workflow_or_saved_dir, nvtabular.Workflow):
        raise TypeError(f"expected an nvtabular.Workflow or a saved workflow directory, got {type(workflow_or_saved_dir).__name__}")
    return workflow_or_saved_dir


def _fill_step(op: Any, column: str) -> ColumnStep:
    if op.add_binary_cols:
        raise UnsupportedOpError("FillMissing", column, "add_binary_cols=True is not supported")
    return ColumnStep(("fill_missing",), {"fill": float(op.fill_val)}, lambda ps: FillMissing([p["fill"] for p in ps]))


def _fill_median_step(op: Any, column: str) -> ColumnStep:
    if op.add_binary_cols:
        raise UnsupportedOpError("FillMedian", column, "add_binary_cols=True is not supported")
    if column not in op.medians:
        raise UnsupportedOpError("FillMedian", column, "no fitted median for this column (workflow not fitted?)")
    return ColumnStep(("fill_missing",), {"fill": float(op.medians[column])}, lambda ps: FillMissing([p["fill"] for p in ps]))


def _normalize_minmax_step(op: Any, column: str, dtype: np.dtype) -> ColumnStep:
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
    )


def _bucketize_step(op: Any, column: str) -> ColumnStep:
    boundaries = [float(b) for b in op.boundaries(column)]
    if any(b > a for a, b in zip(boundaries[1:], boundaries)):
        raise UnsupportedOpError("Bucketize", column, f"boundaries {boundaries} are not increasing")
    return ColumnStep(("bucketize",), {"boundaries": boundaries}, lambda ps: Bucketize([p["boundaries"] for p in ps]))


def _positive_buckets(op: Any, key: Any, column: str) -> int:
    """``op.num_buckets`` (an int, or a dict keyed by ``key``) for one output; refused unless >= 1."""
    buckets = op.num_buckets if isinstance(op.num_buckets, int) else op.num_buckets.get(key)
    if not buckets or int(buckets) < 1:
        raise UnsupportedOpError(type(op).__name__, column, f"num_buckets {buckets!r}: expected a positive integer")
    return int(buckets)


def _hash_bucket_step(op: Any, column: str, dtype: np.dtype) -> ColumnStep:
    if dtype.kind not in "iufO":
        raise UnsupportedOpError("HashBucket", column, f"input dtype {dtype} (numeric or string columns)")
    buckets = _positive_buckets(op, column, column)
    return ColumnStep(("hash_bucket",), {"buckets": int(buckets)}, lambda ps: HashBucket([p["buckets"] for p in ps]))


def _clip_step(op: Any, column: str, dtype: np.dtype) -> ColumnStep:
    for bound in (op.min_value, op.max_value):
        if bound is not None and dtype.kind in "iu" and float(bound) != int(bound):
            raise UnsupportedOpError("Clip", column, f"a non-integer bound {bound!r} on integer dtype {dtype} changes the dtype")
    has_min, has_max = op.min_value is not None, op.max_value is not None
    return ColumnStep(
        ("clip", has_min, has_max),
        {"min": op.min_value, "max": op.max_value},
        lambda ps: Clip(
            [p["min"] for p in ps] if has_min else None,
            [p["max"] for p in ps] if has_max else None,
        ),
    )


def _normalize_step(op: Any, column: str) -> ColumnStep:
    if column not in op.means:
        raise UnsupportedOpError("Normalize", column, "no fitted statistics for this column (workflow not fitted?)")
    out = np.dtype(op.output_dtype)
    return ColumnStep(
        ("normalize", out.name),
        {"mean": op.means[column], "std": op.stds[column]},
        lambda ps: Normalize([p["mean"] for p in ps], [p["std"] for p in ps], out),
    )


def _categorify_buckets(op: Any, column: str) -> int:
    """Categorify's ``num_buckets`` for one column (an int, or a dict by column); 0 for none."""
    buckets = op.num_buckets
    return (buckets if isinstance(buckets, int) else (buckets or {}).get(column, 0)) or 0


def _categorify_step(op: Any, column: str, dtype: np.dtype) -> ColumnStep:
    import pandas as pd  # noqa: PLC0415
    from merlin.dag import ColumnSelector  # noqa: PLC0415

    if op.encode_type != "joint" or op.storage_name.get(column, column) != column:
        raise UnsupportedOpError("Categorify", column, "multi-column (joint or combo) encoding is not supported yet")
    if op.single_table:
        raise UnsupportedOpError("Categorify", column, "single_table=True is not supported")
    if op.search_sorted:
        raise UnsupportedOpError("Categorify", column, "search_sorted=True is not supported")
    split_out = op.split_out.get(column, 1) if isinstance(op.split_out, dict) else op.split_out
    if split_out != 1:
        raise UnsupportedOpError("Categorify", column, f"split_out={split_out} is not supported")
    path = op.categories.get(column)
    if not path:
        raise UnsupportedOpError("Categorify", column, "no fitted vocabulary (workflow not fitted?)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"Categorify vocabulary of column {column!r} not found at {path}")
    num_buckets = _categorify_buckets(op, column)
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
    )


def _merge_categorify(params: list[dict[str, Any]], vocab_dtype: np.dtype, out: np.dtype) -> Categorify:
    table = _category_table(params, vocab_dtype, "Categorify", [p["codes"] for p in params])
    return Categorify(table, [p["num_buckets"] for p in params], vocab_dtype, out)


def _category_table(params: list[dict[str, Any]], key_dtype: np.dtype, op_name: str, values: list[np.ndarray]) -> KeyTable:
    """One key table for a group's columns: (column j, key of each of ``params[j]["keys"]``) ->
    the matching entry of ``values[j]`` (int64)."""
    keys = [_table_keys(p["keys"], key_dtype, p["column"], op_name) for p in params]
    columns = [np.full(k.shape[0], j, dtype=np.int64) for j, k in enumerate(keys)]
    return KeyTable.build(np.concatenate(columns), np.concatenate(keys), np.concatenate(values))


def _target_encoding_step(op: Any, column: str, out_name: str, dtype: np.dtype) -> ColumnStep:
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
    )


def _merge_target_encoding(params: list[dict[str, Any]], key_dtype: np.dtype, out: np.dtype) -> TargetEncode:
    encodings = np.concatenate([p["encodings"] for p in params])
    starts = np.cumsum([0] + [len(p["keys"]) for p in params])
    positions = [np.arange(starts[j], starts[j + 1], dtype=np.int64) for j in range(len(params))]  # into ``encodings``
    table = _category_table(params, key_dtype, "TargetEncoding", positions)
    return TargetEncode(table, encodings, [p["default"] for p in params], [p["null"] for p in params], key_dtype, out)


def _table_keys(values: np.ndarray, key_dtype: np.dtype, column: str, op_name: str) -> np.ndarray:
    """int64 table keys of a column's categories: the value, float64 bits, or pandas' string hash."""
    if key_dtype.kind == "O":
        from tritonrec import _native  # noqa: PLC0415

        hashes = _native.hash_strings(np.asarray(values, dtype=object))[0]
        if np.unique(hashes).size != hashes.size:
            raise UnsupportedOpError(op_name, column, "two category strings share a 64-bit hash")
        return hashes.view(np.int64)
    if key_dtype.kind == "f":
        return (np.asarray(values).astype(np.float64) + 0.0).view(np.int64)
    return np.asarray(values).astype(np.int64)


@dataclasses.dataclass(eq=False)
class StagedCross:
    """The raw side of a HashedCross of transformed columns or of columns of different dtypes:
    per source, its chain ``(raw column, steps, dtype)``. It compiles to one group per source
    (the chain, then :class:`IndexedHash`, into a hidden uint64 column) and one group XOR-ing them."""

    parts: list[tuple[str, list[ColumnStep], np.dtype]]


def _hashed_cross_chain(op: Any, out_name: str, sources: list[str], available: dict[str, Any],
                        input_dtypes: dict[str, np.dtype]) -> tuple[Any, list[ColumnStep], np.dtype]:
    """The chain of a HashedCross output: its raw input columns (a tuple: workflow inputs as they
    came in, of one dtype: one group) or a :class:`StagedCross`, and the cross step."""
    buckets = _positive_buckets(op, tuple(sources), out_name)
    raw_inputs = all(s in input_dtypes and not (s in available and available[s][1]) for s in sources)
    if raw_inputs and len({input_dtypes[s].name for s in sources}) == 1:
        step = ColumnStep(("hashed_cross", buckets), {}, lambda ps: HashedCross(buckets))
        return tuple(sources), [step], np.dtype(np.int32)
    parts = []
    for source in sources:
        raw, steps, dtype = available[source] if source in available else (source, [], input_dtypes.get(source))
        if dtype is None:
            raise UnsupportedOpError("HashedCross", out_name, f"source column {source!r} not found")
        if not isinstance(raw, str):
            raise UnsupportedOpError("HashedCross", out_name, f"column {source!r} is itself a cross (crosses of crosses are not supported)")
        parts.append((raw, steps, dtype))
    step = ColumnStep(("hashed_cross", buckets), {}, lambda ps: XorBuckets(buckets))
    return StagedCross(parts), [step], np.dtype(np.int32)


def _list_step(op: Any, column: str, dtype: np.dtype) -> ColumnStep:
    """An op on a list column (one of :data:`LIST_OPS`, checked by the caller): ListSlice, or
    Categorify without hash buckets and LogOp, which run on the values as on a column."""
    from nvtabular import ops  # noqa: PLC0415

    name = type(op).__name__
    if type(op) is ops.ListSlice:
        if op.pad and op.max_elements > 1 << 20:
            raise UnsupportedOpError(name, column, f"pad=True pads every row to {op.max_elements} values: give the slice an end")
        return ColumnStep(("list_slice", int(op.start), int(op.end), bool(op.pad), float(op.pad_value)), {},
                          lambda ps: ListSlice(op.start, op.end, op.pad, op.pad_value, op.max_elements))
    if type(op) is ops.Categorify:
        buckets = _categorify_buckets(op, column)
        if buckets:
            raise UnsupportedOpError(name, column, f"num_buckets={buckets} on a list column (nvtabular 23.08's CPU transform "
                                     "cannot hash list values either)")
        if dtype.kind == "O":
            raise UnsupportedOpError(name, column, "lists of strings are not supported (lists of numbers are)")
    return _column_step(op, column, dtype)


def _column_step(op: Any, column: str, dtype: np.dtype) -> ColumnStep:
    from nvtabular import ops  # noqa: PLC0415

    name = type(op).__name__
    if type(op) is ops.ListSlice:
        raise UnsupportedOpError(name, column, "ListSlice on a column that is not a list")
    if type(op) is ops.FillMissing:
        return _fill_step(op, column)
    if type(op) is ops.Clip:
        return _clip_step(op, column, dtype)
    if type(op) is ops.LogOp:
        return ColumnStep(("log",), {}, lambda ps: LogOp())
    if type(op) is ops.Normalize:
        return _normalize_step(op, column)
    if type(op) is ops.Categorify:
        return _categorify_step(op, column, dtype)
    if type(op) is ops.FillMedian:
        return _fill_median_step(op, column)
    if type(op) is ops.NormalizeMinMax:
        return _normalize_minmax_step(op, column, dtype)
    if type(op) is ops.Bucketize:
        return _bucketize_step(op, column)
    if type(op) is ops.HashBucket:
        return _hash_bucket_step(op, column, dtype)
    raise UnsupportedOpError(name, column, "this op is not supported by the plan compiler")


def _step_dtype(step: ColumnStep, dtype: np.dtype) -> np.dtype:
    kind = step.signature[0]
    if kind in ("fill_missing", "clip", "list_slice"):
        return dtype
    if kind == "log":
        return np.dtype(np.float32)
    if kind in ("bucketize", "hash_bucket"):
        return np.dtype(np.int32)
    return np.dtype(step.signature[-1])  # normalize, normalize_minmax, categorify: their out dtype


HASHINGS = ("auto", "cpu")
"""``compile_workflow``'s ``hashing``: detect where the workflow ran, or assert it ran on the CPU."""


def fitted_on(workflow_or_saved_dir: Any) -> tuple[str, str]:
    """Where a workflow was fitted, as far as it records: ``("gpu" | "cpu", evidence)``.

    A saved workflow's ``metadata.json`` lists the dataframe library of the process that saved it
    (``cudf`` where cudf was installed: nvtabular then runs on the GPU unless told otherwise,
    ``pandas`` without it). For a workflow in memory, the same question is asked of this process.
    """
    if isinstance(workflow_or_saved_dir, (str, os.PathLike)):
        path = Path(workflow_or_saved_dir) / "metadata.json"
        try:
            versions = json.loads(path.read_text()).get("versions", {})
        except (OSError, ValueError, AttributeError):
            return "cpu", f"{path} is missing or unreadable (taken as a CPU fit)"
        if "cudf" in versions:
            return "gpu", f"{path} lists cudf {versions['cudf']}"
        return "cpu", f"{path} lists {'pandas ' + str(versions['pandas']) if 'pandas' in versions else 'no cudf'}"
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec("cudf") is not None:
        return "gpu", "cudf is installed in this process"
    return "cpu", "cudf is not installed in this process"


def _refuse_gpu_hashing(chains: dict[str, Any], evidence: str) -> None:
    """Raises UnsupportedOpError for the first hash-based step of a workflow fitted on a GPU."""
    for name, (_, steps, _) in chains.items():
        for step in steps:
            kind = step.signature[0]
            hashed = kind in ("hash_bucket", "hashed_cross") or (kind == "categorify" and step.params.get("num_buckets", 0) > 0)
            if hashed:
                op = {"hash_bucket": "HashBucket", "hashed_cross": "HashedCross", "categorify": "Categorify"}[kind]
                raise UnsupportedOpError(op, name, f"the workflow was fitted on a GPU ({evidence}), where nvtabular hashes with "
                                         "cudf's murmur3; the plan reproduces pandas' hashing (CPU fits) only. If it was fitted "
                                         "and transformed on the CPU (Dataset(..., cpu=True)), compile with hashing='cpu'")


def compile_workflow(workflow_or_saved_dir: Any, hashing: str = "auto") -> TransformPlan:
    """Compiles a fitted NVTabular workflow into a :class:`TransformPlan`.

    Args:
        workflow_or_saved_dir: a fitted ``nvtabular.Workflow``, or the directory a fitted workflow
            was saved to with ``Workflow.save``.
        hashing: ``"auto"``: hash-based ops (HashBucket, HashedCross, Categorify with hash buckets)
            of a workflow fitted on a GPU (see :func:`fitted_on`) are refused, since nvtabular
            hashes with cudf's murmur3 there and the plan reproduces pandas' hashing; ``"cpu"``:
            the caller asserts the workflow ran on the CPU.

    Raises:
        UnsupportedOpError: an op or option the plan cannot reproduce; names the op and column.
        FileNotFoundError: the directory holds no saved workflow, or a vocabulary file is missing.
    """
    if hashing not in HASHINGS:
        raise ValueError(f"hashing {hashing!r}: expected one of {HASHINGS}")
    import nvtabular  # noqa: PLC0415
    from nvtabular import ops  # noqa: PLC0415
    from merlin.dag.ops.concat_columns import ConcatColumns  # noqa: PLC0415
    from merlin.dag.ops.selection import SelectionOp  # noqa: PLC0415

    workflow = _load_workflow(workflow_or_saved_dir)
    unknown = [c.name for c in workflow.input_schema if c.dtype.name == "unknown"]
    if unknown:
        raise ValueError(f"input column(s) {unknown} have no dtype in the workflow's input schema (merlin infers a list "
                         "column's from its first row, and an empty first row leaves it unknown): fit on a Dataset with a schema")
    input_dtypes = {c.name: np.dtype(c.dtype.to_numpy) for c in workflow.input_schema}
    list_inputs = {c.name for c in workflow.input_schema if c.is_list}
    memo: dict[int, dict[str, tuple[str, list[ColumnStep], np.dtype]]] = {}

    def visit(node: Any) -> dict[str, tuple[str, list[ColumnStep], np.dtype]]:
        if id(node) in memo:
            return memo[id(node)]
        available: dict[str, tuple[str, list[ColumnStep], np.dtype]] = {}
        for parent in node.parents_with_dependencies:
            available.update(visit(parent))
        op = node.op
        names = node.output_columns.names
        result: dict[str, tuple[str, list[ColumnStep], np.dtype]] = {}
        if op is None or isinstance(op, (SelectionOp, ConcatColumns)):
            for name in names:
                if name in available:
                    result[name] = available[name]
                elif name in input_dtypes:
                    result[name] = (name, [], input_dtypes[name])
                else:
                    raise UnsupportedOpError(type(op).__name__, name, "column is neither an input nor produced upstream")
        else:
            mapping = op.column_mapping(node.input_columns)
            for out_name in names:
                sources = mapping.get(out_name, [out_name])
                if type(op) is ops.TargetEncoding:  # its sources are the target(s) and the category column
                    sources = [c for c in sources if c not in op.target_columns]
                listed = [c for c in sources if (available[c][0] if c in available else c) in list_inputs]
                if listed and (len(sources) != 1 or type(op).__name__ not in LIST_OPS):
                    raise UnsupportedOpError(type(op).__name__, out_name, f"not supported on list column(s) {listed} "
                                             f"(supported there: {', '.join(LIST_OPS)})")
                if type(op) is ops.HashedCross:
                    result[out_name] = _hashed_cross_chain(op, out_name, sources, available, input_dtypes)
                    continue
                if len(sources) != 1:
                    raise UnsupportedOpError(type(op).__name__, out_name, f"combines several columns {list(sources)}")
                source = sources[0]
                if source in available:
                    raw, steps, dtype = available[source]
                elif source in input_dtypes:
                    raw, steps, dtype = source, [], input_dtypes[source]
                else:
                    raise UnsupportedOpError(type(op).__name__, out_name, f"source column {source!r} not found")
                if type(op) is ops.Rename or type(op) is ops.ValueCount:  # a new name, or only schema, on the same chain
                    result[out_name] = (raw, steps, dtype)
                    continue
                if type(op) is ops.TargetEncoding:
                    step = _target_encoding_step(op, source, out_name, dtype)
                    result[out_name] = (raw, [*steps, step], _step_dtype(step, dtype))
                    continue
                step = (_list_step if raw in list_inputs else _column_step)(op, source, dtype)  # an op the plan lacks is refused here
                if source != out_name:
                    raise UnsupportedOpError(type(op).__name__, out_name, "an op that renames its output is not supported")
                result[out_name] = (raw, [*steps, step], _step_dtype(step, dtype))
        memo[id(node)] = result
        return result

    chains = visit(workflow.output_node)
    output_names = workflow.output_schema.column_names
    where, evidence = fitted_on(workflow_or_saved_dir)
    if hashing == "auto" and where == "gpu":
        _refuse_gpu_hashing({name: chains[name] for name in output_names}, evidence)
    if not output_names:
        raise ValueError("the workflow has no output columns")

    # Group output columns by (input dtype, step signatures), keeping first-appearance order; a
    # crossed column (several raw inputs) is a group of its own.
    grouped: dict[tuple[Any, ...], list[str]] = {}
    groups = []
    hidden: list[ColumnSpec] = []
    for name in output_names:
        raw, steps, _ = chains[name]
        if not isinstance(raw, str) and len(steps) != 1:  # a cross: its own step only
            raise UnsupportedOpError("HashedCross", name, "ops after a HashedCross are not supported")
        if isinstance(raw, StagedCross):
            hashes = []
            for j, (source, source_steps, _) in enumerate(raw.parts):
                hashes.append(f"{name}/hash{j}")
                chain = [s.merge([s.params]) for s in source_steps] + [IndexedHash()]
                groups.append(PlanGroup([source], [hashes[-1]], input_dtypes[source], chain))
                hidden.append(ColumnSpec(hashes[-1], np.dtype(np.uint64)))
            groups.append(PlanGroup(hashes, [name], np.dtype(np.uint64), [steps[0].merge([steps[0].params])]))
            continue
        if isinstance(raw, tuple):
            groups.append(PlanGroup(list(raw), [name], input_dtypes[raw[0]], [steps[0].merge([steps[0].params])]))
            continue
        # a list column is a group of its own (its rows' lengths differ from other columns')
        key = (input_dtypes[raw].name, tuple(s.signature for s in steps), name if raw in list_inputs else None)
        grouped.setdefault(key, []).append(name)
    for (dtype_name, signatures, list_name), outs in grouped.items():
        per_column = [chains[name][1] for name in outs]
        steps = [per_column[0][i].merge([cs[i].params for cs in per_column]) for i in range(len(signatures))]
        groups.append(PlanGroup([chains[name][0] for name in outs], outs, np.dtype(dtype_name), steps, list_name is not None))

    def raw_columns(raw: Any) -> tuple[str, ...]:
        return tuple(p[0] for p in raw.parts) if isinstance(raw, StagedCross) else raw if isinstance(raw, tuple) else (raw,)

    used_inputs = {c for name in output_names for c in raw_columns(chains[name][0])}
    input_schema = [ColumnSpec(c, d, c in list_inputs) for c, d in input_dtypes.items() if c in used_inputs]
    output_schema = [ColumnSpec(name, chains[name][2], isinstance(chains[name][0], str) and chains[name][0] in list_inputs)
                     for name in output_names]
    return TransformPlan(input_schema, output_schema, groups, nvtabular.__version__, hidden_schema=hidden)
