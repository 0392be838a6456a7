"""``tritonrec query``: score a parquet or CSV file of raw rows through a served model, and log.

The model's inputs are read from the server (``get_model_config``): a per-column model takes one
[batch, 1] tensor per raw column, named as the column; a packed model (``INPUT_<TYPE>`` tensors)
names its column order in the ``packed_inputs`` parameter and says ``input_layout`` ``packed``, as
exported ensembles do.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

LABEL = "label"
_TRITON_DTYPES = {"TYPE_FP32": "float32", "TYPE_FP64": "float64", "TYPE_INT64": "int64", "TYPE_INT32": "int32", "TYPE_FP16": "float16"}


class QueryError(ValueError):
    """A file or model the query cannot use; the message names it and what was expected."""


def read_rows(path: str | os.PathLike[str]) -> Any:
    """A pandas DataFrame of a ``.parquet`` or ``.csv`` file."""
    import pandas as pd  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise QueryError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path)
    raise QueryError(f"{path}: expected a .parquet or .csv file, got {suffix or 'no suffix'!r}")


class RequestBuilder:
    """Turns rows of a DataFrame into a model's input tensors, from the model's configuration."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.model = config.get("name", "?")
        inputs = config.get("input", [])
        self.outputs = [o["name"] for o in config.get("output", [])]
        parameters = config.get("parameters", {})
        packed = parameters.get("packed_inputs", {}).get("string_value", "")
        if parameters.get("input_layout", {}).get("string_value", "") == "per-column":
            packed = ""
        self.packed: dict[str, tuple[str, list[str]]] = {}  # tensor -> (dtype, columns)
        self.columns: dict[str, str] = {}  # tensor (= column) -> dtype
        if packed:
            order = json.loads(packed)
            for tensor in inputs:
                dtype = _TRITON_DTYPES.get(tensor["data_type"])
                if dtype is None or dtype not in order:
                    raise QueryError(f"model {self.model!r}: input {tensor['name']!r} ({tensor['data_type']}) is not in its packed_inputs {sorted(order)}")
                self.packed[tensor["name"]] = (dtype, order[dtype])
        else:
            for tensor in inputs:
                dtype = _TRITON_DTYPES.get(tensor["data_type"])
                if dtype is None:
                    raise QueryError(f"model {self.model!r}: input {tensor['name']!r} has type {tensor['data_type']}, which this client cannot fill")
                self.columns[tensor["name"]] = dtype

    @property
    def required(self) -> list[str]:
        """The raw columns the file must have."""
        if self.packed:
            return [c for _, columns in self.packed.values() for c in columns]
        return list(self.columns)

    def check(self, frame: Any, path: Any) -> None:
        missing = [c for c in self.required if c not in frame.columns]
        if missing:
            raise QueryError(f"{path}: missing column(s) {missing} that model {self.model!r} needs")

    def tensors(self, frame: Any) -> dict[str, np.ndarray]:
        """Input name -> array for the rows of ``frame``."""
        if self.packed:
            return {
                name: np.ascontiguousarray(np.stack([frame[c].to_numpy().astype(dtype) for c in columns], axis=1))
                for name, (dtype, columns) in self.packed.items()
            }
        return {name: np.ascontiguousarray(frame[name].to_numpy().astype(dtype).reshape(-1, 1)) for name, dtype in self.columns.items()}


def query(
    url: str,
    model: str,
    path: str | os.PathLike[str],
    *,
    batch_size: int = 1024,
    output: str | os.PathLike[str] | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """Scores every row of ``path`` through ``model`` at ``url`` (gRPC), ``batch_size`` rows per request.

    Args:
        output: where to write the predictions (``.parquet`` or ``.csv``): one column per model
            output (``probability`` for an ensemble), and ``label`` when the file has one.
        log_dir: also append each batch (its raw rows, predictions, label, model, request time in
            UTC nanoseconds) as a parquet part file under ``log_dir/<model>/``.
        progress: called with the rows done after each batch.

    Returns:
        The predictions as a DataFrame.

    Raises:
        QueryError: an unreadable file, missing columns, a model this client cannot fill.
        tritonclient.utils.InferenceServerException: the server's error for a request.
    """
    import pandas as pd  # noqa: PLC0415
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    from tritonrec.serving.client import infer  # noqa: PLC0415

    if batch_size < 1:
        raise QueryError(f"batch size {batch_size}: expected >= 1")
    frame = read_rows(path)
    client = grpcclient.InferenceServerClient(url)
    builder = RequestBuilder(client.get_model_config(model, as_json=True)["config"])
    builder.check(frame, path)
    log_path = None
    if log_dir is not None:
        log_path = Path(log_dir) / model
        log_path.mkdir(parents=True, exist_ok=True)
    parts = []
    for start in range(0, len(frame), batch_size):
        rows = frame.iloc[start : start + batch_size]
        sent_ns = time.time_ns()
        result = infer(client, model, builder.tensors(rows), builder.outputs)
        part = pd.DataFrame({name: _column(result[name]) for name in builder.outputs}, index=rows.index)
        if LABEL in frame.columns:
            part[LABEL] = rows[LABEL].to_numpy()
        parts.append(part)
        if log_path is not None:
            _log_batch(log_path / f"part-{sent_ns}-{os.getpid()}-{start}.parquet", rows, part, builder, model, sent_ns)
        if progress is not None:
            progress(start + len(rows))
    predictions = pd.concat(parts) if parts else pd.DataFrame({name: [] for name in builder.outputs})
    if output is not None:
        _write(predictions, Path(output))
    return predictions


def _log_batch(path: Path, rows: Any, part: Any, builder: RequestBuilder, model: str, sent_ns: int) -> None:
    """One batch's raw columns, predictions, label, model and request time (UTC ns) as a parquet file."""
    logged = rows[list(builder.required)].copy()
    for name in builder.outputs:
        logged[name] = part[name].to_numpy()
    if LABEL in rows.columns:
        logged[LABEL] = rows[LABEL].to_numpy()
    logged["model"] = model
    logged["request_time_ns"] = sent_ns
    logged.to_parquet(path, index=False)


def _write(predictions: Any, output: Path) -> None:
    """``.csv`` by its suffix, else parquet."""
    if output.suffix.lower() == ".csv":
        predictions.to_csv(output, index=False)
    else:
        predictions.to_parquet(output, index=False)


def _column(array: np.ndarray) -> Any:
    """A [batch, 1] output as one column; wider outputs as lists per row."""
    array = np.asarray(array)
    return array.reshape(-1) if array.ndim == 1 or array.shape[1:] == (1,) else list(array.reshape(array.shape[0], -1))
