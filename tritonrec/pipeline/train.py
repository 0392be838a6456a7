"""Fit, compile and train: the Criteo-shaped workflow, its plan, a DLRM, its store and scorer.

Shared by the demo, the tests and the benchmarks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tritonrec.pipeline.synthetic import CATEGORICAL, CONTINUOUS, LABEL


@dataclasses.dataclass
class TrainedPipeline:
    """What :func:`train_pipeline` produced (paths under its workdir)."""

    workflow: Any
    plan: Any
    model: Any
    workflow_dir: Path
    store_dir: Path
    scorer_dir: Path
    losses: list[float]


def plan_features(plan: Any, columns: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Raw columns -> (dense float32 (n, n_dense), ids int64 (n, n_tables)) through the plan's packed layout."""
    packed = {d: np.stack([np.asarray(columns[c], dtype=d) for c in names], axis=1) for d, names in plan.packed_inputs.items()}
    out = plan.transform_packed(packed)
    return out["float32"], out["int64"]


def train_pipeline(
    workdir: str | Path,
    train: Mapping[str, np.ndarray],
    *,
    freq_threshold: int = 5,
    dlrm_config: Any = None,
    train_options: Any = None,
    persistent: bool = False,
    progress: Callable[[int, float], None] | None = None,
) -> TrainedPipeline:
    """Fits the Criteo workflow on ``train``, compiles it, trains a DLRM on its outputs and splits
    the DLRM into ``workdir/store`` and ``workdir/scorer``.

    Args:
        train: raw columns I1..I13, C1..C26 and ``label``, (n,) each.
        freq_threshold: Categorify's frequency threshold (rarer values share the OOV code).
        dlrm_config, train_options: :class:`DLRMConfig` and :class:`TrainOptions` (defaults if None).
        persistent: build the store with a RocksDB tier.
        progress: called after each training step with (rows done, running loss).
    """
    import torch  # noqa: PLC0415

    from tritonrec.pipeline.workflow import criteo_workflow, fit_workflow  # noqa: PLC0415
    from tritonrec.scorer.dlrm import DLRM, DLRMConfig, TrainOptions, save_dlrm, train_dlrm  # noqa: PLC0415
    from tritonrec.transform import compile_workflow  # noqa: PLC0415

    workdir = Path(workdir)
    workflow = fit_workflow(criteo_workflow(freq_threshold=freq_threshold), train, CONTINUOUS + CATEGORICAL, workdir / "workflow")
    plan = compile_workflow(workflow)
    dense, ids = plan_features(plan, train)
    options = train_options or TrainOptions()
    torch.manual_seed(options.seed)
    model = DLRM(dense.shape[1], [plan.categorical_codes()[c][0] for c in plan.packed_outputs["int64"]], dlrm_config or DLRMConfig())
    losses = train_dlrm(model, dense, ids, train[LABEL], options, progress)
    store_dir, scorer_dir = save_dlrm(model, plan, workdir / "store", workdir / "scorer", persistent=persistent, overwrite=True)
    return TrainedPipeline(workflow, plan, model, workdir / "workflow", store_dir, scorer_dir, losses)
