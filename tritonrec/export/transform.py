"""Writing a transform model (``backend: "nvtabular_transform"``) into a model repository."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tritonrec.export.render import check_name, json_parameter, new_version, render_template, tensor_block
from tritonrec.serving.lists import list_layout_for
from tritonrec.serving.request_log import RequestLogOptions, request_key_spec
from tritonrec.serving.transform_model import TransformModel, check_layout
from tritonrec.transform.plan import TransformPlan

INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU")


def load_or_compile(source: Any, hashing: str = "auto") -> TransformPlan:
    """A :class:`TransformPlan` from a plan, a plan directory, a workflow or a workflow directory."""
    if isinstance(source, TransformPlan):
        return source
    if isinstance(source, (str, os.PathLike)) and (Path(source) / "manifest.json").is_file():
        return TransformPlan.load(source)
    from tritonrec.transform.compile import compile_workflow  # noqa: PLC0415 - needs nvtabular

    return compile_workflow(source, hashing=hashing)


def check_instance_kind(what: str, kind: str) -> None:
    """Raises ValueError naming ``what`` unless ``kind`` is one of :data:`INSTANCE_KINDS`."""
    if kind not in INSTANCE_KINDS:
        raise ValueError(f"{what} {kind!r}: expected 'KIND_CPU' or 'KIND_GPU'")


def _check_arguments(name: str, layout: str, output_layout: str, max_batch_size: int, instance_kind: str) -> None:
    """ValueError naming a bad argument of :func:`export_transform`."""
    check_layout("layout", layout)
    check_layout("output_layout", output_layout)
    check_name(name)
    if max_batch_size < 0:
        raise ValueError(f"max_batch_size {max_batch_size}: expected >= 0")
    check_instance_kind("instance_kind", instance_kind)


def _config(name: str, model: TransformModel, instance_count: int, instance_kind: str, max_queue_delay_us: int,
            request_log: RequestLogOptions | None = None) -> str:
    """The transform model's config.pbtxt: its tensors, instances, batching and parameters (with
    ``request_log``: the request key output and the logging options)."""
    plan, mbs = model.plan, model.max_batch_size
    outputs = model.outputs + ([request_key_spec()] if request_log is not None else [])
    return render_template(
        "nvtabular_transform", name=name, max_batch_size=mbs,
        inputs=tensor_block("input", model.inputs, mbs), outputs=tensor_block("output", outputs, mbs),
        request_log="" if request_log is None else json_parameter(request_log.to_parameter()),
        instance_count=instance_count, instance_kind=instance_kind, force_cpu_inputs="no" if instance_kind == "KIND_GPU" else "yes",
        batching=f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}" if mbs else "",
        layout=model.layout, output_layout=model.output_layout, fingerprint=plan.fingerprint, packed_inputs=json_parameter(plan.packed_inputs),
        null_string="" if model.null_string is None else json_parameter(model.null_string),
        input_dtypes=json_parameter({c: d.name for c, d in model.input_dtypes.items()}), cast_float64=str(model.cast_float64).lower(),
    )


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
    null_string: str | None = None,
    input_dtypes: Mapping[str, str] | None = None,
    cast_float64: bool = False,
    request_log: RequestLogOptions | None = None,
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
        null_string: the value of a string column that the model reads as null (NVTabular's
            missing value; Triton's BYTES tensors cannot carry a null), e.g. ``""``; None: none.
        input_dtypes, cast_float64: see :class:`~tritonrec.serving.transform_model.TransformModel`.
        request_log: log every request's raw tensors to a Redis Stream
            (:mod:`tritonrec.serving.request_log`); the model then also outputs ``request_key``
            INT64 [batch, 1], a new key per request on each of its rows.

    Returns:
        The model directory ``repository/name``.

    Raises:
        ValueError: a bad layout, name or size. UnsupportedOpError: the workflow cannot be compiled.
    """
    output_layout = output_layout or layout
    _check_arguments(name, layout, output_layout, max_batch_size, instance_kind)
    plan = load_or_compile(workflow, hashing)
    model = TransformModel(plan, layout, max_batch_size, output_layout, list_layout_for(max_batch_size), null_string, input_dtypes,
                           cast_float64)
    model_dir = Path(repository) / name
    with new_version(model_dir) as version_dir:
        plan.save(version_dir / "plan")
        (model_dir / "config.pbtxt").write_text(_config(name, model, instance_count, instance_kind, max_queue_delay_us, request_log))
    return model_dir
