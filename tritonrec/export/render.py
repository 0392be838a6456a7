"""Rendering ``config.pbtxt`` files from ``model_repository_templates/``, version directories, copies."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tritonrec.serving.specs import TensorSpec

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the tritonrec package


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


def check_name(name: str) -> None:
    """Raises ValueError unless ``name`` can be a model directory's name."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"model name {name!r}: expected a plain directory name")


@contextlib.contextmanager
def new_version(model_dir: Path) -> Iterator[Path]:
    """Creates ``model_dir/<N+1>``; removes it again if the block fails."""
    version_dir = model_dir / str(next_version(model_dir))
    version_dir.mkdir(parents=True)
    try:
        yield version_dir
    except BaseException:
        shutil.rmtree(version_dir, ignore_errors=True)
        raise


def copy_tree(source: Path, target: Path) -> None:
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


def json_parameter(value: Any) -> str:
    """``value`` as compact JSON escaped for a ``string_value: "..."`` of a config.pbtxt (e.g. a
    plan's ``packed_inputs``: dtype -> its columns in order, which clients read back)."""
    return json.dumps(value, separators=(",", ":")).replace('"', '\\"')
