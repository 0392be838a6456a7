"""``tritonrec perf``: benchmark a served model with perf_analyzer on real rows, its answers checked.

1. The rows of a parquet or CSV file become perf_analyzer's ``--input-data`` JSON, one entry per
   row (the tensors :class:`~tritonrec.serving.query.RequestBuilder` makes for the model: any
   layout, strings, lists padded to the file's widest row, since perf_analyzer batches rows of one
   shape), all tensors base64 so NaN and any bytes travel. perf_analyzer builds a request of batch
   ``b`` from ``b`` consecutive entries. A model without batching (``max_batch_size: 0``) gets one
   entry per request of ``b`` rows instead.
2. Before measuring, answers are checked: for each batch size, the first rows in requests of that
   size against :class:`~tritonrec.serving.reference.ServedReference` (the model run in process from
   its repository), or, where there is no reference (another backend, no repository), against the
   same rows sent one at a time. A wrong answer stops the benchmark: a fast wrong answer measures
   nothing (perf_analyzer counts error responses as successes).
3. perf_analyzer measures each batch size and concurrency in count windows (``--measurement-mode
   count_windows``: at least N requests a window), which settle on small machines where time
   windows of a few seconds keep moving; a point that does not settle is measured again with
   windows twice as large.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tritonrec.serving.query import RequestBuilder, read_rows

FLOAT_ATOL = 1e-6
FLOAT_RTOL = 1e-5
"""Tolerance of float answers: the scorer's matrix products run other CPU kernels at other batch
shapes (Triton's dynamic batcher merges requests), a few 1e-7 apart."""
_UNSTABLE = "Failed to obtain stable measurement"


class PerfError(ValueError):
    """A benchmark that cannot run or whose answers are wrong; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class PerfOptions:
    """What ``tritonrec perf`` measures.

    Attributes:
        batch_sizes: rows per request, each measured.
        concurrency: requests in flight, each measured at every batch size.
        rows: rows of the file used (the input data cycles through them).
        request_count: requests per measurement window (count windows).
        stability: max / min of the last 3 windows' throughput and latency within this, in percent.
        max_trials: windows per point before it counts as unsettled.
        check_rows: rows checked at batch 1 (a batch size b checks max(b, check_rows) rows).
        perf_analyzer: the perf_analyzer binary (default: PATH, then beside this Python).
        timeout_s: the most one perf_analyzer run may take, seconds.
    """

    batch_sizes: tuple[int, ...] = (1, 64, 1024)
    concurrency: tuple[int, ...] = (1,)
    rows: int = 1024
    request_count: int = 50
    stability: float = 25.0
    max_trials: int = 10
    check_rows: int = 32
    perf_analyzer: str | None = None
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "concurrency"):
            values = getattr(self, name)
            if not values or any(int(v) < 1 for v in values):
                raise PerfError(f"{name} {list(values)}: expected one or more integers >= 1")
        for name in ("rows", "request_count", "max_trials", "check_rows"):
            if getattr(self, name) < 1:
                raise PerfError(f"{name} {getattr(self, name)}: expected >= 1")
        if not 0 < self.stability <= 100:
            raise PerfError(f"stability {self.stability}: expected a percentage in (0, 100]")


@dataclasses.dataclass(frozen=True)
class PerfPoint:
    """One measured point. Latencies in milliseconds (perf_analyzer's client-side latency), server
    times in microseconds per request (Triton's statistics)."""

    batch: int
    concurrency: int
    rows_per_s: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_queue_us: float
    server_compute_us: float


@dataclasses.dataclass
class PerfReport:
    """A benchmark's points and what its answers were checked against."""

    model: str
    rows: int
    checked: str
    points: list[PerfPoint] = dataclasses.field(default_factory=list)

    def table(self) -> str:
        """The points as a Markdown table."""
        lines = ["| batch | concurrency | rows/s | requests/s | p50 ms | p95 ms | p99 ms | server queue us | server compute us |",
                 "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {p.batch} | {p.concurrency} | {p.rows_per_s:,.0f} | {p.requests_per_s:,.1f} | {p.p50_ms:.2f} | {p.p95_ms:.2f} | "
                  f"{p.p99_ms:.2f} | {p.server_queue_us:,.0f} | {p.server_compute_us:,.0f} |" for p in self.points]
        return "\n".join(lines)


def find_perf_analyzer(path: str | None = None) -> str:
    """The perf_analyzer binary: ``path``, else on PATH, else beside this Python (``make setup``
    puts one in ``.venv/bin``); PerfError saying how to get one otherwise."""
    candidates = [path] if path else [shutil.which("perf_analyzer"), str(Path(sys.executable).parent / "perf_analyzer")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return candidate
    where = f"{path} is not an executable file" if path else "not on PATH nor beside this Python"
    raise PerfError(f"perf_analyzer: {where} (pip install perf-analyzer, or the binary in tritonclient's wheel; "
                    "`make setup` installs one into .venv/bin)")


def _b64(array: np.ndarray) -> str:
    """Raw little-endian bytes of ``array`` (row-major) in base64; BYTES elements as perf_analyzer
    wants them: a 4-byte length, then the bytes."""
    if array.dtype == object:
        parts = [v.encode() if isinstance(v, str) else bytes(v) for v in array.reshape(-1)]
        data = b"".join(struct.pack("<I", len(p)) + p for p in parts)
    else:
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    return base64.b64encode(data).decode()


def rows_input_data(tensors: Mapping[str, np.ndarray], rows: int) -> dict[str, Any]:
    """perf_analyzer's ``--input-data`` JSON (as a dict) of a batching model: one entry per row of
    ``tensors`` (name -> [n, ...] array, n >= ``rows``), shapes without the batch dimension."""
    return {"data": [{name: {"content": {"b64": _b64(array[i])}, "shape": list(array.shape[1:])} for name, array in tensors.items()}
                     for i in range(rows)]}


def input_data(builder: RequestBuilder, frame: Any, batched: bool, batch: int = 1) -> dict[str, Any]:
    """perf_analyzer's ``--input-data`` JSON (as a dict) for the rows of ``frame``.

    perf_analyzer (2.44) crashes on a tensor of no elements, which a list column of empty rows
    gives: padded values are at least one wide (the lengths say 0, padding is ignored), and a
    request whose flat values are empty is left out.

    Args:
        builder: the model's request builder.
        batched: the model batches (``max_batch_size`` > 0): one entry per row, shapes without the
            batch dimension, every list column padded to the frame's widest row. Else one entry per
            request of ``batch`` rows, with its full shapes.
    """
    if batched:
        tensors = builder.tensors(frame)  # one call: lists padded to the widest row of all
        for name, array in tensors.items():
            if array.size == 0 and len(frame):
                tensors[name] = np.zeros((array.shape[0], 1), dtype=array.dtype)
        return rows_input_data(tensors, len(frame))
    entries = []
    for start in range(0, len(frame), batch):
        tensors = builder.tensors(frame.iloc[start:start + batch])
        if all(array.size for array in tensors.values()):
            entries.append({name: {"content": {"b64": _b64(array)}, "shape": list(array.shape)} for name, array in tensors.items()})
    if not entries:
        raise PerfError(f"no request of {batch} rows can be sent by perf_analyzer: each holds an empty tensor (list columns with no values)")
    return {"data": entries}


def _columns(builder: RequestBuilder, outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return builder.columns_of({k: np.asarray(v) for k, v in outputs.items()})


def _difference(want: Mapping[str, Any], got: Mapping[str, Any], first_row: int) -> str | None:
    """``output 'x', row i: ...`` for the first value of ``got`` that is not ``want``'s (floats to
    :data:`FLOAT_ATOL` + :data:`FLOAT_RTOL` x |want|, NaN equal to NaN; other values exactly);
    None when all match. Columns are arrays of rows or lists of per-row arrays."""
    for name, expected in want.items():
        have = got.get(name)
        if have is None or len(have) != len(expected):
            return f"output {name!r}: {'missing' if have is None else f'{len(have)} rows instead of {len(expected)}'}"
        for i, (a, b) in enumerate(zip(expected, have)):
            a, b = np.asarray(a), np.asarray(b)
            if a.shape != b.shape:
                return f"output {name!r}, row {first_row + i}: shape {list(b.shape)} instead of {list(a.shape)}"
            close = np.isclose(b, a, atol=FLOAT_ATOL, rtol=FLOAT_RTOL, equal_nan=True) if a.dtype.kind == "f" else a == b
            if not np.all(close):
                return f"output {name!r}, row {first_row + i}: {b.tolist()} instead of {a.tolist()}"
    return None


class _Checker:
    """Checks served answers for a model: against its in-process reference when there is one,
    else against the same rows sent one at a time."""

    def __init__(self, client: Any, model: str, builder: RequestBuilder, repository: str | os.PathLike[str] | None) -> None:
        from tritonrec.serving.reference import NoReferenceError, ServedReference, server_configs  # noqa: PLC0415

        self.client, self.model, self.builder = client, model, builder
        self.reference = None
        if repository is None:
            self.against = "the same rows one at a time (no model repository given: --repository, or serve's endpoints file, names it)"
            return
        try:
            self.reference = ServedReference(repository, model, server_configs(client))
            self.against = f"the model run in process from {repository}"
        except NoReferenceError as e:
            self.against = f"the same rows one at a time (no in-process reference: {e})"

    def close(self) -> None:
        if self.reference is not None:
            self.reference.close()

    def _served(self, rows: Any) -> dict[str, Any]:
        from tritonrec.serving.client import infer  # noqa: PLC0415

        return _columns(self.builder, infer(self.client, self.model, self.builder.tensors(rows), self.builder.outputs))

    def _expected(self, rows: Any) -> dict[str, Any]:
        if self.reference is not None:
            return _columns(self.builder, self.reference(self.builder.tensors(rows)))
        parts = [self._served(rows.iloc[i:i + 1]) for i in range(len(rows))]
        return {name: [row for part in parts for row in part[name]] for name in parts[0]} if parts else {}

    def check(self, frame: Any, batch: int, check_rows: int) -> int:
        """Sends the first ``max(batch, check_rows)`` rows of ``frame`` in requests of ``batch``
        rows and compares every answer; returns the rows checked. PerfError naming the request,
        output and row of the first wrong value."""
        from tritonclient.utils import InferenceServerException  # noqa: PLC0415

        rows = frame.iloc[: max(batch, check_rows)]
        for start in range(0, len(rows), batch):
            chunk = rows.iloc[start:start + batch]
            try:
                got = self._served(chunk)
            except InferenceServerException as e:
                raise PerfError(f"model {self.model!r} refused rows {start}..{start + len(chunk) - 1} of the data: {e.message()}") from None
            difference = _difference(self._expected(chunk), got, start)
            if difference:
                raise PerfError(f"model {self.model!r} answered a request of {len(chunk)} rows wrongly ({difference}; checked against "
                                f"{self.against}): not benchmarking wrong answers")
        return len(rows)


def _perf_command(perf: str, url: str, model: str, batch: int, concurrency: int, data: Path, csv_path: Path, requests: int,
                  options: PerfOptions) -> list[str]:
    return [perf, "-m", model, "-i", "grpc", "-u", url, "-b", str(batch), f"--concurrency-range={concurrency}:{concurrency}",
            f"--input-data={data}", "--measurement-mode=count_windows", f"--measurement-request-count={requests}",
            f"--stability-percentage={options.stability:g}", f"--max-trials={options.max_trials}", "-f", str(csv_path)]


def measure(perf: str, url: str, model: str, batch: int, concurrency: int, data: Path, work: Path, options: PerfOptions,
            rows_per_request: int) -> PerfPoint:
    """One perf_analyzer point in count windows of ``options.request_count`` requests (twice that
    when it does not settle); PerfError with perf_analyzer's own words when it fails.

    Args:
        batch: perf_analyzer's ``-b`` (1 for a model without batching).
        rows_per_request: rows one request carries (``batch``, or the rows of an unbatched entry).
    """
    csv_path = work / f"perf_b{rows_per_request}_c{concurrency}.csv"
    for requests in (options.request_count, 2 * options.request_count):
        command = _perf_command(perf, url, model, batch, concurrency, data, csv_path, requests, options)
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=options.timeout_s)
        except subprocess.TimeoutExpired:
            raise PerfError(f"perf_analyzer ran past {options.timeout_s:g} s at batch {rows_per_request}, concurrency {concurrency}") from None
        if result.returncode == 0 or _UNSTABLE not in result.stdout + result.stderr:
            break
    if result.returncode != 0:
        said = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        raise PerfError(f"perf_analyzer failed at batch {rows_per_request}, concurrency {concurrency} (exit {result.returncode}): "
                        + " / ".join(said[-3:]))
    with open(csv_path, newline="") as f:
        row = next(csv.DictReader(f))
    per_second = float(row["Inferences/Second"])
    requests_per_s = per_second / batch
    compute = sum(float(row.get(k) or 0) for k in ("Server Compute Input", "Server Compute Infer", "Server Compute Output"))
    return PerfPoint(rows_per_request, concurrency, requests_per_s * rows_per_request, requests_per_s,
                     float(row["p50 latency"]) / 1e3, float(row["p95 latency"]) / 1e3, float(row["p99 latency"]) / 1e3,
                     float(row.get("Server Queue") or 0), compute)


def run_perf(url: str, model: str, data: str | os.PathLike[str], work: str | os.PathLike[str], options: PerfOptions = PerfOptions(),
             repository: str | os.PathLike[str] | None = None) -> PerfReport:
    """Benchmarks ``model`` at ``url`` (gRPC) with the rows of ``data`` (.parquet or .csv).

    Args:
        work: where the input data JSON and perf_analyzer's CSV reports are written.
        repository: the model repository the server loaded, for the in-process reference.

    Raises:
        PerfError: bad options, no perf_analyzer, a wrong answer, perf_analyzer's failure.
        QueryError: an unreadable file, missing columns, a model this client cannot fill.
        tritonclient.utils.InferenceServerException: the server does not know the model.
    """
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    perf = find_perf_analyzer(options.perf_analyzer)
    frame = read_rows(data).iloc[: options.rows]
    if len(frame) == 0:
        raise PerfError(f"{data}: no rows to send")
    client = grpcclient.InferenceServerClient(url)
    config = client.get_model_config(model, as_json=True)["config"]
    builder = RequestBuilder(config)
    builder.check(frame, data)
    max_batch_size = int(config.get("max_batch_size", 0))
    too_big = [b for b in options.batch_sizes if max_batch_size and b > max_batch_size]
    if too_big:
        raise PerfError(f"batch sizes {too_big}: model {model!r} takes at most {max_batch_size} rows per request (max_batch_size)")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    checker = _Checker(client, model, builder, repository)
    try:
        checked = sum(checker.check(frame, b, options.check_rows) for b in options.batch_sizes)
        report = PerfReport(model, len(frame), f"{checked} rows at batch sizes {list(options.batch_sizes)} equal {checker.against}")
        for batch, per_request, path in _input_files(builder, frame, work, options.batch_sizes, max_batch_size):
            for concurrency in options.concurrency:
                report.points.append(measure(perf, url, model, batch, concurrency, path, work, options, per_request))
    finally:
        checker.close()
        client.close()
    return report


def _input_files(builder: RequestBuilder, frame: Any, work: Path, batch_sizes: tuple[int, ...],
                 max_batch_size: int) -> list[tuple[int, int, Path]]:
    """``(perf_analyzer's -b, rows per request, input data file)`` per batch size: one file of
    rows for a batching model; for one without batching, a file per batch size of requests of
    that many rows (whole requests only; fewer rows when the frame has fewer)."""
    if max_batch_size:
        path = work / "input_data.json"
        path.write_text(json.dumps(input_data(builder, frame, True)))
        return [(batch, batch, path) for batch in batch_sizes]
    out = []
    for batch in batch_sizes:
        per_request = min(batch, len(frame))
        path = work / f"input_data_b{batch}.json"
        path.write_text(json.dumps(input_data(builder, frame.iloc[: len(frame) // per_request * per_request], False, per_request)))
        out.append((1, per_request, path))
    return out
