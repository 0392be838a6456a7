"""Render models into a Triton model repository from ``model_repository_templates/``."""

from __future__ import annotations

import os
import shutil
import string
from pathlib import Path
from typing import Any

from tritonrec.transform.plan import TransformPlan
from tritonrec.transform.serving import LAYOUTS, TensorSpec, TransformModel

_PACKAGE_DIR = Path(__file__).resolve().parent


def templates_dir() -> Path:
    """Directory of the ``config.pbtxt`` templates (installed copy, else the source checkout's)."""
    installed = _PACKAGE_DIR / "_templates"
    return installed if installed.is_dir() else _PACKAGE_DIR.parent / "model_repository_templates"


def render_template(template: str, **values: Any) -> str:
    """Fills ``${name}`` fields of ``model_repository_templates/<template>/config.pbtxt``."""
    text = (templates_dir() / template / "config.pbtxt").read_text()
    return string.Template(text).substitute(**{k: str(v) for k, v in values.items()})


def tensor_block(kind: str, specs: list[TensorSpec]) -> str:
    """``input [...]`` or ``output [...]`` block of a config.pbtxt."""
    entries = ",\n".join(
        f'  {{ name: "{s.name}", data_type: TYPE_{s.triton_dtype}, dims: [ {", ".join(map(str, s.dims))} ] }}'
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
) -> Path:
    """Writes a transform model into a Triton model repository.

    Args:
        workflow: a fitted ``nvtabular.Workflow``, the directory it was saved to, a
            :class:`TransformPlan`, or a saved plan directory.
        repository: the model repository (created if missing).
        name: the model's name; a model of that name gets a new version directory N+1.
        layout: ``"per-column"`` (one tensor per column) or ``"packed"`` (one per dtype).
        max_batch_size: the most rows per request (Triton's ``max_batch_size``).
        instance_count: CPU instances of the model.
        max_queue_delay_us: dynamic batcher's queue delay in microseconds.

    Returns:
        The model directory ``repository/name``.

    Raises:
        ValueError: a bad layout, name or size. UnsupportedOpError: the workflow cannot be compiled.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {LAYOUTS}")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"model name {name!r}: expected a plain directory name")
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size {max_batch_size}: expected >= 1")
    plan = load_or_compile(workflow)
    model = TransformModel(plan, layout, max_batch_size)
    model_dir = Path(repository) / name
    version_dir = model_dir / str(next_version(model_dir))
    version_dir.mkdir(parents=True)
    try:
        plan.save(version_dir / "plan")
        config = render_template(
            "nvtabular_transform",
            name=name,
            max_batch_size=max_batch_size,
            inputs=tensor_block("input", model.inputs),
            outputs=tensor_block("output", model.outputs),
            instance_count=instance_count,
            max_queue_delay_us=max_queue_delay_us,
            layout=layout,
            fingerprint=plan.fingerprint,
        )
        (model_dir / "config.pbtxt").write_text(config)
    except BaseException:
        shutil.rmtree(version_dir, ignore_errors=True)
        raise
    return model_dir


def load_or_compile(source: Any) -> TransformPlan:
    """A :class:`TransformPlan` from a plan, a plan directory, a workflow or a workflow directory."""
    if isinstance(source, TransformPlan):
        return source
    if isinstance(source, (str, os.PathLike)) and (Path(source) / "manifest.json").is_file():
        return TransformPlan.load(source)
    from tritonrec.transform.compile import compile_workflow  # noqa: PLC0415 - needs nvtabular

    return compile_workflow(source)
