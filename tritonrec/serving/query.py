"""``tritonrec query``: score a parquet or CSV file of raw rows through a served model, and log.

The model's inputs are read from the server (``get_model_config``): a per-column model takes one
[batch, 1] tensor per raw column, named as the column; a packed model (``INPUT_<TYPE>`` tensors)
names its column order in the ``packed_inputs`` parameter and says ``layout`` (a transform) or
``input_layout`` (an ensemble) ``packed``, as tritonrec's exports write them. List columns travel
as their two tensors in either layout; see :class:`RequestBuilder`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tritonrec.serving.dtypes import numpy_dtype
from tritonrec.serving.lists import list_from_tensors, list_tensor_names, list_to_tensors
from tritonrec.transform.plan import ListColumn

LABEL = "label"
TRITON_GRPC_DEFAULT = "127.0.0.1:8001"
"""Triton's own default gRPC address (``tritonrec serve`` picks free ports: see its ``--endpoints-file``)."""


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


def _numpy(model: str, tensor: Mapping[str, Any]) -> np.dtype:
    try:
        return numpy_dtype(tensor["data_type"].removeprefix("TYPE_"))
    except (KeyError, ValueError):
        raise QueryError(f"model {model!r}: input {tensor['name']!r} has type {tensor['data_type']}, which this client cannot fill") from None


def _list_pairs(names: Any) -> dict[str, str]:
    """List column -> ``"padded"`` or ``"offsets"``, for each ``<col>__values`` beside a
    ``<col>__lengths`` or ``<col>__offsets`` among ``names``."""
    pairs = {}
    for name in names:
        column, _, part = name.rpartition("__")
        if part == "values" and f"{column}__lengths" in names:
            pairs[column] = "padded"
        elif part == "values" and f"{column}__offsets" in names:
            pairs[column] = "offsets"
    return pairs


def _tensors_of(pairs: Mapping[str, str]) -> set[str]:
    """The tensor names of list columns (column -> layout, as :func:`_list_pairs` gives)."""
    return {n for column, layout in pairs.items() for n in list_tensor_names(column, layout)}


class RequestBuilder:
    """Turns rows of a DataFrame into a model's input tensors, from the model's configuration.

    Every column kind the transform takes: numbers, strings (TYPE_STRING; a null cannot travel in
    Triton's BYTES and is refused naming its row), and list columns (a list or array per row),
    sent as ``<col>__values`` + ``<col>__lengths`` (padded) or ``<col>__offsets``. A packed model
    (``layout``/``input_layout`` ``packed``) takes one tensor per dtype, its columns in the order
    of its ``packed_inputs`` parameter, as tritonrec's exports write it.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.model = config.get("name", "?")
        inputs = {t["name"]: t for t in config.get("input", [])}
        self.outputs = [o["name"] for o in config.get("output", [])]
        self.output_lists = _list_pairs(self.outputs)  # list column -> its layout
        listed_outputs = _tensors_of(self.output_lists)
        self.output_columns = [n for n in self.outputs if n not in listed_outputs] + list(self.output_lists)
        """The columns of the predictions: each output, a list column's two tensors as one of its name."""
        parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        layout = parameters.get("input_layout") or parameters.get("layout") or "per-column"
        # list column -> (values dtype, "padded" | "offsets")
        input_lists = _list_pairs(inputs)
        self.lists = {c: (_numpy(self.model, inputs[f"{c}__values"]), layout_) for c, layout_ in input_lists.items()}
        scalars = {n: t for n, t in inputs.items() if n not in _tensors_of(input_lists)}
        self.packed: dict[str, tuple[np.dtype, list[str]]] = {}  # tensor -> (dtype, columns)
        self.columns: dict[str, np.dtype] = {}  # tensor (= column) -> dtype
        if layout == "packed" and scalars:
            order = json.loads(parameters.get("packed_inputs") or "{}")
            if not order:
                raise QueryError(f"model {self.model!r} takes packed inputs but records no packed_inputs: re-export it with this tritonrec")
            for name, tensor in scalars.items():
                dtype = _numpy(self.model, tensor)
                if dtype.name not in order:
                    raise QueryError(f"model {self.model!r}: input {name!r} ({tensor['data_type']}) is not in its packed_inputs {sorted(order)}")
                self.packed[name] = (dtype, list(order[dtype.name]))
        else:
            self.columns = {name: _numpy(self.model, tensor) for name, tensor in scalars.items()}

    @property
    def required(self) -> list[str]:
        """The raw columns the file must have."""
        return [c for _, columns in self.packed.values() for c in columns] + list(self.columns) + list(self.lists)

    def check(self, frame: Any, path: Any) -> None:
        missing = [c for c in self.required if c not in frame.columns]
        if missing:
            raise QueryError(f"{path}: missing column(s) {missing} that model {self.model!r} needs")

    def tensors(self, frame: Any) -> dict[str, np.ndarray]:
        """Input name -> array for the rows of ``frame``."""
        out = {name: np.ascontiguousarray(np.stack([self._input_column(frame, c, dtype) for c in columns], axis=1))
               for name, (dtype, columns) in self.packed.items()}
        out.update({name: np.ascontiguousarray(self._input_column(frame, name, dtype).reshape(-1, 1)) for name, dtype in self.columns.items()})
        for column, (dtype, layout) in self.lists.items():
            values_name, second = list_tensor_names(column, layout)
            out[values_name], out[second] = list_to_tensors(self._list(frame, column, dtype), layout)
        return out

    def columns_of(self, result: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """The outputs of one response as columns of its rows: a [batch, 1] output as values, a
        wider one as a list per row, a list column's two tensors as one list per row (its name)."""
        columns = {name: _column(result[name]) for name in self.output_columns if name not in self.output_lists}
        for column, layout in self.output_lists.items():
            values_name, second = list_tensor_names(column, layout)
            rows = list_from_tensors(column, np.asarray(result[values_name]), np.asarray(result[second]), layout)
            columns[column] = [rows.values[a:b] for a, b in zip(rows.offsets[:-1].tolist(), rows.offsets[1:].tolist())]
        return columns

    def _input_column(self, frame: Any, column: str, dtype: np.dtype) -> np.ndarray:
        values = frame[column].to_numpy()
        if dtype.kind != "O":
            return values.astype(dtype)
        nulls = [i for i, v in enumerate(values) if not isinstance(v, (str, bytes))]
        if nulls:
            raise QueryError(f"column {column!r}, row {frame.index[nulls[0]]}: {values[nulls[0]]!r} is not a string (Triton's "
                             f"BYTES tensors have no null; {len(nulls)} such value(s) in this batch)")
        return values.astype(object)

    def _list(self, frame: Any, column: str, dtype: np.dtype) -> ListColumn:
        try:
            return ListColumn.from_rows(frame[column].to_numpy(), dtype)
        except (TypeError, ValueError) as e:
            raise QueryError(f"column {column!r}: expected a list of {dtype} per row ({e})") from None


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
        log_dir: also append each request's rows to this sink directory, as ``tritonrec monitor``
            writes them (see :class:`_QueryLog`).
        progress: called with the rows done after each batch.

    Returns:
        The predictions as a DataFrame.

    Raises:
        QueryError: an unreadable file, missing columns, a model this client cannot fill, a label
            that is not 0/1 (with ``log_dir``; before anything is sent).
        SinkError: ``log_dir`` cannot be written.
        tritonclient.utils.InferenceServerException: the server's error for a request.
    """
    import uuid  # noqa: PLC0415

    import pandas as pd  # noqa: PLC0415
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    if batch_size < 1:
        raise QueryError(f"batch size {batch_size}: expected >= 1")
    frame = read_rows(path)
    client = grpcclient.InferenceServerClient(url)
    builder = RequestBuilder(client.get_model_config(model, as_json=True)["config"])
    builder.check(frame, path)
    log = _QueryLog(log_dir, frame, path, model, builder) if log_dir is not None else None
    run = uuid.uuid4().hex[:12]
    parts = []
    for start in range(0, len(frame), batch_size):
        rows = frame.iloc[start : start + batch_size]
        tensors, answer, meta = _ask(client, model, builder, rows, f"query-{run}-{start}")
        part = pd.DataFrame(builder.columns_of(answer), index=rows.index)
        if LABEL in frame.columns:
            part[LABEL] = rows[LABEL].to_numpy()
        parts.append(part)
        if log is not None:
            log.write(tensors, answer, start, len(rows), meta)
        if progress is not None:
            progress(start + len(rows))
    predictions = pd.concat(parts) if parts else pd.DataFrame({name: [] for name in builder.output_columns})
    if output is not None:
        _write(predictions, Path(output))
    return predictions


def _ask(client: Any, model: str, builder: RequestBuilder, rows: Any, request_id: str) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """One request of the DataFrame ``rows``: (tensors sent, output name -> array, the request's
    id, answering version and request / answer times in UTC ns as the sink's meta columns)."""
    from tritonrec.serving.client import infer_result  # noqa: PLC0415

    tensors = builder.tensors(rows)
    sent_ns = time.time_ns()
    result = infer_result(client, model, tensors, builder.outputs, request_id=request_id)
    answer = {name: result.as_numpy(name) for name in builder.outputs}
    return tensors, answer, {"request_id": request_id, "model_version": _version(result), "request_time_ns": sent_ns,
                             "prediction_time_ns": time.time_ns()}


class _QueryLog:
    """``query``'s requests into a sink directory, in the schema and the hourly partitions of
    ``tritonrec monitor``'s sink (:mod:`tritonrec.monitoring.sink`): the columns as sent, the
    predictions, the file's ``label`` (0/1, null where missing), the model and the version that
    answered, request and answer times (UTC ns), the request id sent (``query-<run>-<first row>``),
    and ``request_key`` when the ensemble returns one (exported with request logging), else null.
    The file's labels are checked here, before anything is sent (QueryError naming the first bad
    row); SinkError when ``log_dir`` cannot be written."""

    def __init__(self, log_dir: Any, frame: Any, path: Any, model: str, builder: RequestBuilder) -> None:
        from tritonrec.monitoring.sink import Sink  # noqa: PLC0415

        self.labels = _labels(frame, path) if LABEL in frame.columns else None
        self.sink = Sink(log_dir)
        self.model, self.builder = model, builder

    def write(self, tensors: Mapping[str, np.ndarray], answer: Mapping[str, Any], start: int, rows: int, meta: dict[str, Any]) -> None:
        """One request's ``rows`` rows (the file's from ``start``) with ``meta``'s request id,
        answering version and times (UTC ns), into its request time's partition."""
        from tritonrec.monitoring.sink import feature_columns, partition_of, request_table  # noqa: PLC0415
        from tritonrec.serving.request_log import REQUEST_KEY  # noqa: PLC0415

        labels = self.labels[start : start + rows] if self.labels is not None else None
        sent_ns = meta["request_time_ns"]
        key = answer.get(REQUEST_KEY)
        meta = {**meta, "model": self.model, "scorer": "", "label": labels,
                "label_time_ns": [None if v is None else sent_ns for v in labels] if labels is not None else None,
                "request_key": int(np.asarray(key).reshape(-1)[0]) if key is not None and np.asarray(key).size else None}
        _, features = feature_columns(tensors, {name: columns for name, (_, columns) in self.builder.packed.items()})
        _, predictions = feature_columns({name: np.asarray(value) for name, value in answer.items() if name != REQUEST_KEY})
        self.sink.write(partition_of(sent_ns), [request_table(features, predictions, rows, meta)])


def _labels(frame: Any, path: Any) -> list[int | None]:
    """The file's ``label`` column as 0 / 1 / None (missing); QueryError naming the first other value's row."""
    values = _numeric(frame[LABEL])
    labels: list[int | None] = []
    for index, value in zip(frame.index, values):
        if value != value:  # NaN: no label
            labels.append(None)
        elif value in (0.0, 1.0):
            labels.append(int(value))
        else:
            raise QueryError(f"{path}: column {LABEL!r}, row {index}: {frame[LABEL][index]!r} is not a label: expected 0, 1 or missing")
    return labels


def _numeric(column: Any) -> np.ndarray:
    """A column as float64, NaN for a value that is not a number (so a text label is named, not cast)."""
    import pandas as pd  # noqa: PLC0415

    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _version(result: Any) -> int | None:
    """The version of the model that answered (None when the server does not say)."""
    version = result.get_response().model_version
    return int(version) if str(version).isdigit() else None


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
