"""The scorer as the ``torch_scorer`` Triton backend serves it, without Triton: dense features and
embeddings in, probabilities out (the artifact format is :mod:`tritonrec.scorer.artifact`)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tritonrec.scorer.artifact import MODEL_FILE, NonFiniteScoreError, ScorerFormatError, read_scorer_info
from tritonrec.serving.config import ConfigError
from tritonrec.serving.dtypes import triton_dtype
from tritonrec.serving.fingerprint import FingerprintMismatchError
from tritonrec.serving.requests import RequestError, row_slices, run_batched
from tritonrec.serving.specs import TensorSpec

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
        return run_batched(requests, self.check_request, self._run)

    def _run(self, batch: list[Mapping[str, Any]], rows: list[int]) -> list[Any]:
        """Checked requests scored in one forward pass; a request with non-finite scores gets its error."""
        torch = self._torch
        merged = []
        for spec in self.inputs:
            # each part on the model's device before merging: a KIND_GPU instance that takes device
            # inputs may get some in host memory (Triton falls back to it when its CUDA pool is full)
            parts = [(p if isinstance(p, torch.Tensor) else torch.from_numpy(np.asarray(p))).to(self.device) for p in (r[spec.name] for r in batch)]
            merged.append(parts[0] if len(parts) == 1 else torch.cat(parts))
        scores = self.score(*merged)
        bad_rows = (~torch.isfinite(scores).all(dim=1)).nonzero().flatten().tolist() if scores.numel() else []
        results: list[Any] = []
        for block in row_slices(rows):
            bad = [r - block.start for r in bad_rows if block.start <= r < block.stop]
            results.append(self._non_finite_error(bad, [m[block] for m in merged]) if bad else {self.info.output: scores[block]})
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

LOAD_ERRORS = (ScorerFormatError, ConfigError, FingerprintMismatchError, ValueError)
"""What loading a scorer model raises for a bad artifact or configuration (the message says what)."""


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
