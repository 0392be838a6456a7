"""The feedback loop's data lake: joined request rows as hourly parquet partitions.

One row per row of a request (a request of 1,024 rows gives 1,024 rows), with the same schema
whoever writes it (``tritonrec monitor`` from the streams, ``tritonrec query --log`` from the client):

- the raw feature columns as the transform received them (a packed tensor split into its
  columns; a list column from its ``__values`` and ``__lengths`` / ``__offsets`` tensors; another
  [rows, k > 1] tensor as a fixed-length list column),
- the prediction outputs (a [rows, 1] output as a scalar column),
- :data:`META_COLUMNS`: ``request_key`` (int64; null for ``query --log``, whose client has none),
  ``request_id`` (the client's id, "" for none), ``row`` (int32, the row's position in its
  request), ``model`` and ``model_version`` (the model that took the request), ``scorer`` and
  ``scorer_version`` (the model that logged the prediction; "" / null when none did),
  ``request_time_ns``, ``prediction_time_ns``, ``label`` (int8 0/1, null when no label came within
  the window), ``label_time_ns`` (int64, UTC nanoseconds; null when absent) and ``oov`` (list of
  strings: the raw columns whose value the transform encoded out of vocabulary in that row, empty
  for none; null when the transform did not say, as for ``query --log``).

Partitions: ``<sink>/date=YYYY-MM-DD/hour=HH/part-*.parquet`` by the request's time (UTC). A part
file is written under a temporary name and renamed into place, so a crash leaves whole files only.
"""

from __future__ import annotations

import datetime
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

META_COLUMNS = ("request_key", "request_id", "row", "model", "model_version", "scorer", "scorer_version", "request_time_ns",
                "prediction_time_ns", "label", "label_time_ns", "oov")
"""The sink's own columns, beside the features and the predictions."""


class SinkError(OSError):
    """The sink directory cannot be written; the message names it."""


def partition_of(time_ns: int) -> str:
    """``date=YYYY-MM-DD/hour=HH`` of a UTC time in nanoseconds."""
    t = datetime.datetime.fromtimestamp(time_ns / 1e9, tz=datetime.timezone.utc)
    return f"date={t:%Y-%m-%d}/hour={t:%H}"


_HOUR_NS = 3600 * 10**9


def _partition_start_ns(directory: Path) -> int | None:
    """UTC ns at which the partition ``.../date=YYYY-MM-DD/hour=HH`` starts; None for another name."""
    try:
        day = directory.parent.name.removeprefix("date=")
        hour = int(directory.name.removeprefix("hour="))
        t = datetime.datetime.strptime(day, "%Y-%m-%d").replace(hour=hour, tzinfo=datetime.timezone.utc)
    except ValueError:
        return None
    return int(t.timestamp()) * 10**9


def _list_column(values: np.ndarray, lengths: np.ndarray) -> list[list[Any]]:
    ends = np.cumsum(lengths)
    return [values[e - n : e].tolist() for n, e in zip(lengths.tolist(), ends.tolist())]


def feature_columns(tensors: Mapping[str, np.ndarray], columns: Mapping[str, Sequence[str]] | None = None) -> tuple[int, dict[str, Any]]:
    """Per-row columns of a request's tensors (see the module's docstring): (rows, name -> values).

    Raises:
        ValueError: tensors whose rows disagree, or a list column without its second tensor.
    """
    columns = columns or {}
    out: dict[str, Any] = {}
    rows = None

    def take(name: str, values: Any, n: int) -> None:
        nonlocal rows
        if rows is not None and n != rows:
            raise ValueError(f"tensor {name!r} has {n} rows, the request {rows}")
        rows = n
        out[name] = values

    for name, array in tensors.items():
        if name.endswith(("__lengths", "__offsets")):
            continue
        if name.endswith("__values"):
            column = name[: -len("__values")]
            if f"{column}__lengths" in tensors:  # padded [rows, width] + lengths [rows, 1]
                lengths = np.asarray(tensors[f"{column}__lengths"]).reshape(-1).astype(np.int64)
                take(column, [array[i, : lengths[i]].tolist() for i in range(lengths.size)], lengths.size)
            elif f"{column}__offsets" in tensors:  # flat values + offsets [rows + 1]
                offsets = np.asarray(tensors[f"{column}__offsets"]).reshape(-1).astype(np.int64)
                take(column, _list_column(np.asarray(array).reshape(-1)[offsets[0]:], np.diff(offsets)), offsets.size - 1)
            else:
                raise ValueError(f"list tensor {name!r} without {column}__lengths or {column}__offsets")
            continue
        array = np.asarray(array)
        if array.ndim == 0:
            raise ValueError(f"tensor {name!r} is a scalar: expected [rows, ...]")
        if name in columns:
            for j, column in enumerate(columns[name]):
                take(column, array[:, j], array.shape[0])
        elif array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1):
            take(name, array.reshape(-1), array.shape[0])
        else:
            take(name, [row.tolist() for row in array.reshape(array.shape[0], -1)], array.shape[0])
    return rows or 0, out


def request_table(features: Mapping[str, Any], predictions: Mapping[str, Any], rows: int, meta: Mapping[str, Any]) -> Any:
    """A pyarrow Table of one request's rows: ``features`` and ``predictions`` (name -> per-row
    values) and ``meta`` (each of :data:`META_COLUMNS` but ``row``: one value for every row, or a
    list / array of one value per row, None for null; ``oov``: see :func:`oov_column`)."""
    import pyarrow as pa  # noqa: PLC0415

    arrays: dict[str, Any] = {}
    for name, values in [*features.items(), *predictions.items()]:
        if name in META_COLUMNS:
            name = f"feature_{name}"
        arrays[name] = pa.array(values) if isinstance(values, list) else pa.array(np.asarray(values))
    types = {"request_key": pa.int64(), "request_id": pa.string(), "model": pa.string(), "model_version": pa.int64(),
             "scorer": pa.string(), "scorer_version": pa.int64(), "request_time_ns": pa.int64(), "prediction_time_ns": pa.int64(),
             "label": pa.int8(), "label_time_ns": pa.int64()}
    for name in META_COLUMNS:
        if name == "row":
            arrays[name] = pa.array(np.arange(rows, dtype=np.int32))
        elif name == "oov":
            arrays[name] = oov_column(meta.get("oov"), rows)
        else:
            value = meta.get(name)
            values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * rows
            if len(values) != rows:
                raise ValueError(f"meta column {name!r} has {len(values)} values for {rows} rows")
            arrays[name] = pa.array(values, type=types[name])
    return pa.table(arrays)


def oov_column(oov: tuple[np.ndarray, Sequence[str]] | None, rows: int) -> Any:
    """The ``oov`` column (pyarrow list<string>, ``rows`` long) of ``(flags, columns)``: flags bool
    [rows, k] (True: the row's value of ``columns[j]`` was out of vocabulary); None: all null.

    Raises:
        ValueError: flags of another shape.
    """
    import pyarrow as pa  # noqa: PLC0415

    if oov is None:
        return pa.nulls(rows, pa.list_(pa.string()))
    flags, columns = np.asarray(oov[0], dtype=bool), list(oov[1])
    if flags.shape != (rows, len(columns)):
        raise ValueError(f"oov flags of shape {flags.shape}: expected ({rows}, {len(columns)}), a flag per row and column")
    _, which = np.nonzero(flags)  # row-major: the rows' names in order
    offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(flags.sum(axis=1), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.asarray(columns, dtype=object)[which], type=pa.string()))


def concat_tables(tables: Sequence[Any]) -> Any:
    """One pyarrow Table of ``tables`` (requests' tables in the sink's schema), their schemas merged
    (a column one lacks is null there)."""
    import pyarrow as pa  # noqa: PLC0415

    try:
        return pa.concat_tables(tables, promote_options="default")
    except TypeError:  # pyarrow < 14
        return pa.concat_tables(tables, promote=True)


class Sink:
    """Hourly parquet partitions under ``root``, written whole (temporary name, then rename).

    Raises:
        SinkError: ``root`` cannot be created or written (checked here, with a probe file).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise SinkError(f"sink {self.root}: cannot write there ({e.strerror or e})") from None

    def write(self, partition: str, tables: Sequence[Any]) -> Path:
        """Writes ``tables`` (pyarrow Tables, their schemas merged) as one new part file of
        ``partition``; returns its path. OSError (named) when the disk refuses."""
        import pyarrow.parquet as pq  # noqa: PLC0415

        table = concat_tables(tables)
        directory = self.root / partition
        directory.mkdir(parents=True, exist_ok=True)
        name = f"part-{uuid.uuid4().hex}.parquet"
        temporary = self.root / f".tmp-{name}"
        try:
            pq.write_table(table, temporary)
            os.replace(temporary, directory / name)
        except OSError as e:
            temporary.unlink(missing_ok=True)
            raise SinkError(f"sink {self.root}: writing {partition}/{name} failed ({e.strerror or e})") from None
        return directory / name

    def written(self, since_ns: int = 0) -> tuple[set[int], set[str]]:
        """(request keys, client request ids) of the rows in partitions that end after
        ``since_ns`` (UTC ns; 0: the whole sink), for writing each request once across restarts.
        Temporary files of a crash are removed."""
        import pyarrow.parquet as pq  # noqa: PLC0415

        for stale in self.root.glob(".tmp-*"):
            stale.unlink(missing_ok=True)
        keys: set[int] = set()
        ids: set[str] = set()
        for path in sorted(self.root.glob("date=*/hour=*/part-*.parquet")):
            start = _partition_start_ns(path.parent)
            if start is not None and start + _HOUR_NS <= since_ns:
                continue
            table = pq.read_table(path, columns=["request_key", "request_id"])
            keys.update(int(key) for key in table.column("request_key").to_pylist() if key is not None)
            ids.update(request_id for request_id in table.column("request_id").to_pylist() if request_id)
        return keys, ids

    def read(self) -> Any:
        """Every row of the sink as a pandas DataFrame (partitions as columns ``date`` and ``hour``)."""
        import pandas as pd  # noqa: PLC0415
        import pyarrow.parquet as pq  # noqa: PLC0415

        files = sorted(self.root.glob("date=*/hour=*/part-*.parquet"))
        if not files:
            return pd.DataFrame(columns=list(META_COLUMNS))
        return pd.concat([pq.read_table(path).to_pandas() for path in files], ignore_index=True)
