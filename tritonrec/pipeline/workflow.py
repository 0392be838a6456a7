"""The Criteo-shaped NVTabular workflow: fit, save, and NVTabular's own transform for parity."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tritonrec.pipeline.synthetic import CATEGORICAL, CONTINUOUS


def criteo_workflow(
    continuous: list[str] = CONTINUOUS, categorical: list[str] = CATEGORICAL, freq_threshold: int = 0
) -> Any:
    """An unfitted workflow: continuous FillMissing >> Clip(0) >> LogOp >> Normalize(float32);
    categorical Categorify (values seen fewer than ``freq_threshold`` times while fitting are
    encoded out of vocabulary)."""
    import nvtabular as nvt  # noqa: PLC0415
    from nvtabular import ops  # noqa: PLC0415

    dense = continuous >> ops.FillMissing() >> ops.Clip(min_value=0) >> ops.LogOp() >> ops.Normalize(out_dtype=np.float32)
    cats = categorical >> (ops.Categorify(freq_threshold=freq_threshold) if freq_threshold else ops.Categorify())
    return nvt.Workflow(dense + cats)


def to_frame(columns: Mapping[str, np.ndarray], names: list[str] | None = None) -> Any:
    """A pandas DataFrame of the given columns (all by default), RangeIndex 0..n-1."""
    import pandas as pd  # noqa: PLC0415

    return pd.DataFrame({name: columns[name] for name in (names or list(columns))})


def fit_workflow(
    workflow: Any, columns: Mapping[str, np.ndarray], input_columns: list[str], out_dir: str | os.PathLike[str]
) -> Any:
    """Fits ``workflow`` on ``input_columns`` of ``columns`` and saves it to ``out_dir``; returns it."""
    import nvtabular as nvt  # noqa: PLC0415

    frame = to_frame(columns, input_columns)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Ops that write statistics (Categorify's vocabularies, TargetEncoding's category stats)
        # write them under their out_path, the working directory by default: keep them in out_dir.
        for node in _nodes(workflow.output_node):
            if hasattr(node.op, "out_path"):
                node.op.out_path = str(out_dir)
        workflow.fit(nvt.Dataset(frame))
        workflow.save(str(out_dir))
    return workflow


def _nodes(node: Any) -> list[Any]:
    found = [node]
    for parent in node.parents_with_dependencies:
        found.extend(_nodes(parent))
    return found


def nvtabular_transform(workflow: Any, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """NVTabular's own ``Workflow.transform`` on a DataFrame of ``columns``: output column -> array."""
    frame = to_frame(columns, workflow.input_schema.column_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = workflow.transform(frame)
    return {name: out[name].to_numpy() for name in out.columns}
