"""The scorer artifact: a TorchScript dense model plus what it was trained against.

A scorer is a directory::

    model.pt      TorchScript: forward(dense float32 [batch, n_dense], embeddings float32
                  [batch, n_tables, dim]) -> probability float32 [batch, 1]
    scorer.json   format, the transform plan's fingerprint, the embedding tables (names, in ids
                  column order, and sizes), n_dense, dim, tensor names, model.pt's size and
                  SHA-256; sealed by its own SHA-256 (see :mod:`embedding_cache.integrity`)

Both are verified before the model is loaded: a damaged or edited scorer is refused, naming the
file and both checksums.

:class:`TorchScorerModel` is the scorer as the ``torch_scorer`` Triton backend serves it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedding_cache.integrity import IntegrityError, check_seal, file_entry, verify_files, write_manifest
from tritonrec.transform.serving import RequestError, TensorSpec, check_requests
from tritonrec.triton_types import triton_dtype

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
    manifest = Path(path) / MANIFEST
    try:
        data = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise ScorerFormatError(f"{manifest}: no such file: {path} is not a tritonrec scorer") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScorerFormatError(f"{manifest}: damaged (not valid JSON: {e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ScorerFormatError(f"{manifest}: not a tritonrec scorer manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise ScorerFormatError(
            f"{manifest}: scorer format version {data.get('format_version')!r}; this tritonrec reads {FORMAT_VERSION} "
            "(which checksums every file): save the scorer again"
        )
    try:
        check_seal(data, manifest)
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


class TorchScorerModel:
    """A scorer served batch by batch: dense [batch, n_dense] + embeddings [batch, n_tables, dim]
    (float32, host or the model's device) -> probability [batch, 1] float32.

    Args:
        path: the scorer directory.
        device: ``"cpu"`` or ``"cuda:N"``.
        max_batch_size: the most rows per request (0: no limit).
        threads: torch intra-op threads on the CPU for batches of ``parallel_rows`` rows or more
            (None: torch's default); smaller batches run on one thread, where waking a second
            costs more than it saves and a descheduled one stalls the call.
        parallel_rows: the smallest batch scored on ``threads`` threads.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "cpu",
        max_batch_size: int = 0,
        threads: int | None = None,
        parallel_rows: int = 32,
    ) -> None:
        import torch  # noqa: PLC0415

        self.info = read_scorer_info(path, verify=True)
        model_file = Path(path) / MODEL_FILE
        if threads is not None and threads < 1:
            raise ValueError(f"threads {threads}: expected >= 1")
        self.threads = threads or torch.get_num_threads()
        self.parallel_rows = int(parallel_rows)
        self._threads_now = self.threads
        torch.set_num_threads(self.threads)
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.10+ (see save_scorer)
                warnings.filterwarnings("ignore", message=r".*torch\.jit", category=DeprecationWarning)
                self.module = torch.jit.load(str(model_file), map_location=device).eval()
        except RuntimeError as e:
            raise ScorerFormatError(f"{model_file}: not a loadable TorchScript model ({str(e).splitlines()[0]})") from None
        self.device = torch.device(device)
        self.max_batch_size = int(max_batch_size)
        self.inputs = self.info.inputs
        self.outputs = self.info.outputs
        self._torch = torch

    def check_request(self, tensors: Mapping[str, Any]) -> int:
        """Checks one request's inputs (arrays or tensors); returns its rows. Raises RequestError naming the input."""
        expected = [s.name for s in self.inputs]
        if set(tensors) != set(expected):
            raise RequestError(f"inputs {sorted(tensors)}: this model takes {sorted(expected)}")
        rows = None
        for spec in self.inputs:
            value = tensors[spec.name]
            dtype = str(value.dtype).replace("torch.", "")
            if dtype != "float32":
                raise RequestError(f"input {spec.name!r} has dtype {dtype}: expected FP32")
            shape = tuple(value.shape)
            if len(shape) != 1 + len(spec.dims) or shape[1:] != spec.dims:
                raise RequestError(f"input {spec.name!r} has shape {list(shape)}: expected [batch, {', '.join(map(str, spec.dims))}]")
            if rows is None:
                rows = shape[0]
            elif shape[0] != rows:
                raise RequestError(f"input {spec.name!r} has {shape[0]} rows, input {self.inputs[0].name!r} has {rows}")
        if self.max_batch_size and rows > self.max_batch_size:
            raise RequestError(f"request has {rows} rows: the maximum batch size is {self.max_batch_size}")
        return int(rows or 0)

    def score(self, dense: Any, embeddings: Any) -> Any:
        """One forward pass on torch tensors (any device; moved to the model's); returns a [batch, 1] tensor."""
        torch = self._torch
        if self.device.type == "cpu":
            wanted = self.threads if dense.shape[0] >= self.parallel_rows else 1
            if wanted != self._threads_now:
                torch.set_num_threads(wanted)
                self._threads_now = wanted
        with torch.inference_mode():
            return self.module(dense.to(self.device), embeddings.to(self.device))

    def execute(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any] | Exception]:
        """Per request: ``{output name: [batch, 1] float32 torch tensor}`` or the error that rejects it.

        Inputs are torch tensors (zero-copy from DLPack) or numpy arrays; all good requests are
        scored in one forward pass. A probability is never NaN or infinite: a request with such a
        row fails alone, with a :class:`RequestError` naming the row and the non-finite features
        (e.g. +inf in a raw column, which NVTabular's ops carry through) when its inputs hold
        any, else a :class:`NonFiniteScoreError` (the model's own fault).
        """
        torch = self._torch
        results, good = check_requests(requests, self.check_request)
        if not good:
            return results
        merged = []
        for spec in self.inputs:
            parts = [requests[i][spec.name] for i, _ in good]
            # each part on the model's device before merging: a KIND_GPU instance that takes device
            # inputs may get some in host memory (Triton falls back to it when its CUDA pool is full)
            parts = [(p if isinstance(p, torch.Tensor) else torch.from_numpy(np.asarray(p))).to(self.device) for p in parts]
            merged.append(parts[0] if len(parts) == 1 else torch.cat(parts))
        scores = self.score(*merged)
        bad_rows = (~torch.isfinite(scores).all(dim=1)).nonzero().flatten().tolist() if scores.numel() else []
        start = 0
        for i, rows in good:
            bad = [r - start for r in bad_rows if start <= r < start + rows]
            if bad:
                results[i] = self._non_finite_error(bad, [m[start : start + rows] for m in merged])
            else:
                results[i] = {self.info.output: scores[start : start + rows]}
            start += rows
        return results

    def _non_finite_error(self, rows: list[int], inputs: list[Any]) -> Exception:
        """The error of a request whose ``rows`` scored NaN or infinite; ``inputs`` are its tensors."""
        torch = self._torch
        causes = []
        for spec, tensor in zip(self.inputs, inputs):
            finite = torch.isfinite(tensor[rows[0]].reshape(-1))
            if not finite.all():
                k = int((~finite).nonzero()[0])
                value = float(tensor[rows[0]].reshape(-1)[k])
                if spec.name == self.info.dense_input:
                    names = self.info.dense_features
                    element = f"feature {k}" + (f" ({names[k]!r})" if k < len(names) else "")
                else:
                    element = f"value {k}"
                causes.append(f"input {spec.name!r} row {rows[0]} {element} is {value}")
        where = f"row(s) {rows[:10]}" + (" ..." if len(rows) > 10 else "")
        if causes:
            return RequestError(
                f"the scorer cannot score {where}: {'; '.join(causes)}: features must be finite (an infinite raw value, or one "
                "beyond the float32 range such as 1e39, stays infinite through the transform)"
            )
        return NonFiniteScoreError(f"the scorer returned a non-finite probability for {where} from finite inputs")


def check_scorer_tensors(specs: Sequence[TensorSpec], expected: Sequence[TensorSpec], what: str) -> None:
    """Raises ValueError naming the first tensor of ``expected`` that ``specs`` lacks or declares differently."""
    by_name = {s.name: s for s in specs}
    for spec in expected:
        got = by_name.get(spec.name)
        if got is None:
            raise ValueError(f"{what} has no tensor {spec.name!r} (it has {sorted(by_name)})")
        if got.dtype != spec.dtype or tuple(got.dims) != tuple(spec.dims):
            raise ValueError(
                f"{what}: tensor {spec.name!r} is {got.triton_dtype} {list(got.dims)}; the chain needs {triton_dtype(spec.dtype)} {list(spec.dims)}"
            )
