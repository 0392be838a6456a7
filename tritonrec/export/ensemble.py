"""Writing transform -> embedding lookup -> scorer as one Triton ensemble."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from embedding_cache.options import GpuCacheOptions, HostOptions
from tritonrec.export.checks import EnsembleColumns, ScorerWiring, ServedScorer, check_scorer, check_store, ensemble_columns
from tritonrec.export.render import (
    check_name, copy_tree, json_parameter, new_version, next_version, render_template, tensor_block,
)
from tritonrec.export.transform import check_instance_kind, export_transform, load_or_compile
from tritonrec.serving.lists import list_tensor_specs
from tritonrec.serving.lookup_model import COMBINERS
from tritonrec.serving.request_log import REQUEST_KEY, RequestLogOptions
from tritonrec.serving.specs import TensorSpec
from tritonrec.serving.transform_model import TransformModel, check_layout
from tritonrec.transform.plan import TransformPlan

__all__ = ["ServedScorer", "export_ensemble"]


def _optional(value: int | None) -> str:
    return "" if value is None else str(int(value))


@dataclasses.dataclass(frozen=True)
class _Options:
    """What :func:`export_ensemble` writes into the lookup's and the scorer's configurations."""

    max_batch_size: int
    instance_count: int
    max_queue_delay_us: int
    missing_key_policy: str
    scorer_threads: int | None
    scorer_kind: str
    lookup_kind: str
    host: HostOptions
    gpu_cache: GpuCacheOptions | None
    null_string: str | None = None
    input_dtypes: Mapping[str, str] | None = None
    cast_float64: bool = False
    output_name: str = "probability"
    request_log: RequestLogOptions | None = None

    def check(self, name: str, layout: str) -> None:
        """ValueError naming a bad option, model ``name`` or ``layout``."""
        from tritonrec.serving.lookup_model import MISSING_CHOICES  # noqa: PLC0415

        check_name(name)
        check_name(f"{name}_transform")
        check_layout("layout", layout)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", self.output_name):
            raise ValueError(f"output_name {self.output_name!r}: expected a tensor name (letters, digits, _ . -)")
        if self.request_log is not None and self.output_name == REQUEST_KEY:
            raise ValueError(f"output_name {self.output_name!r}: the ensemble returns the request key under that name")
        if self.missing_key_policy not in MISSING_CHOICES:
            raise ValueError(f"missing_key_policy {self.missing_key_policy!r}: expected one of {MISSING_CHOICES}")
        check_instance_kind("scorer_kind", self.scorer_kind)
        check_instance_kind("lookup_kind", self.lookup_kind)
        if self.lookup_kind == "KIND_GPU" and self.gpu_cache is None:
            raise ValueError("lookup_kind KIND_GPU needs gpu_cache_bytes: gpu_cache=GpuCacheOptions(cache_bytes=...), "
                             "device memory for the GPU cache")


def _lookup_specs(columns: EnsembleColumns) -> list[TensorSpec]:
    """The lookup's inputs: ``ids`` [n_single] INT64, and each list column's padded pair."""
    single = [TensorSpec("ids", np.dtype(np.int64), (len(columns.single),))] if columns.single else []
    return single + [s for c in columns.multi for s in list_tensor_specs(c, np.dtype(np.int64), "padded")]


def _write_lookup(repository: Path, name: str, store: Path, plan: TransformPlan, columns: EnsembleColumns, dim: int,
                  options: _Options) -> Path:
    """Writes ``<name>_embeddings`` (a copy of the store); returns its new version directory."""
    model_dir = repository / f"{name}_embeddings"
    kind = options.lookup_kind
    with new_version(model_dir) as version_dir:
        copy_tree(store, version_dir / "store")
        (model_dir / "config.pbtxt").write_text(render_template(
            "embedding_lookup", name=model_dir.name, max_batch_size=options.max_batch_size, n_tables=len(columns.tables),
            inputs=tensor_block("input", _lookup_specs(columns)), multi_hot=",".join(f"{c}:{columns.combiners[c]}" for c in columns.multi),
            dim=dim, instance_count=options.instance_count, max_queue_delay_us=options.max_queue_delay_us, store="store",
            tables=",".join(columns.tables), missing_key_policy=options.missing_key_policy, fingerprint=plan.fingerprint,
            instance_kind=kind, force_cpu_inputs="no" if kind == "KIND_GPU" else "yes",
            **options.host.to_parameters(), **GpuCacheOptions.parameters_of(options.gpu_cache),
        ))
    return version_dir


def _write_scorer(repository: Path, scorer: Path, wiring: ScorerWiring, plan: TransformPlan, columns: EnsembleColumns, dim: int,
                  options: _Options) -> Path:
    """Writes ``wiring.model`` (torch_scorer, a copy of the scorer); returns its new version directory."""
    model_dir = repository / wiring.model
    kind = options.scorer_kind
    with new_version(model_dir) as version_dir:
        copy_tree(scorer, version_dir / "scorer")
        (model_dir / "config.pbtxt").write_text(render_template(
            "torch_scorer", name=wiring.model, max_batch_size=options.max_batch_size, dense_input=wiring.dense_input,
            embeddings_input=wiring.embeddings_input, output=wiring.output, n_dense=columns.n_dense, n_tables=len(columns.tables),
            dim=dim, instance_count=options.instance_count, instance_kind=kind, max_queue_delay_us=options.max_queue_delay_us,
            threads=_optional(options.scorer_threads), fingerprint=plan.fingerprint, force_cpu_inputs="no" if kind == "KIND_GPU" else "yes",
            request_key_input="" if options.request_log is None else f',\n  {{ name: "{REQUEST_KEY}", data_type: TYPE_INT64, dims: [ 1 ] }}',
            request_log="" if options.request_log is None else json_parameter(options.request_log.to_parameter()),
        ))
    return version_dir


def _write_ensemble(repository: Path, name: str, plan: TransformPlan, columns: EnsembleColumns, wiring: ScorerWiring,
                    versions: Mapping[str, int], layout: str, options: _Options) -> Path:
    """Writes the ensemble ``name`` calling the pinned ``versions`` of its steps.

    With ``options.request_log`` every request is logged to a Redis Stream
    (:mod:`tritonrec.serving.request_log`): the transform logs the raw tensors and gives each
    request a key, which the ensemble returns (``request_key`` INT64 [batch, 1]); tritonrec's scorer
    logs the answer under it. A :class:`ServedScorer` is the user's own model: its answers are not
    logged, the raw tensors and the keys are.
    """
    max_batch_size = options.max_batch_size
    transform = TransformModel(plan, layout, max_batch_size, "packed", input_dtypes=options.input_dtypes, cast_float64=options.cast_float64)
    lookup_specs = _lookup_specs(columns)
    # a list column's codes leave the transform under the names its raw values came in with:
    # inside the ensemble they get names of their own ("codes/<tensor>")
    inner = {s.name: ("ids" if s.name == "ids" else f"codes/{s.name}") for s in lookup_specs}
    passed = ([("OUTPUT_INT64", "ids")] if columns.single else []) + ([("OUTPUT_FP32", "dense")] if columns.n_dense else []) + [
        (s.name, inner[s.name]) for s in lookup_specs if s.name != "ids"] + ([(REQUEST_KEY, REQUEST_KEY)] if options.request_log else [])
    logged_by_scorer = options.request_log is not None and wiring.version is None  # tritonrec's own scorer logs the answers
    model_dir = repository / name
    with new_version(model_dir):
        (model_dir / "config.pbtxt").write_text(render_template(
            "ensemble", name=name, max_batch_size=max_batch_size, inputs=tensor_block("input", transform.inputs),
            transform=f"{name}_transform", transform_version=versions["transform"],
            transform_inputs="\n".join(f'      input_map {{ key: "{s.name}" value: "{s.name}" }}' for s in transform.inputs),
            transform_outputs="\n".join(f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in passed),
            lookup_inputs="\n".join(f'      input_map {{ key: "{s.name}" value: "{inner[s.name]}" }}' for s in lookup_specs),
            embeddings=f"{name}_embeddings", embeddings_version=versions["embeddings"],
            scorer=wiring.model, scorer_version=versions["scorer"], dense_input=wiring.dense_input,
            embeddings_input=wiring.embeddings_input, scorer_output=wiring.output, fingerprint=plan.fingerprint, layout=layout,
            packed_inputs=json_parameter(plan.packed_inputs), output=options.output_name,
            request_key_output="" if options.request_log is None else f', {{ name: "{REQUEST_KEY}", data_type: TYPE_INT64, dims: [ 1 ] }}',
            scorer_request_key=f'      input_map {{ key: "{REQUEST_KEY}" value: "{REQUEST_KEY}" }}\n' if logged_by_scorer else "",
        ))
    return model_dir


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
    missing_key_policy: str = "store",
    scorer_threads: int | None = None,
    scorer_kind: str = "KIND_CPU",
    lookup_kind: str = "KIND_CPU",
    transform_kind: str = "KIND_CPU",
    host: HostOptions | None = None,
    gpu_cache: GpuCacheOptions | None = None,
    multi_hot_combiner: str | Mapping[str, str] = "mean",
    null_string: str | None = None,
    input_dtypes: Mapping[str, str] | None = None,
    cast_float64: bool = False, output_name: str = "probability", request_log: RequestLogOptions | None = None,
) -> Path:
    """Writes transform -> embedding lookup -> scorer as one Triton ensemble; returns its directory.

    Models written (each under a new version N+1, pinned by the ensemble): ``<name>_transform``
    (nvtabular_transform; ``layout`` inputs, packed outputs ``OUTPUT_INT64`` ids [batch, n_tables]
    and ``OUTPUT_FP32`` dense [batch, n_dense]), ``<name>_embeddings`` (embedding_lookup; a copy of
    ``store``, whose tables are the plan's categorical outputs, recording the plan's fingerprint and
    table sizes), ``<name>_scorer`` (torch_scorer; a copy of the ``scorer`` directory; not written
    for a :class:`ServedScorer` already in ``repository``), and ``<name>`` (the ensemble: the
    transform's inputs in -> ``probability`` FP32 [batch, 1]). ``workflow``: a fitted workflow, its
    directory, a :class:`TransformPlan` or a plan directory. ``missing_key_policy``: ``store``,
    ``zeros`` or ``error``. ``*_kind``: ``KIND_CPU`` or ``KIND_GPU`` instances. ``host``: the
    lookup's :class:`HostOptions` (lookup threads; a host memory budget for a store with a RocksDB
    tier; default: every row in memory). ``gpu_cache``: the :class:`GpuCacheOptions` of ``KIND_GPU``
    lookups (device memory, dtype, eviction, admission, async inserts). ``multi_hot_combiner``:
    ``sum`` or ``mean`` of a list (multi-hot) column's vectors, one for all or per column; list
    columns reach the lookup as ``<col>__values`` + ``<col>__lengths``. ``null_string``,
    ``input_dtypes``, ``cast_float64``: see :func:`export_transform`. ``output_name``: the
    ensemble's output (``OUTPUT0`` for clients of Merlin's HugeCTR ensembles); ``request_log``: see :func:`_write_ensemble`.

    Raises:
        FingerprintMismatchError: the store or scorer was trained against another plan (names both).
        ValueError: tensors that do not chain (names the tensor, dtype and dims), tables or sizes
            that differ from the plan's, bad options. StoreFormatError, ScorerFormatError,
            FileNotFoundError: unreadable parts.
    """
    options = _Options(max_batch_size, instance_count, max_queue_delay_us, missing_key_policy, scorer_threads, scorer_kind,
                       lookup_kind, host or HostOptions(), gpu_cache, null_string, input_dtypes, cast_float64, output_name, request_log)
    options.check(name, layout)
    repository, plan = Path(repository), load_or_compile(workflow)
    columns = ensemble_columns(plan, multi_hot_combiner, COMBINERS, cast_float64)
    dim = check_store(store, plan, columns)
    wiring = check_scorer(scorer, repository, name, plan, columns, TensorSpec("dense", np.dtype(np.float32), (columns.n_dense,)),
                          TensorSpec("embeddings", np.dtype(np.float32), (len(columns.tables), dim)))
    transform_dir = _export_transform(plan, repository, name, layout, transform_kind, options)
    return _write_steps(repository, name, Path(store), scorer, plan, columns, wiring, dim, layout, options,
                        transform_dir / str(next_version(transform_dir) - 1))


def _export_transform(plan: TransformPlan, repository: Path, name: str, layout: str, kind: str, options: _Options) -> Path:
    """The ensemble's transform step ``<name>_transform``: ``layout`` inputs, packed outputs."""
    return export_transform(
        plan, repository, f"{name}_transform", layout=layout, max_batch_size=options.max_batch_size, instance_count=options.instance_count,
        max_queue_delay_us=options.max_queue_delay_us, output_layout="packed", instance_kind=kind, null_string=options.null_string,
        input_dtypes=options.input_dtypes, cast_float64=options.cast_float64, request_log=options.request_log,
    )


def _write_steps(repository: Path, name: str, store: Path, scorer: Any, plan: TransformPlan, columns: EnsembleColumns,
                 wiring: ScorerWiring, dim: int, layout: str, options: _Options, transform_version: Path) -> Path:
    """Writes the lookup, the scorer (unless served already) and the ensemble after the transform's
    ``transform_version``; on any failure removes every version directory it and the transform wrote."""
    written = [transform_version]
    try:
        written.append(_write_lookup(repository, name, store, plan, columns, dim, options))
        if wiring.version is None:
            written.append(_write_scorer(repository, Path(scorer), wiring, plan, columns, dim, options))
        versions = {"transform": int(written[0].name), "embeddings": int(written[1].name),
                    "scorer": int(written[2].name) if wiring.version is None else wiring.version}
        return _write_ensemble(repository, name, plan, columns, wiring, versions, layout, options)
    except BaseException:
        for version_dir in written:
            shutil.rmtree(version_dir, ignore_errors=True)
        raise
