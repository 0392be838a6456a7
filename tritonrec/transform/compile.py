"""compile_workflow: a fitted ``nvtabular.Workflow`` -> :class:`TransformPlan`.

Walks the workflow's graph from its output node, turns each op on each column into a step (through
the registry of :mod:`tritonrec.transform.ops`), and groups output columns whose chains of steps
match. An op or option the plan cannot reproduce exactly stops the compile with
:class:`UnsupportedOpError`, naming the op and the column.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tritonrec.transform.ops import (
    LIST_OPS, PASS_THROUGH, Chain, IndexedHash, UnsupportedOpError, compile_op, cross_chain, is_op, op_name,
)
from tritonrec.transform.plan import ColumnSpec, PlanGroup, TransformPlan

__all__ = ["HASHINGS", "LIST_OPS", "UnsupportedOpError", "compile_workflow", "fitted_on"]


NVTABULAR_MISSING = (
    "compiling an NVTabular workflow needs nvtabular 23.08 in this Python (pip install -c requirements/constraints.txt "
    "'tritonrec[training]' from the repository, or scripts/setup.sh); serving a saved plan directory needs none"
)


def import_nvtabular() -> Any:
    """The ``nvtabular`` module; ImportError with :data:`NVTABULAR_MISSING` and the cause when it
    is absent or does not import (e.g. built against another numpy)."""
    try:
        import nvtabular  # noqa: PLC0415 - compile-time dependency only
    except (ImportError, ValueError) as e:  # ValueError: "numpy.dtype size changed" from a mismatched build
        raise ImportError(f"{NVTABULAR_MISSING} ({type(e).__name__}: {e})") from None
    return nvtabular


def _load_workflow(workflow_or_saved_dir: Any) -> Any:
    nvtabular = import_nvtabular()

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


def _refuse_gpu_hashing(chains: Mapping[str, Chain], evidence: str) -> None:
    """Raises UnsupportedOpError for the first hash-based step of a workflow fitted on a GPU."""
    for name, chain in chains.items():
        for step in chain.steps:
            kind = step.signature[0]
            hashed = kind in ("hash_bucket", "hashed_cross") or (kind == "categorify" and step.params.get("num_buckets", 0) > 0)
            if hashed:
                op = {"hash_bucket": "HashBucket", "hashed_cross": "HashedCross", "categorify": "Categorify"}[kind]
                raise UnsupportedOpError(op, name, f"the workflow was fitted on a GPU ({evidence}), where nvtabular hashes with "
                                         "cudf's murmur3; the plan reproduces pandas' hashing (CPU fits) only. If it was fitted "
                                         "and transformed on the CPU (Dataset(..., cpu=True)), compile with hashing='cpu'")


class _Walker:
    """Turns the workflow's graph into one :class:`Chain` per column, memoised per node."""

    def __init__(self, input_dtypes: Mapping[str, np.dtype], list_inputs: set[str]) -> None:
        from merlin.dag.ops.concat_columns import ConcatColumns  # noqa: PLC0415
        from merlin.dag.ops.selection import SelectionOp  # noqa: PLC0415
        from merlin.dag.ops.subset_columns import SubsetColumns  # noqa: PLC0415 - node["col"]

        self.input_dtypes, self.list_inputs = input_dtypes, list_inputs
        self._selections = (SelectionOp, ConcatColumns, SubsetColumns)
        self._memo: dict[int, dict[str, Chain]] = {}

    def visit(self, node: Any) -> dict[str, Chain]:
        """output column name -> its chain, for every output column of ``node``."""
        if id(node) in self._memo:
            return self._memo[id(node)]
        available: dict[str, Chain] = {}
        for parent in node.parents_with_dependencies:
            available.update(self.visit(parent))
        op = node.op
        if op is None or isinstance(op, self._selections):
            result = {name: self._selected(op, name, available) for name in node.output_columns.names}
        else:
            mapping = op.column_mapping(node.input_columns)
            result = {name: self._chain(op, name, list(mapping.get(name, [name])), available) for name in node.output_columns.names}
        self._memo[id(node)] = result
        return result

    def _input(self, column: str, available: Mapping[str, Chain]) -> Chain | None:
        if column in available:
            return available[column]
        if column in self.input_dtypes:
            return Chain((column,), [], self.input_dtypes[column])
        return None

    def _selected(self, op: Any, name: str, available: Mapping[str, Chain]) -> Chain:
        chain = self._input(name, available)
        if chain is None:
            raise UnsupportedOpError(type(op).__name__, name, "column is neither an input nor produced upstream")
        return chain

    def _chain(self, op: Any, out_name: str, sources: list[str], available: Mapping[str, Chain]) -> Chain:
        """The chain of output ``out_name`` of ``op`` over ``sources``."""
        name = op_name(op)
        if is_op(op, "TargetEncoding"):  # its sources are the target(s) and the category column
            if not op.drop_folds:
                raise UnsupportedOpError(name, out_name, "drop_folds=False adds the '__fold__' column, a fold id drawn per "
                                         "training row: serve the workflow with drop_folds=True (the default)")
            sources = [c for c in sources if c not in op.target_columns]
        listed = [c for c in sources if (available[c].on_list(self.list_inputs) if c in available else c in self.list_inputs)]
        if listed and (len(sources) != 1 or name not in LIST_OPS):
            raise UnsupportedOpError(name, out_name, f"not supported on list column(s) {listed} (supported there: {', '.join(LIST_OPS)})")
        if is_op(op, "HashedCross"):
            return cross_chain(op, out_name, sources, available, self.input_dtypes)
        if len(sources) != 1:
            raise UnsupportedOpError(name, out_name, f"combines several columns {list(sources)}")
        chain = self._input(sources[0], available)
        if chain is None:
            raise UnsupportedOpError(name, out_name, f"source column {sources[0]!r} not found")
        if any(is_op(op, p) for p in PASS_THROUGH):  # a new name, or only schema, on the same chain
            return chain
        step = compile_op(op, sources[0], chain.dtype, out_name, chain.on_list(self.list_inputs))  # an op the plan lacks is refused here
        if sources[0] != out_name and not is_op(op, "TargetEncoding"):
            raise UnsupportedOpError(name, out_name, "an op that renames its output is not supported")
        return chain.then(step)


def _groups(chains: Mapping[str, Chain], output_names: list[str], input_dtypes: Mapping[str, np.dtype],
            list_inputs: set[str]) -> tuple[list[PlanGroup], list[ColumnSpec]]:
    """The plan's groups and hidden columns: output columns grouped by (input dtype, step
    signatures), in first-appearance order; a list column and a cross are groups of their own, a
    staged cross a group per source (into a hidden uint64 column) and one XOR-ing them."""
    grouped: dict[tuple[Any, ...], list[str]] = {}
    groups: list[PlanGroup] = []
    hidden: list[ColumnSpec] = []
    for name in output_names:
        chain = chains[name]
        if chain.cross and len(chain.steps) != 1:  # a cross: its own step only
            raise UnsupportedOpError("HashedCross", name, "ops after a HashedCross are not supported")
        cross_step = chain.steps[0].merge([chain.steps[0].params]) if chain.cross else None
        if chain.staged:
            hashes = [f"{name}/hash{j}" for j in range(len(chain.staged))]
            for part, hashed in zip(chain.staged, hashes):
                steps = [s.merge([s.params]) for s in part.steps] + [IndexedHash()]
                groups.append(PlanGroup([part.inputs[0]], [hashed], input_dtypes[part.inputs[0]], steps))
                hidden.append(ColumnSpec(hashed, np.dtype(np.uint64)))
            groups.append(PlanGroup(hashes, [name], np.dtype(np.uint64), [cross_step]))
        elif chain.cross:
            groups.append(PlanGroup(list(chain.inputs), [name], input_dtypes[chain.inputs[0]], [cross_step]))
        else:
            raw = chain.inputs[0]
            key = (input_dtypes[raw].name, tuple(s.signature for s in chain.steps), name if raw in list_inputs else None)
            grouped.setdefault(key, []).append(name)
    for (dtype_name, signatures, list_name), outs in grouped.items():
        per_column = [chains[name].steps for name in outs]
        steps = [per_column[0][i].merge([cs[i].params for cs in per_column]) for i in range(len(signatures))]
        groups.append(PlanGroup([chains[name].inputs[0] for name in outs], outs, np.dtype(dtype_name), steps, list_name is not None))
    return groups, hidden


def _input_columns(workflow: Any) -> tuple[dict[str, np.dtype], set[str]]:
    """The workflow's input columns: name -> numpy dtype, and the names of the list columns."""
    unknown = [c.name for c in workflow.input_schema if c.dtype.name == "unknown"]
    if unknown:
        raise ValueError(f"input column(s) {unknown} have no dtype in the workflow's input schema (merlin infers a list "
                         "column's from its first row, and an empty first row leaves it unknown): fit on a Dataset with a schema")
    return {c.name: np.dtype(c.dtype.to_numpy) for c in workflow.input_schema}, {c.name for c in workflow.input_schema if c.is_list}


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
        ImportError: nvtabular is not installed or does not import (the message says what to install).
    """
    if hashing not in HASHINGS:
        raise ValueError(f"hashing {hashing!r}: expected one of {HASHINGS}")
    nvtabular = import_nvtabular()

    workflow = _load_workflow(workflow_or_saved_dir)
    input_dtypes, list_inputs = _input_columns(workflow)
    chains = _Walker(input_dtypes, list_inputs).visit(workflow.output_node)
    output_names = workflow.output_schema.column_names
    where, evidence = fitted_on(workflow_or_saved_dir)
    if hashing == "auto" and where == "gpu":
        _refuse_gpu_hashing({name: chains[name] for name in output_names}, evidence)
    if not output_names:
        raise ValueError("the workflow has no output columns")
    groups, hidden = _groups(chains, output_names, input_dtypes, list_inputs)
    used_inputs = {c for name in output_names for c in chains[name].raw_columns()}
    input_schema = [ColumnSpec(c, d, c in list_inputs) for c, d in input_dtypes.items() if c in used_inputs]
    output_schema = [ColumnSpec(name, chains[name].dtype, chains[name].on_list(list_inputs)) for name in output_names]
    return TransformPlan(input_schema, output_schema, groups, nvtabular.__version__, hidden_schema=hidden)
