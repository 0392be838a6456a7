"""A DLRM scorer (Naumov et al., 2019) in PyTorch, trained on the CPU.

The model splits in two: the embedding tables (one ``nn.Embedding`` per categorical column,
served by an embedding store) and the dense part :class:`DLRMDense` (bottom MLP on the continuous
features, dot interaction, top MLP), scripted with TorchScript and served by the ``torch_scorer``
backend. Serving the dense part on looked-up rows computes exactly what :class:`DLRM` computes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def _mlp(sizes: Sequence[int], last_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(a, b)
        nn.init.normal_(linear.weight, 0.0, math.sqrt(2.0 / (a + b)))
        nn.init.normal_(linear.bias, 0.0, math.sqrt(1.0 / b))
        layers.append(linear)
        if i < len(sizes) - 2 or last_relu:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DLRMDense(nn.Module):
    """Everything of DLRM but the embedding tables.

    ``forward(dense, embeddings)``: dense float32 [batch, n_dense], embeddings float32
    [batch, n_tables, dim] (same device) -> click probability float32 [batch, 1].
    """

    def __init__(self, n_dense: int, n_tables: int, dim: int, bottom: Sequence[int], top: Sequence[int]) -> None:
        super().__init__()
        self.bottom = _mlp([n_dense, *bottom, dim], last_relu=True)
        n_vectors = n_tables + 1
        self.top = _mlp([dim + n_vectors * (n_vectors - 1) // 2, *top, 1], last_relu=False)
        rows, cols = torch.tril_indices(n_vectors, n_vectors, offset=-1)
        self.register_buffer("pair_rows", rows, persistent=False)
        self.register_buffer("pair_cols", cols, persistent=False)
        # positions of the strictly-lower-triangle pairs in a flattened [n+1, n+1] matrix: one
        # index_select (8x faster than indexing with (rows, cols) at batch 1024)
        self.register_buffer("pair_index", rows * n_vectors + cols, persistent=False)

    def forward(self, dense: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)  # [batch, dim]
        vectors = torch.cat([x.unsqueeze(1), embeddings], dim=1)  # [batch, n_tables + 1, dim]
        dots = torch.bmm(vectors, vectors.transpose(1, 2))  # [batch, n+1, n+1]
        pairs = dots.flatten(1).index_select(1, self.pair_index)  # strictly lower triangle
        return torch.sigmoid(self.top(torch.cat([x, pairs], dim=1)))


@dataclasses.dataclass(frozen=True)
class DLRMConfig:
    """Sizes of the model: embedding dim, hidden layers of the bottom and top MLPs."""

    dim: int = 16
    bottom: tuple[int, ...] = (512, 256)
    top: tuple[int, ...] = (512, 256)


class DLRM(nn.Module):
    """Embedding tables + :class:`DLRMDense`.

    Args:
        n_dense: continuous features.
        cardinalities: rows of each embedding table (categorical codes 0..cardinality-1).
        config: sizes.
    """

    def __init__(self, n_dense: int, cardinalities: Sequence[int], config: DLRMConfig = DLRMConfig()) -> None:
        super().__init__()
        self.config = config
        self.embeddings = nn.ModuleList(nn.Embedding(int(c), config.dim, sparse=True) for c in cardinalities)
        for table in self.embeddings:
            nn.init.uniform_(table.weight, -0.05, 0.05)
        self.dense = DLRMDense(n_dense, len(cardinalities), config.dim, config.bottom, config.top)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids int64 [batch, n_tables] -> float32 [batch, n_tables, dim]."""
        return torch.stack([table(ids[:, j]) for j, table in enumerate(self.embeddings)], dim=1)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """dense float32 [batch, n_dense], ids int64 [batch, n_tables] -> probability float32 [batch, 1]."""
        return self.dense(dense, self.embed(ids))

    def table_weights(self) -> list[np.ndarray]:
        """Each table's rows, float32 (cardinality, dim) host arrays."""
        return [t.weight.detach().to("cpu", torch.float32).numpy().copy() for t in self.embeddings]


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """Training: epochs, rows per step, learning rates (Adam on the MLPs, sparse Adam on the tables)."""

    epochs: int = 1
    batch_size: int = 1024
    lr: float = 1e-3
    embedding_lr: float = 1e-2
    seed: int = 0
    threads: int | None = None


def train_dlrm(
    model: DLRM,
    dense: np.ndarray,
    ids: np.ndarray,
    labels: np.ndarray,
    options: TrainOptions = TrainOptions(),
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Trains ``model`` with binary cross-entropy on host arrays; returns the mean loss per epoch.

    Args:
        dense: float32 (n, n_dense) transformed continuous features.
        ids: int64 (n, n_tables) Categorify codes.
        labels: (n,) 0/1.
        progress: called after each step with (rows done in the epoch, running loss).
    """
    if options.threads:
        torch.set_num_threads(options.threads)
    generator = torch.Generator().manual_seed(options.seed)
    dense_t = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
    ids_t = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
    labels_t = torch.from_numpy(np.asarray(labels, dtype=np.float32)).reshape(-1, 1)
    dense_opt = torch.optim.Adam(model.dense.parameters(), lr=options.lr)
    sparse_opt = torch.optim.SparseAdam(list(model.embeddings.parameters()), lr=options.embedding_lr)
    loss_fn = nn.BCELoss()
    losses = []
    model.train()
    n = dense_t.shape[0]
    for _ in range(options.epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, options.batch_size):
            rows = order[start : start + options.batch_size]
            dense_opt.zero_grad()
            sparse_opt.zero_grad()
            loss = loss_fn(model(dense_t[rows], ids_t[rows]), labels_t[rows])
            loss.backward()
            dense_opt.step()
            sparse_opt.step()
            total += loss.item() * rows.shape[0]
            if progress is not None:
                progress(min(start + options.batch_size, n), total / min(start + options.batch_size, n))
        losses.append(total / n)
    model.eval()
    return losses


@torch.inference_mode()
def predict(model: DLRM, dense: np.ndarray, ids: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Offline probabilities, float32 (n,), of host arrays dense (n, n_dense) and ids (n, n_tables)."""
    model.eval()
    out = []
    for start in range(0, dense.shape[0], batch_size):
        d = torch.from_numpy(np.ascontiguousarray(dense[start : start + batch_size], dtype=np.float32))
        i = torch.from_numpy(np.ascontiguousarray(ids[start : start + batch_size], dtype=np.int64))
        out.append(model(d, i).reshape(-1).numpy())
    return np.concatenate(out) if out else np.empty(0, dtype=np.float32)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); labels 0/1 (n,): the monitor's
    :func:`tritonrec.monitoring.quality.auc`, so training and monitoring measure it alike."""
    from tritonrec.monitoring.quality import auc  # noqa: PLC0415

    return auc(labels, scores)


def save_dlrm(
    model: DLRM,
    plan: Any,
    store_dir: str | os.PathLike[str],
    scorer_dir: str | os.PathLike[str],
    *,
    persistent: bool = False,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Splits a trained DLRM into an embedding store and a scorer, both recording ``plan``'s fingerprint.

    Table ``j`` (row ``i`` = Categorify code ``i``) goes to store table ``plan.packed_outputs["int64"][j]``;
    the dense part goes to ``scorer_dir`` as TorchScript (see :mod:`tritonrec.scorer.artifact`).

    Args:
        model: the trained model; its tables must match the plan's categorical columns and sizes.
        plan: the :class:`TransformPlan` whose outputs it was trained on.
        persistent: build the store with a RocksDB tier (see :func:`embedding_cache.build_store`).

    Returns:
        ``(store_dir, scorer_dir)``.
    """
    from embedding_cache import build_store  # noqa: PLC0415
    from tritonrec.scorer.artifact import ScorerInfo, save_scorer  # noqa: PLC0415

    codes = plan.categorical_codes()
    tables = plan.packed_outputs.get("int64", [])
    weights = model.table_weights()
    if len(weights) != len(tables):
        raise ValueError(f"the model has {len(weights)} tables; the plan has {len(tables)} id columns {tables}")
    sizes = {}
    for column, weight in zip(tables, weights):
        if column not in codes or weight.shape[0] != codes[column][0]:
            raise ValueError(f"table for {column!r} has {weight.shape[0]} rows; the plan encodes {codes.get(column, (None,))[0]} codes")
        sizes[column] = int(weight.shape[0])
    n_dense = len(plan.packed_outputs.get("float32", []))
    metadata = {"plan_fingerprint": plan.fingerprint, "table_sizes": sizes, "model": "DLRM"}
    build_store(
        store_dir,
        {c: (np.arange(w.shape[0], dtype=np.int64), w) for c, w in zip(tables, weights)},
        metadata=metadata,
        overwrite=overwrite,
        persistent=persistent,
    )
    scorer_dir = Path(scorer_dir)
    if scorer_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{scorer_dir} exists (pass overwrite=True to replace it)")
        shutil.rmtree(scorer_dir)
    info = ScorerInfo(plan.fingerprint, tuple(tables), sizes, n_dense, model.config.dim, dense_features=tuple(plan.packed_outputs.get("float32", [])))
    save_scorer(scorer_dir, model.dense, info)
    return Path(store_dir), scorer_dir
