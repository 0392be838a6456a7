"""Render models into a Triton model repository from ``model_repository_templates/``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import string
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tritonrec.transform.plan import TransformPlan
from tritonrec.serving.lists import list_layout_for, list_tensor_specs
from tritonrec.serving.specs import TensorSpec
from tritonrec.serving.transform_model import LAYOUTS, TransformModel

_PACKAGE_DIR = Path(__file__).resolve().parent


def templates_dir() -> Path:
    """Directory of the ``config.pbtxt`` templates (installed copy, else the source checkout's)."""
    installed = _PACKAGE_DIR / "_templates"
    return installed if installed.is_dir() else _PACKAGE_DIR.parent / "model_repository_templates"


def render_template(template: str, **values: Any) -> str:
    """Fills ``${name}`` fields of ``model_repository_templates/<template>/config.pbtxt``."""
    text = (templates_dir() / template / "config.pbtxt").read_text()
    return string.Template(text).substitute(**{k: str(v) for k, v in values.items()})


def tensor_block(kind: str, specs: list[TensorSpec], max_batch_size: int = 1) -> str:
    """``input [...]`` or ``output [...]`` block of a config.pbtxt (dims as :meth:`TensorSpec.config_dims`)."""
    entries = ",\n".join(
        f'  {{ name: "{s.name}", data_type: TYPE_{s.triton_dtype}, dims: [ {", ".join(map(str, s.config_dims(max_batch_size)))} ] }}'
        for s in specs
    )
    return f"{kind} [\n{entries}\n]"


def next_version(model_dir: Path) -> int:
    """1 for a new model, else one more than the highest numbered version directory."""
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, default=0) + 1


def export_transform(
    workflow: Any,
    repository: str | os.PathLike[str],
    name: str,
    *,
    layout: str = "per-column",
    max_batch_size: int = 16384,
    instance_count: int = 1,
    max_queue_delay_us: int = 0,
    output_layout: str | None = None,
    instance_kind: str = "KIND_CPU",
    hashing: str = "auto",
) -> Path:
    """Writes a transform model into a Triton model repository.

    Args:
        workflow: a fitted ``nvtabular.Workflow``, the directory it was saved to, a
            :class:`TransformPlan`, or a saved plan directory.
        repository: the model repository (created if missing).
        name: the model's name; a model of that name gets a new version directory N+1.
        layout: ``"per-column"`` (one tensor per column) or ``"packed"`` (one per dtype).
        max_batch_size: the most rows per request (Triton's ``max_batch_size``); 0: Triton does
            not batch, and list columns travel as ``<name>__values`` + ``<name>__offsets`` (flat,
            NVTabular's convention) instead of padded ``<name>__values`` + ``<name>__lengths``.
        instance_count: CPU instances of the model.
        max_queue_delay_us: dynamic batcher's queue delay in microseconds.
        output_layout: layout of the outputs (default: ``layout``).
        instance_kind: ``"KIND_CPU"``, or ``"KIND_GPU"``: the plan runs with cupy on the
            instance's GPU and its tensors stay in device memory (string columns are hashed on
            the host, their codes moved to the device).
        hashing: as in :func:`~tritonrec.transform.compile.compile_workflow` (``"cpu"``: the
            workflow ran on the CPU, whatever its saved metadata says).

    Returns:
        The model directory ``repository/name``.

    Raises:
        ValueError: a bad layout, name or size. UnsupportedOpError: the workflow cannot be compiled.
    """
    output_layout = output_layout or layout
    for what, value in (("layout", layout), ("output_layout", output_layout)):
        if value not in LAYOUTS:
            raise ValueError(f"{what} {value!r}: expected one of {LAYOUTS}")
    _check_name(name)
    if max_batch_size < 0:
        raise ValueError(f"max_batch_size {max_batch_size}: expected >= 0")
    if instance_kind not in ("KIND_CPU", "KIND_GPU"):
        raise ValueError(f"instance_kind {instance_kind!r}: expected 'KIND_CPU' or 'KIND_GPU'")
    plan = load_or_compile(workflow, hashing)
    model = TransformModel(plan, layout, max_batch_size, output_layout, list_layout_for(max_batch_size))
    model_dir = Path(repository) / name
    with _new_version(model_dir) as version_dir:
        plan.save(version_dir / "plan")
        config = render_template(
            "nvtabular_transform",
            name=name,
            max_batch_size=max_batch_size,
            inputs=tensor_block("input", model.inputs, max_batch_size),
            outputs=tensor_block("output", model.outputs, max_batch_size),
            instance_count=instance_count,
            batching=f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}" if max_batch_size else "",
            layout=layout,
            output_layout=output_layout,
            fingerprint=plan.fingerprint,
            instance_kind=instance_kind,
            force_cpu_inputs="no" if instance_kind == "KIND_GPU" else "yes",
        )
        (model_dir / "config.pbtxt").write_text(config)
    return model_dir


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"model name {name!r}: expected a plain directory name")


@contextlib.contextmanager
def _new_version(model_dir: Path) -> Iterator[Path]:
    """Creates ``model_dir/<N+1>``; removes it again if the block fails."""
    version_dir = model_dir / str(next_version(model_dir))
    version_dir.mkdir(parents=True)
    try:
        yield version_dir
    except BaseException:
        shutil.rmtree(version_dir, ignore_errors=True)
        raise


def load_or_compile(source: Any, hashing: str = "auto") -> TransformPlan:
    """A :class:`TransformPlan` from a plan, a plan directory, a workflow or a workflow directory."""
    if isinstance(source, TransformPlan):
        return source
    if isinstance(source, (str, os.PathLike)) and (Path(source) / "manifest.json").is_file():
        return TransformPlan.load(source)
    from tritonrec.transform.compile import compile_workflow  # noqa: PLC0415 - needs nvtabular

    return compile_workflow(source, hashing=hashing)


# ------------------------------------------------------------------------------------- ensembles
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


def _config_tensors(config_path: Path) -> tuple[list[TensorSpec], list[TensorSpec], int]:
    """Inputs, outputs and max_batch_size of a config.pbtxt (dims without the batch dim)."""
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
            name = model_config_pb2.DataType.Name(t.data_type).removeprefix("TYPE_")
            dtype = np.dtype(_TRITON_TO_NUMPY.get(name, "object"))
            dims = tuple(int(d) for d in t.dims)
            if config.max_batch_size == 0 and dims:
                dims = dims[1:]  # no batching: the first dim is the batch
            out.append(TensorSpec(t.name, dtype, dims))
        return out

    return specs(config.input), specs(config.output), int(config.max_batch_size)


_TRITON_TO_NUMPY = {"FP32": "float32", "FP16": "float16", "FP64": "float64", "INT64": "int64", "INT32": "int32", "BOOL": "bool"}


def export_ensemble(
    workflow: Any,
    store: str | os.PathLike[str],
    scorer: str | os.PathLike[str] | ServedScorer,
    repository: str | os.PathLike[str],
    name: str,
    *,
    layout: str = "packed",
    max_batch_size: int = 16384,
    instance_count: int = 1,
    max_queue_delay_us: int = 0,
    host_budget_bytes: int | None = None,
    missing_key_policy: str = "store",
    lookup_threads: int | None = None,
    scorer_threads: int | None = None,
    scorer_kind: str = "KIND_CPU",
    lookup_kind: str = "KIND_CPU",
    transform_kind: str = "KIND_CPU",
    gpu_cache_bytes: int | None = None,
    gpu_eviction: str = "lru",
    gpu_admission: bool = False,
    gpu_cache_dtype: str = "float32",
    gpu_async_insert: bool = False,
    multi_hot_combiner: str | Mapping[str, str] = "mean",
) -> Path:
    """Writes transform -> embedding lookup -> scorer as one Triton ensemble.

    Models written (each under a new version directory N+1; the ensemble pins those versions):
    ``<name>_transform`` (nvtabular_transform; ``layout`` inputs, packed outputs ``OUTPUT_INT64``
    ids [batch, n_tables] and ``OUTPUT_FP32`` dense [batch, n_dense]), ``<name>_embeddings``
    (embedding_lookup; a copy of the store), ``<name>_scorer`` (torch_scorer; a copy of the
    scorer; not written for a :class:`ServedScorer`), and ``<name>`` (the ensemble: the
    transform's inputs in -> ``probability`` FP32 [batch, 1] out).

    Args:
        workflow: a fitted workflow, its directory, a :class:`TransformPlan` or a plan directory.
        store: an embedding store directory whose tables are the plan's categorical output
            columns, recording the plan's fingerprint and table sizes (``metadata``).
        scorer: a tritonrec scorer directory (see :mod:`tritonrec.scorer.artifact`), or a
            :class:`ServedScorer` already in ``repository``.
        repository: the model repository.
        name: the ensemble's name.
        layout: the ensemble's input layout, ``"per-column"`` or ``"packed"``.
        host_budget_bytes: host memory for a store with a RocksDB tier (None: all rows in memory).
        missing_key_policy: ``"store"``, ``"zeros"`` or ``"error"`` for ids no tier holds.
        scorer_kind: ``"KIND_CPU"`` or ``"KIND_GPU"`` instances of the torch scorer.
        lookup_kind: ``"KIND_CPU"`` or ``"KIND_GPU"`` instances of the embedding lookup; GPU
            instances cache hot rows in ``gpu_cache_bytes`` of device memory (``gpu_eviction``
            ``"lru"``/``"lfu"``, ``gpu_admission``, row storage ``gpu_cache_dtype``, inserts off
            the lookup's stream with ``gpu_async_insert``) and keep their tensors on the device.
        transform_kind: ``"KIND_CPU"`` or ``"KIND_GPU"`` instances of the transform (the plan
            with cupy on the GPU; string columns are hashed on the host).
        multi_hot_combiner: for list (multi-hot) Categorify outputs, ``"sum"`` or ``"mean"`` of
            each row's vectors, one for all or per column. Tables (the embeddings' slots) are the
            categorical outputs in the plan's output order, list ones included; the transform
            passes a list column to the lookup as ``<col>__values`` + ``<col>__lengths``.

    Returns:
        The ensemble's model directory.

    Raises:
        FingerprintMismatchError: the store or scorer was trained against another plan (names both).
        ValueError: tensors that do not chain (names the tensor, dtype and dims), tables or
            sizes that differ from the plan's, bad options.
        StoreFormatError, ScorerFormatError, FileNotFoundError: unreadable parts.
    """
    from embedding_cache import read_store_info  # noqa: PLC0415
    from tritonrec.serving.fingerprint import check_fingerprint  # noqa: PLC0415
    from tritonrec.serving.lookup_model import COMBINERS, MISSING_CHOICES  # noqa: PLC0415
    from tritonrec.scorer.artifact import ScorerInfo, read_scorer_info  # noqa: PLC0415
    from tritonrec.serving.scorer_model import check_scorer_tensors  # noqa: PLC0415

    _check_name(name)
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {LAYOUTS}")
    if missing_key_policy not in MISSING_CHOICES:
        raise ValueError(f"missing_key_policy {missing_key_policy!r}: expected one of {MISSING_CHOICES}")
    for what, kind in (("scorer_kind", scorer_kind), ("lookup_kind", lookup_kind)):
        if kind not in ("KIND_CPU", "KIND_GPU"):
            raise ValueError(f"{what} {kind!r}: expected KIND_CPU or KIND_GPU")
    if lookup_kind == "KIND_GPU" and (gpu_cache_bytes is None or gpu_cache_bytes < 1):
        raise ValueError("lookup_kind KIND_GPU needs gpu_cache_bytes >= 1 (device memory for the GPU cache)")
    repository = Path(repository)
    plan = load_or_compile(workflow)

    # The transform's packed outputs: ids (every int64 output a Categorify code) and dense floats;
    # list outputs: multi-hot ids.
    codes = plan.categorical_codes()
    other = sorted(set(plan.packed_outputs) - {"int64", "float32"})
    if other:
        raise ValueError(f"the plan outputs columns of dtype {other}: the ensemble passes only int64 ids and float32 dense features")
    single = plan.packed_outputs.get("int64", [])
    multi = plan.list_outputs
    not_codes = [c for c in multi if c not in codes or next(s.dtype for s in plan.output_schema if s.name == c) != np.int64]
    if not_codes:
        raise ValueError(f"list output column(s) {not_codes} are not int64 Categorify codes: the ensemble looks list outputs up as multi-hot ids")
    combiners = {c: multi_hot_combiner for c in multi} if isinstance(multi_hot_combiner, str) else dict(multi_hot_combiner)
    bad = {c: v for c, v in combiners.items() if c not in multi or v not in COMBINERS}
    if bad or set(combiners) != set(multi):
        raise ValueError(f"multi_hot_combiner {multi_hot_combiner!r}: expected 'sum' or 'mean', for each list output {multi}")
    tables = [c.name for c in plan.output_schema if c.name in single or c.name in multi]  # the embeddings' slots
    not_ids = [c for c in single if c not in codes]
    if not_ids:
        raise ValueError(f"int64 output column(s) {not_ids} are not Categorify codes: the ensemble looks every int64 output up as an id")
    if not tables:
        raise ValueError("the plan has no Categorify output: nothing to look up")
    n_dense = len(plan.packed_outputs.get("float32", []))
    sizes = {c: codes[c][0] for c in tables}

    # The store: trained against this plan, one table per id column with the plan's size.
    metadata, store_tables = read_store_info(store)
    check_fingerprint(f"embedding store {store}", metadata.get("plan_fingerprint"), plan.fingerprint)
    by_name = {t.name: t for t in store_tables}
    absent = [c for c in tables if c not in by_name]
    if absent:
        raise ValueError(f"embedding store {store} has no table(s) {absent} (it has {sorted(by_name)})")
    recorded = metadata.get("table_sizes", {})
    for column in tables:
        if int(recorded.get(column, -1)) != sizes[column]:
            raise ValueError(
                f"embedding store {store}: table {column!r} was built for {recorded.get(column)} codes; the plan encodes {sizes[column]}"
            )
    dims = {by_name[c].dim for c in tables}
    if len(dims) != 1:
        raise ValueError(f"embedding store {store}: the id tables have different dims {sorted(dims)}")
    dim = dims.pop()
    dense_spec = TensorSpec("dense", np.dtype(np.float32), (n_dense,))
    embeddings_spec = TensorSpec("embeddings", np.dtype(np.float32), (len(tables), dim))

    # The scorer: its inputs must take exactly these tensors.
    if isinstance(scorer, ServedScorer):
        _check_name(scorer.model)
        inputs, outputs, _ = _config_tensors(repository / scorer.model / "config.pbtxt")
        what = f"scoring model {scorer.model!r}"
        check_scorer_tensors(inputs, [dataclasses.replace(dense_spec, name=scorer.dense_input), dataclasses.replace(embeddings_spec, name=scorer.embeddings_input)], what)
        check_scorer_tensors(outputs, [TensorSpec(scorer.output, np.dtype(np.float32), (1,))], what)
        scorer_name, scorer_version = scorer.model, scorer.version
        dense_input, embeddings_input, scorer_output = scorer.dense_input, scorer.embeddings_input, scorer.output
    else:
        info: ScorerInfo = read_scorer_info(scorer, verify=True)  # a damaged scorer is refused before it is copied
        check_fingerprint(f"scorer {scorer}", info.plan_fingerprint, plan.fingerprint)
        if list(info.tables) != tables:
            raise ValueError(f"scorer {scorer} takes embeddings of tables {list(info.tables)}; the plan's ids are {tables}")
        for column in tables:
            if int(info.table_sizes.get(column, -1)) != sizes[column]:
                raise ValueError(f"scorer {scorer}: table {column!r} was trained with {info.table_sizes.get(column)} codes; the plan encodes {sizes[column]}")
        what = f"scorer {scorer}"
        check_scorer_tensors(info.inputs, [dataclasses.replace(dense_spec, name=info.dense_input), dataclasses.replace(embeddings_spec, name=info.embeddings_input)], what)
        scorer_name, scorer_version = f"{name}_scorer", None
        dense_input, embeddings_input, scorer_output = info.dense_input, info.embeddings_input, info.output
    _check_name(f"{name}_transform")

    transform_dir = export_transform(
        plan, repository, f"{name}_transform", layout=layout, max_batch_size=max_batch_size,
        instance_count=instance_count, max_queue_delay_us=max_queue_delay_us, output_layout="packed",
        instance_kind=transform_kind,
    )
    transform_version = next_version(transform_dir) - 1
    written = [transform_dir / str(transform_version)]
    try:
        embeddings_dir = repository / f"{name}_embeddings"
        lookup_specs = ([TensorSpec("ids", np.dtype(np.int64), (len(single),))] if single else []) + [
            s for c in multi for s in list_tensor_specs(c, np.dtype(np.int64), "padded")]
        with _new_version(embeddings_dir) as version_dir:
            _copy_tree(Path(store), version_dir / "store")
            (embeddings_dir / "config.pbtxt").write_text(render_template(
                "embedding_lookup", name=f"{name}_embeddings", max_batch_size=max_batch_size, n_tables=len(tables),
                inputs=tensor_block("input", lookup_specs), multi_hot=",".join(f"{c}:{combiners[c]}" for c in multi),
                dim=dim, instance_count=instance_count, max_queue_delay_us=max_queue_delay_us, store="store",
                tables=",".join(tables), missing_key_policy=missing_key_policy,
                host_budget_bytes="" if host_budget_bytes is None else int(host_budget_bytes),
                threads="" if lookup_threads is None else int(lookup_threads), fingerprint=plan.fingerprint,
                instance_kind=lookup_kind, gpu_cache_bytes="" if gpu_cache_bytes is None else int(gpu_cache_bytes),
                gpu_eviction=gpu_eviction, gpu_admission="true" if gpu_admission else "false",
                gpu_cache_dtype=gpu_cache_dtype, gpu_async_insert="true" if gpu_async_insert else "false",
                force_cpu_inputs="no" if lookup_kind == "KIND_GPU" else "yes",
            ))
        embeddings_version = int(version_dir.name)
        written.append(version_dir)
        if scorer_version is None:
            scorer_dir = repository / scorer_name
            with _new_version(scorer_dir) as version_dir:
                _copy_tree(Path(scorer), version_dir / "scorer")
                (scorer_dir / "config.pbtxt").write_text(render_template(
                    "torch_scorer", name=scorer_name, max_batch_size=max_batch_size, dense_input=dense_input,
                    embeddings_input=embeddings_input, output=scorer_output, n_dense=n_dense, n_tables=len(tables), dim=dim,
                    instance_count=instance_count, instance_kind=scorer_kind, max_queue_delay_us=max_queue_delay_us,
                    threads="" if scorer_threads is None else int(scorer_threads), fingerprint=plan.fingerprint,
                    force_cpu_inputs="no" if scorer_kind == "KIND_GPU" else "yes",
                ))
            scorer_version = int(version_dir.name)
            written.append(version_dir)
        transform = TransformModel(plan, layout, max_batch_size, "packed")
        ensemble_dir = repository / name
        with _new_version(ensemble_dir):
            transform_inputs = "\n".join(
                f'      input_map {{ key: "{s.name}" value: "{s.name}" }}' for s in transform.inputs
            )
            packed_inputs = json.dumps(plan.packed_inputs, separators=(",", ":")).replace('"', '\\"')
            # a list column's codes leave the transform under the names its raw values came in
            # with: inside the ensemble they get names of their own ("codes/<tensor>")
            inner = {s.name: ("ids" if s.name == "ids" else f"codes/{s.name}") for s in lookup_specs}
            passed = ([("OUTPUT_INT64", "ids")] if single else []) + ([("OUTPUT_FP32", "dense")] if n_dense else []) + [
                (s.name, inner[s.name]) for s in lookup_specs if s.name != "ids"]
            transform_outputs = "\n".join(f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in passed)
            lookup_inputs = "\n".join(f'      input_map {{ key: "{s.name}" value: "{inner[s.name]}" }}' for s in lookup_specs)
            (ensemble_dir / "config.pbtxt").write_text(render_template(
                "ensemble", name=name, max_batch_size=max_batch_size, inputs=tensor_block("input", transform.inputs),
                transform=transform_dir.name, transform_version=transform_version, transform_inputs=transform_inputs,
                transform_outputs=transform_outputs, lookup_inputs=lookup_inputs,
                embeddings=embeddings_dir.name, embeddings_version=embeddings_version,
                scorer=scorer_name, scorer_version=scorer_version, dense_input=dense_input,
                embeddings_input=embeddings_input, scorer_output=scorer_output,
                fingerprint=plan.fingerprint, layout=layout, packed_inputs=packed_inputs,
            ))
    except BaseException:
        for version_dir in written:
            shutil.rmtree(version_dir, ignore_errors=True)
        raise
    return ensemble_dir


def _copy_tree(source: Path, target: Path) -> None:
    """Copies a directory; ``.npy`` files (never written after a store is built) are hard-linked
    where the filesystem allows, everything else (RocksDB's files change in place) is copied."""
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such directory")

    def link_or_copy(src: str, dst: str) -> None:
        if src.endswith(".npy"):
            try:
                os.link(src, dst)
                return
            except OSError:
                pass
        shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy)
