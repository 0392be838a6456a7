"""The scorer artifact: a TorchScript dense model plus what it was trained against.

A scorer is a directory::

    model.pt      TorchScript: forward(dense float32 [batch, n_dense], embeddings float32
                  [batch, n_tables, dim]) -> probability float32 [batch, 1]
    scorer.json   format, the transform plan's fingerprint, the embedding tables (names, in ids
                  column order, and sizes), n_dense, dim, tensor names, model.pt's size and
                  SHA-256; sealed by its own SHA-256 (see :mod:`tritonrec.integrity`)

Both are verified before the model is loaded: a damaged or edited scorer is refused, naming the
file and both checksums.

:class:`tritonrec.serving.scorer_model.TorchScorerModel` is the scorer as the ``torch_scorer``
Triton backend serves it.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tritonrec.integrity import IntegrityError, ManifestKind, file_entry, read_sealed_manifest, verify_files, write_manifest
from tritonrec.serving.specs import TensorSpec

FORMAT = "tritonrec.scorer"
FORMAT_VERSION = 2  # 2: model.pt's size and SHA-256, a sealed manifest
MANIFEST = "scorer.json"
MODEL_FILE = "model.pt"


class ScorerFormatError(OSError):
    """A scorer directory cannot be read; the message names the file and the reason."""


class NonFiniteScoreError(ArithmeticError):
    """The scorer returned NaN or an infinite probability from finite inputs (a fault of the model)."""


@dataclasses.dataclass(frozen=True)
class ScorerInfo:
    """What a scorer takes and what it was trained with.

    Attributes:
        plan_fingerprint: fingerprint of the transform plan whose outputs it was trained on.
        tables: embedding table names, in the order of the embeddings input's second dim.
        table_sizes: table name -> rows (Categorify cardinality) it was trained with.
        n_dense: continuous features (dense input [batch, n_dense]).
        dim: embedding dim (embeddings input [batch, n_tables, dim]).
        dense_input, embeddings_input, output: tensor names.
        dense_features: the names of the dense input's columns, in order (the transform's float
            outputs), used in error messages; empty if unknown.
    """

    plan_fingerprint: str
    tables: tuple[str, ...]
    table_sizes: Mapping[str, int]
    n_dense: int
    dim: int
    dense_input: str = "dense"
    embeddings_input: str = "embeddings"
    output: str = "probability"
    dense_features: tuple[str, ...] = ()

    @property
    def inputs(self) -> list[TensorSpec]:
        return [
            TensorSpec(self.dense_input, np.dtype(np.float32), (self.n_dense,)),
            TensorSpec(self.embeddings_input, np.dtype(np.float32), (len(self.tables), self.dim)),
        ]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(self.output, np.dtype(np.float32), (1,))]

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tables"] = list(self.tables)
        data["table_sizes"] = dict(self.table_sizes)
        data["dense_features"] = list(self.dense_features)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **data}


def save_scorer(path: str | os.PathLike[str], module: Any, info: ScorerInfo) -> Path:
    """Scripts ``module`` (a ``torch.nn.Module`` taking (dense, embeddings)) and writes the scorer directory."""
    import torch  # noqa: PLC0415

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # torch 2.10+ deprecates TorchScript, but it is what Triton's pytorch backend (libtorch)
        # serves, so a scorer stays usable outside tritonrec's own backend.
        warnings.filterwarnings("ignore", message=r".*torch\.jit", category=DeprecationWarning)
        scripted = torch.jit.script(module.eval())
        scripted.save(str(path / MODEL_FILE))
    write_manifest(path / MANIFEST, {**info.to_json(), "files": {"model": file_entry(path, MODEL_FILE)}})
    return path


def read_scorer_info(path: str | os.PathLike[str], verify: bool = False) -> ScorerInfo:
    """The ``scorer.json`` of a scorer directory (its seal checked).

    Args:
        verify: also check ``model.pt`` against the size and SHA-256 in the manifest.

    Raises:
        ScorerFormatError: no such file, not valid JSON, another format, missing fields, an
            edited manifest, or (``verify``) a missing or damaged model file, naming both checksums.
    """
    manifest, data = read_sealed_manifest(Path(path), MANIFEST, ManifestKind(
        FORMAT, FORMAT_VERSION, "scorer", "a tritonrec scorer", "tritonrec", "save the scorer again", ScorerFormatError))
    try:
        model_entry = data["files"]["model"]
        if model_entry.get("file") != MODEL_FILE:
            raise ScorerFormatError(f"{manifest}: lists model file {model_entry.get('file')!r}; expected {MODEL_FILE!r}")
        if verify:
            verify_files(Path(path), [model_entry], manifest)
    except IntegrityError as e:
        raise ScorerFormatError(str(e)) from None
    except (KeyError, TypeError, AttributeError) as e:
        raise ScorerFormatError(f"{manifest}: damaged ({type(e).__name__}: {e})") from None
    try:
        return ScorerInfo(
            plan_fingerprint=str(data["plan_fingerprint"]),
            tables=tuple(data["tables"]),
            table_sizes={str(k): int(v) for k, v in data["table_sizes"].items()},
            n_dense=int(data["n_dense"]),
            dim=int(data["dim"]),
            dense_input=str(data.get("dense_input", "dense")),
            embeddings_input=str(data.get("embeddings_input", "embeddings")),
            output=str(data.get("output", "probability")),
            dense_features=tuple(str(c) for c in data.get("dense_features", ())),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ScorerFormatError(f"{manifest}: damaged ({type(e).__name__}: {e})") from None


