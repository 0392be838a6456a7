"""What must hold before an ensemble is written: the plan's outputs, the store and the scorer chain.

Every check raises ValueError (or FingerprintMismatchError) naming the part, the tensor or table,
and both sides.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tritonrec.export.render import check_name
from tritonrec.serving.dtypes import numpy_dtype
from tritonrec.serving.fingerprint import check_fingerprint
from tritonrec.serving.specs import TensorSpec
from tritonrec.transform.plan import TransformPlan


@dataclasses.dataclass(frozen=True)
class ServedScorer:
    """A scoring model the user already serves from the same model repository (any Triton model:
    TensorFlow SavedModel, TorchScript on the pytorch backend, ONNX, TensorRT, Python...).

    Attributes:
        model: its name in the repository (``<repository>/<model>/config.pbtxt`` must exist).
        dense_input: its input that takes the dense features, FP32 [batch, n_dense].
        embeddings_input: its input that takes the embeddings, FP32 [batch, n_tables, dim].
        output: its output holding the probability, FP32 [batch, 1].
        version: the version the ensemble calls (-1: the latest).
    """

    model: str
    dense_input: str
    embeddings_input: str
    output: str
    version: int = -1


@dataclasses.dataclass(frozen=True)
class EnsembleColumns:
    """The plan's outputs as the ensemble passes them on.

    Attributes:
        single: int64 id columns (``OUTPUT_INT64``, one slot each), in packed order.
        multi: list (multi-hot) id columns, in output order.
        tables: the embeddings' slots: ``single`` and ``multi`` columns in the plan's output order.
        combiners: list column -> ``"sum"`` or ``"mean"``.
        sizes: table -> codes the plan encodes.
        n_dense: float32 dense columns (``OUTPUT_FP32``).
    """

    single: list[str]
    multi: list[str]
    tables: list[str]
    combiners: dict[str, str]
    sizes: dict[str, int]
    n_dense: int


_DTYPE_FIXES = {
    "f": "end the column's ops with a float32 step: Normalize(out_dtype=np.float32) or NormalizeMinMax(out_dtype=np.float32) "
         "(both give float64 by default), or LogOp() (float32); or export with cast_float64=True (--cast-float64) to pass "
         "float64 columns as float32",
    "i": "Bucketize and HashBucket give int32, not codes: follow them with Categorify() (int64 codes)",
    "u": "follow the column's ops with Categorify() (int64 codes)",
}


def _check_output_dtypes(plan: TransformPlan, cast_float64: bool) -> None:
    """ValueError naming each plan output the ensemble cannot pass (it passes int64 Categorify codes
    and float32 dense features, and float64 ones cast with ``cast_float64``), by dtype, and the
    change to the workflow that fixes it."""
    passed = ("int64", "float32", "float64") if cast_float64 else ("int64", "float32")
    other = {d: cols for d, cols in plan.packed_outputs.items() if d not in passed}
    if other:
        lines = [f"{d}: {cols} ({_DTYPE_FIXES.get(np.dtype(d).kind, 'leave the column out of the workflow outputs')})"
                 for d, cols in sorted(other.items())]
        raise ValueError("the ensemble passes int64 ids (Categorify codes) and float32 dense features; the plan also outputs "
                         + "; ".join(lines))


def ensemble_columns(plan: TransformPlan, multi_hot_combiner: str | Mapping[str, str], combiner_choices: tuple[str, ...],
                     cast_float64: bool = False) -> EnsembleColumns:
    """The plan's outputs, checked: every int64 output (packed or list) a Categorify code, floats
    float32 (or float64, passed as float32, with ``cast_float64``)."""
    codes = plan.categorical_codes()
    _check_output_dtypes(plan, cast_float64)
    single = list(plan.packed_outputs.get("int64", []))
    multi = list(plan.list_outputs)
    not_codes = [c for c in multi if c not in codes or next(s.dtype for s in plan.output_schema if s.name == c) != np.int64]
    if not_codes:
        raise ValueError(f"list output column(s) {not_codes} are not int64 Categorify codes: the ensemble looks list outputs up as multi-hot ids")
    combiners = {c: multi_hot_combiner for c in multi} if isinstance(multi_hot_combiner, str) else dict(multi_hot_combiner)
    bad = {c: v for c, v in combiners.items() if c not in multi or v not in combiner_choices}
    if bad or set(combiners) != set(multi):
        raise ValueError(f"multi_hot_combiner {multi_hot_combiner!r}: expected 'sum' or 'mean', for each list output {multi}")
    tables = [c.name for c in plan.output_schema if c.name in single or c.name in multi]
    not_ids = [c for c in single if c not in codes]
    if not_ids:
        raise ValueError(f"int64 output column(s) {not_ids} are not Categorify codes: the ensemble looks every int64 output up as an id")
    if not tables:
        raise ValueError("the plan has no Categorify output: nothing to look up")
    sizes = {c: codes[c][0] for c in tables}
    n_dense = sum(len(plan.packed_outputs.get(d, [])) for d in (("float32", "float64") if cast_float64 else ("float32",)))
    return EnsembleColumns(single, multi, tables, combiners, sizes, n_dense)


def store_metadata(plan: TransformPlan) -> dict[str, Any]:
    """What an embedding store built for ``plan`` records, for :func:`check_store`:
    ``plan_fingerprint`` and ``table_sizes`` (Categorify output -> the rows its table needs, codes
    0 .. size-1). Pass it as ``build_store(..., metadata=store_metadata(plan))``; the command line
    does the same with ``embedding-cache build --plan PLAN_DIR``."""
    return {"plan_fingerprint": plan.fingerprint, "table_sizes": {c: r[0] for c, r in plan.categorical_codes().items()}}


def scorer_info(plan: TransformPlan, dim: int, *, cast_float64: bool = False, dense_input: str = "dense",
                embeddings_input: str = "embeddings", output: str = "probability") -> Any:
    """The :class:`~tritonrec.scorer.artifact.ScorerInfo` of a scoring model trained on ``plan``'s
    outputs, for ``save_scorer(path, module, scorer_info(plan, dim))``: its fingerprint, the
    embedding tables in the ensemble's slot order (the Categorify outputs, list columns included,
    in the workflow's output order) with the codes each encodes, the dense features (float32
    outputs; float64 too with ``cast_float64``, as the export option) and ``dim``, the embedding
    width. ValueError for a plan the ensemble cannot pass (see :func:`ensemble_columns`)."""
    from tritonrec.scorer.artifact import ScorerInfo  # noqa: PLC0415

    columns = ensemble_columns(plan, "mean", ("sum", "mean"), cast_float64)
    floats = (np.float32, np.float64) if cast_float64 else (np.float32,)
    dense = tuple(c.name for c in plan.output_schema if not c.is_list and c.dtype in floats)
    return ScorerInfo(plan.fingerprint, tuple(columns.tables), dict(columns.sizes), columns.n_dense, int(dim), dense_input,
                      embeddings_input, output, dense)


def check_store(store: str | os.PathLike[str], plan: TransformPlan, columns: EnsembleColumns) -> int:
    """The store was trained against ``plan``: its fingerprint, one table per id column with the
    plan's size, one dim for all. Returns that dim."""
    from embedding_cache import read_store_info  # noqa: PLC0415

    metadata, store_tables = read_store_info(store)
    check_fingerprint(f"embedding store {store}", metadata.get("plan_fingerprint"), plan.fingerprint,
                      "build it with `embedding-cache build --plan PLAN_DIR ...`, or build_store(..., metadata=store_metadata(plan))")
    by_name = {t.name: t for t in store_tables}
    absent = [c for c in columns.tables if c not in by_name]
    if absent:
        raise ValueError(f"embedding store {store} has no table(s) {absent} (it has {sorted(by_name)})")
    recorded = metadata.get("table_sizes", {})
    for column in columns.tables:
        if int(recorded.get(column, -1)) != columns.sizes[column]:
            raise ValueError(
                f"embedding store {store}: table {column!r} was built for {recorded.get(column)} codes; the plan encodes {columns.sizes[column]}"
            )
    dims = {by_name[c].dim for c in columns.tables}
    if len(dims) != 1:
        raise ValueError(f"embedding store {store}: the id tables have different dims {sorted(dims)}")
    return dims.pop()


@dataclasses.dataclass(frozen=True)
class ScorerWiring:
    """How the ensemble calls the scorer: model name and version (None: written by the export)
    and its dense input, embeddings input and probability output."""

    model: str
    version: int | None
    dense_input: str
    embeddings_input: str
    output: str


def check_scorer(scorer: str | os.PathLike[str] | ServedScorer, repository: Path, name: str, plan: TransformPlan,
                 columns: EnsembleColumns, dense: TensorSpec, embeddings: TensorSpec) -> ScorerWiring:
    """The scorer takes exactly ``dense`` and ``embeddings`` (and a served one outputs FP32 [1]);
    a scorer artifact was trained against ``plan`` on the same tables and sizes."""
    from tritonrec.scorer.artifact import read_scorer_info  # noqa: PLC0415
    from tritonrec.serving.scorer_model import check_scorer_tensors  # noqa: PLC0415

    if isinstance(scorer, ServedScorer):
        check_name(scorer.model)
        inputs, outputs, _ = config_tensors(repository / scorer.model / "config.pbtxt")
        what = f"scoring model {scorer.model!r}"
        check_scorer_tensors(inputs, [dataclasses.replace(dense, name=scorer.dense_input), dataclasses.replace(embeddings, name=scorer.embeddings_input)], what)
        check_scorer_tensors(outputs, [TensorSpec(scorer.output, np.dtype(np.float32), (1,))], what)
        return ScorerWiring(scorer.model, scorer.version, scorer.dense_input, scorer.embeddings_input, scorer.output)
    info = read_scorer_info(scorer, verify=True)  # a damaged scorer is refused before it is copied
    check_fingerprint(f"scorer {scorer}", info.plan_fingerprint, plan.fingerprint)
    if list(info.tables) != columns.tables:
        raise ValueError(f"scorer {scorer} takes embeddings of tables {list(info.tables)}; the plan's ids are {columns.tables}")
    for column in columns.tables:
        if int(info.table_sizes.get(column, -1)) != columns.sizes[column]:
            raise ValueError(f"scorer {scorer}: table {column!r} was trained with {info.table_sizes.get(column)} codes; the plan encodes {columns.sizes[column]}")
    check_scorer_tensors(info.inputs, [dataclasses.replace(dense, name=info.dense_input), dataclasses.replace(embeddings, name=info.embeddings_input)], f"scorer {scorer}")
    return ScorerWiring(f"{name}_scorer", None, info.dense_input, info.embeddings_input, info.output)


def config_tensors(config_path: Path) -> tuple[list[TensorSpec], list[TensorSpec], int]:
    """Inputs, outputs and max_batch_size of a config.pbtxt (dims without the batch dim; a
    datatype numpy lacks reads as ``object``)."""
    from google.protobuf import text_format  # noqa: PLC0415
    from tritonclient.grpc import model_config_pb2  # noqa: PLC0415

    try:
        config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
    except FileNotFoundError:
        raise FileNotFoundError(f"{config_path}: no such file (the scoring model must be in the repository)") from None
    except text_format.ParseError as e:
        raise ValueError(f"{config_path}: not a valid model configuration ({e})") from None

    def specs(tensors: Any) -> list[TensorSpec]:
        out = []
        for t in tensors:
            try:
                dtype = numpy_dtype(model_config_pb2.DataType.Name(t.data_type))
            except ValueError:
                dtype = np.dtype(object)
            dims = tuple(int(d) for d in t.dims)
            if config.max_batch_size == 0 and dims:
                dims = dims[1:]  # no batching: the first dim is the batch
            out.append(TensorSpec(t.name, dtype, dims))
        return out

    return specs(config.input), specs(config.output), int(config.max_batch_size)
