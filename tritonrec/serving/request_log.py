"""The request log's producer: records of served requests to a Redis Stream, off the request path.

A record is one stream entry per request (not per row): its request key (int64, made by the
transform for each request), its kind (``features``: the raw input tensors as the transform
received them; ``prediction``: what the ensemble answered, logged by the step that sees it), the
model and its version, the time (UTC nanoseconds) and its tensors as binary fields, so that a
batch of 1024 rows is one ``XADD``. The two kinds of one request are joined by the key downstream
(``tritonrec monitor``): no single model of the ensemble sees both.

:class:`RequestLogger` never blocks the caller: :meth:`RequestLogger.log` puts the record in a
bounded queue (a full queue drops it, counted) and a background thread sends queued records in
pipelined batches. When Redis is slow or down the batch it could not send is dropped and counted,
the thread backs off (up to 1 s) and resumes by itself when Redis answers again. Sampling is by the
request key, so both records of a sampled request are logged and neither of an unsampled one.

Field encoding (:func:`encode_record`, :func:`decode_record`): ``key``, ``kind``, ``model``,
``version``, ``time_ns`` as ASCII; ``id``, the client's request id, when it gave one (UTF-8);
``plan``, the transform's plan fingerprint (features records, ASCII); ``oov_columns`` (a JSON list
of the raw categorical columns the transform has a vocabulary for) and ``oov`` (``.npy`` bytes of
uint8 [rows, ceil(k / 8)]: per row, bit j (``numpy.packbits`` order) set when the row's value of
column j was out of vocabulary), features records of such a transform; a
numeric tensor ``t`` as ``n:t`` holding ``.npy`` bytes (``numpy.save`` without pickles: dtype,
shape, little-endian data); a string tensor as ``s:t`` holding a JSON object ``{"shape": [...],
"values": [...]}`` (UTF-8); for a packed tensor ``t`` ([rows, k], one column each), ``c:t`` holding
the JSON list of its k column names.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import io
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

REQUEST_STREAM = "tritonrec:requests"
"""The stream of request records."""
REQUEST_KEY = "request_key"
"""The tensor that carries a request's key: INT64 [rows, 1], the same key on every row."""
KINDS = ("features", "prediction")
_MIX = 0x9E3779B97F4A7C15


class RecordError(ValueError):
    """A stream entry that is not a request record; the message names the field and why."""


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One logged request. ``tensors``: name -> array as sent or answered ([batch, ...]; strings
    as object arrays of str). ``request_id``: the client's id of the request ("" when it gave none).
    ``columns``: packed tensor name -> the names of its columns, in order."""

    key: int
    kind: str
    model: str
    version: int
    time_ns: int
    tensors: dict[str, np.ndarray]
    request_id: str = ""
    columns: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    plan: str = ""
    """The fingerprint of the plan that transformed the request (features records; "" when unknown)."""
    oov: np.ndarray | None = None
    """bool [rows, len(oov_columns)]: True where the row's value of that raw column was encoded out of
    vocabulary (features records of a transform with a vocabulary; None when the record does not say)."""
    oov_columns: list[str] = dataclasses.field(default_factory=list)
    """The raw categorical columns of :attr:`oov`, in order."""


def encode_record(record: RequestRecord) -> dict[bytes, bytes]:
    """The stream entry's fields of ``record`` (see the module's docstring)."""
    if record.kind not in KINDS:
        raise RecordError(f"kind {record.kind!r}: expected one of {KINDS}")
    fields = {b"key": b"%d" % record.key, b"kind": record.kind.encode(), b"model": record.model.encode(),
              b"version": b"%d" % record.version, b"time_ns": b"%d" % record.time_ns}
    if record.request_id:
        fields[b"id"] = record.request_id.encode("utf-8")
    if record.plan:
        fields[b"plan"] = record.plan.encode("ascii")
    if record.oov is not None:
        flags = np.asarray(record.oov, dtype=bool)
        if flags.ndim != 2 or flags.shape[1] != len(record.oov_columns):
            raise RecordError(f"oov of shape {flags.shape}: expected [rows, {len(record.oov_columns)}] (one flag per oov column)")
        packed = np.packbits(flags, axis=1)
        fields[b"oov_columns"] = _column_names(tuple(record.oov_columns))
        fields[b"oov"] = _npy_header(packed.dtype.str, packed.shape) + packed.tobytes()
    for name, columns in record.columns.items():
        fields[f"c:{name}".encode()] = _column_names(tuple(columns))
    for name, array in record.tensors.items():
        array = np.asarray(array)
        if array.dtype.kind in "OSU":
            values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else (None if v is None else str(v)) for v in array.reshape(-1)]
            fields[f"s:{name}".encode()] = json.dumps({"shape": list(array.shape), "values": values}).encode()
        else:
            array = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
            fields[f"n:{name}".encode()] = _npy_header(array.dtype.str, array.shape) + array.tobytes()
    return fields


@functools.lru_cache(maxsize=1024)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header (format 1.0) of a C-ordered array: what ``numpy.save`` writes before
    the data, cached (a served model sees few dtypes and shapes; ``numpy.save`` builds it anew
    every call, most of a small record's encoding)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


@functools.lru_cache(maxsize=256)
def _column_names(columns: tuple[str, ...]) -> bytes:
    """A packed tensor's column names as the JSON list a record carries (the same few every request)."""
    return json.dumps(list(columns)).encode()


def _int_field(fields: Mapping[bytes, bytes], name: str) -> int:
    try:
        return int(fields[name.encode()])
    except KeyError:
        raise RecordError(f"field {name!r} missing") from None
    except ValueError:
        raise RecordError(f"field {name!r} is {fields[name.encode()][:40]!r}: expected an integer") from None


def _tensor(field: str, raw: bytes) -> np.ndarray:
    if field.startswith("n:"):
        try:
            return np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise RecordError(f"field {field!r}: not .npy bytes of a numeric array ({e})") from None
    try:
        body = json.loads(raw)
        return np.array(body["values"], dtype=object).reshape(body["shape"])
    except (ValueError, KeyError, TypeError) as e:
        raise RecordError(f"field {field!r}: not a JSON object of shape and values ({e})") from None


def decode_record(fields: Mapping[bytes, bytes]) -> RequestRecord:
    """The record of a stream entry's fields. RecordError naming the field that is missing or malformed."""
    kind = fields.get(b"kind", b"").decode("utf-8", "replace")
    if kind not in KINDS:
        raise RecordError(f"field 'kind' is {kind!r}: expected one of {KINDS}")
    if b"model" not in fields:
        raise RecordError("field 'model' missing")
    tensors, columns = {}, {}
    for name, raw in fields.items():
        text = name.decode("utf-8", "replace")
        if text[:2] in ("n:", "s:"):
            tensors[text[2:]] = _tensor(text, raw)
        elif text[:2] == "c:":
            try:
                names = json.loads(raw)
            except ValueError:
                names = None
            if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
                raise RecordError(f"field {text!r}: expected a JSON list of column names")
            columns[text[2:]] = names
    for name, names in columns.items():
        if name not in tensors or tensors[name].ndim != 2 or tensors[name].shape[1] != len(names):
            raise RecordError(f"field 'c:{name}': {len(names)} column names for tensor {name!r} "
                              f"of shape {tensors[name].shape if name in tensors else 'absent'}")
    oov, oov_columns = _oov(fields)
    return RequestRecord(_int_field(fields, "key"), kind, fields[b"model"].decode("utf-8", "replace"), _int_field(fields, "version"),
                         _int_field(fields, "time_ns"), tensors, fields.get(b"id", b"").decode("utf-8", "replace"), columns,
                         fields.get(b"plan", b"").decode("ascii", "replace"), oov, oov_columns)


def _oov(fields: Mapping[bytes, bytes]) -> tuple[np.ndarray | None, list[str]]:
    """The ``oov`` flags (bool [rows, k]) and their ``oov_columns`` of an entry; (None, []) without them."""
    if b"oov" not in fields and b"oov_columns" not in fields:
        return None, []
    try:
        names = json.loads(fields.get(b"oov_columns", b""))
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        raise RecordError("field 'oov_columns': expected a JSON list of column names")
    packed = _tensor("n:oov", fields.get(b"oov", b""))
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != (len(names) + 7) // 8:
        raise RecordError(f"field 'oov': {packed.dtype} {packed.shape}: expected uint8 [rows, {(len(names) + 7) // 8}] "
                          f"(a bit for each of the {len(names)} oov columns)")
    return np.unpackbits(packed, axis=1, count=len(names)).astype(bool), names


def sampled(key: int, share: float) -> bool:
    """Whether request ``key`` is logged at sampling ``share`` (0..1): a hash of the key, so every
    record of one request gets the same answer."""
    if share >= 1.0:
        return True
    h = ((key * _MIX) & 0xFFFFFFFFFFFFFFFF) >> 11  # 53 bits of a multiplicative hash
    return h < share * (1 << 53)


@dataclasses.dataclass(frozen=True)
class RequestLogOptions:
    """Where and how much to log.

    Attributes:
        redis_url: ``redis://host:port/db``.
        stream: the stream's key.
        sample: share of requests logged, by request key (0 < sample <= 1).
        maxlen: the stream is trimmed to about this many entries (``XADD MAXLEN ~``).
        queue: records waiting to be sent at most; more are dropped (counted).
        batch: records per pipelined round trip, at most.
        linger_s: how long the sender waits for a round trip to fill once a record is queued,
            seconds: one round trip per ``batch`` records or per ``linger_s``, whichever comes
            first, so that its fixed cost (CPU and the GIL of the serving process) is shared.
        timeout_s: socket timeout of each Redis call, seconds.
    """

    redis_url: str
    stream: str = REQUEST_STREAM
    sample: float = 1.0
    maxlen: int = 1_000_000
    queue: int = 10_000
    batch: int = 256
    linger_s: float = 0.05
    timeout_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url {self.redis_url!r}: expected redis://HOST:PORT[/DB] (or rediss://, unix://)")
        if not 0 < self.sample <= 1:
            raise ValueError(f"sample {self.sample}: expected a share in (0, 1]")
        for name in ("maxlen", "queue", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)}: expected >= 1")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s {self.timeout_s}: expected > 0")
        if not 0 <= self.linger_s <= 10:
            raise ValueError(f"linger_s {self.linger_s}: expected 0..10 seconds")

    def to_parameter(self) -> dict[str, Any]:
        """The options as the JSON object of a model's ``request_log`` parameter."""
        return dataclasses.asdict(self)

    @classmethod
    def from_parameter(cls, text: str) -> RequestLogOptions | None:
        """The options of a ``request_log`` parameter (a JSON object of the fields); None when empty
        (logging off). ValueError naming the parameter otherwise."""
        if not text:
            return None
        try:
            fields = json.loads(text)
            return cls(**fields)
        except (ValueError, TypeError) as e:
            raise ValueError(f"parameter 'request_log' is {text[:200]!r}: expected a JSON object of {[f.name for f in dataclasses.fields(cls)]} ({e})") from None


def request_key_spec() -> Any:
    """The :data:`REQUEST_KEY` tensor: INT64, one per row."""
    from tritonrec.serving.specs import TensorSpec  # noqa: PLC0415

    return TensorSpec(REQUEST_KEY, np.dtype(np.int64), (1,))


class RequestLogger:
    """Sends request records to a Redis Stream from a background thread (see the module's docstring).

    Attributes:
        sent_total: records written to the stream.
        dropped_total: records dropped, by reason: ``queue_full`` (more waiting than
            ``options.queue``) and ``redis_error`` (the batch's round trip failed: Redis down, slow
            past the timeout, or refusing).
        sampled_out_total: records not logged by sampling.
    """

    def __init__(self, options: RequestLogOptions, connect: Callable[[RequestLogOptions], Any] | None = None) -> None:
        self.options = options
        self._connect = connect or _connect
        self._client: Any = None
        self._queue: collections.deque[dict[bytes, bytes]] = collections.deque()
        self._lock = threading.Condition()
        self._closing = False
        self.sent_total = 0
        self.dropped_total = {"queue_full": 0, "redis_error": 0}
        self.sampled_out_total = 0
        self.last_error = ""
        self._busy = False  # the thread holds a batch taken from the queue
        self._thread = threading.Thread(target=self._run, name="tritonrec-request-log", daemon=True)
        self._thread.start()

    def log(self, record: RequestRecord) -> bool:
        """Queues ``record`` (never blocks on Redis); False when sampled out or dropped."""
        if not sampled(record.key, self.options.sample):
            self.sampled_out_total += 1
            return False
        fields = encode_record(record)
        with self._lock:
            if len(self._queue) >= self.options.queue or self._closing:
                self.dropped_total["queue_full"] += 1
                return False
            self._queue.append(fields)
            if len(self._queue) == 1 or len(self._queue) >= self.options.batch:  # the first wakes the sender, a full batch ends its wait
                self._lock.notify()
        return True

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Waits until the queue is empty (sent or dropped); False after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._queue or self._busy:
                if not self._lock.wait(timeout=max(0.0, deadline - time.monotonic())) and time.monotonic() >= deadline:
                    return False
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Sends what is queued (up to ``timeout_s``), then stops the thread; later records are dropped."""
        self.flush(timeout_s)
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._thread.join(timeout=timeout_s)

    def counts(self) -> tuple[int, dict[str, int]]:
        """(records sent, reason -> records dropped), cumulative: what :class:`RequestLogMetrics` reads."""
        return self.sent_total, dict(self.dropped_total)

    def _take(self) -> list[dict[bytes, bytes]]:
        with self._lock:
            while not self._queue and not self._closing:
                self._lock.wait(timeout=0.5)
            # linger: let the round trip fill (log() notifies only when a batch is full)
            deadline = time.monotonic() + self.options.linger_s
            while len(self._queue) < self.options.batch and not self._closing and time.monotonic() < deadline:
                self._lock.wait(timeout=max(0.0, deadline - time.monotonic()))
            batch = [self._queue.popleft() for _ in range(min(self.options.batch, len(self._queue)))]
            self._busy = bool(batch)
            return batch

    def _send(self, batch: list[dict[bytes, bytes]]) -> bool:
        """One round trip: the batch's XADDs written at once (packed here: a third of the CPU of
        redis-py's pipeline, and this CPU is the serving process's), then one reply each."""
        try:
            if self._client is None:
                self._client = self._connect(self.options)
            self._client.send_packed_command(_xadd_commands(self.options.stream.encode(), self.options.maxlen, batch), check_health=False)
            for _ in batch:
                self._client.read_response()
        except Exception as e:  # noqa: BLE001 - any failure of the round trip drops the batch, counted; serving goes on
            self.last_error = f"{type(e).__name__}: {e}"
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.disconnect()  # its replies may be out of step now
            self._client = None
            return False
        return True

    def _run(self) -> None:
        backoff = 0.0
        while True:
            batch = self._take()
            if not batch:
                if self._closing:
                    return
                continue
            ok = self._send(batch)
            with self._lock:
                if ok:
                    self.sent_total += len(batch)
                else:
                    self.dropped_total["redis_error"] += len(batch)
                self._busy = False
                self._lock.notify_all()
            if ok:
                backoff = 0.0
            else:  # Redis down or slow: wait before the next try (records meanwhile fill the queue, then drop)
                backoff = min(1.0, max(0.05, 2 * backoff))
                time.sleep(backoff)


def _connect(options: RequestLogOptions) -> Any:
    """A connected ``redis.Connection`` (TCP, TLS or a Unix socket, by the URL)."""
    import redis  # noqa: PLC0415 - only where logging is on

    pool = redis.ConnectionPool.from_url(options.redis_url, socket_timeout=options.timeout_s, socket_connect_timeout=options.timeout_s)
    connection = pool.make_connection()
    connection.connect()
    return connection


_LARGE = 16 * 1024


def _xadd_commands(stream: bytes, maxlen: int, batch: list[dict[bytes, bytes]]) -> list[bytes]:
    """``XADD stream MAXLEN ~ maxlen * field value ...`` of each record, in Redis's wire protocol
    (RESP arrays of bulk strings), as chunks to send in order: the small parts joined, values of
    16 KiB or more as their own chunks (not copied)."""
    head = [b"XADD", stream, b"MAXLEN", b"~", b"%d" % maxlen, b"*"]
    chunks: list[bytes] = []
    small: list[bytes] = []
    for fields in batch:
        small.append(b"*%d\r\n" % (len(head) + 2 * len(fields)))
        for part in (*head, *(x for item in fields.items() for x in item)):
            small.append(b"$%d\r\n" % len(part))
            if len(part) >= _LARGE:
                chunks.append(b"".join(small))
                chunks.append(part)
                small = [b"\r\n"]
            else:
                small += (part, b"\r\n")
    chunks.append(b"".join(small))
    return chunks


Execute = Callable[[list[dict[str, Any]]], list[Any]]
"""A served model's batched call: per request input name -> array, to outputs or the error."""


def _host(array: Any) -> np.ndarray:
    """A tensor as a host numpy array (torch and cupy arrays copied over; numpy as is)."""
    if hasattr(array, "detach"):  # torch
        return array.detach().cpu().numpy()
    if hasattr(array, "get") and not isinstance(array, np.ndarray):  # cupy
        return array.get()
    return np.asarray(array)


def _rows(result: Mapping[str, Any]) -> int:
    first = next(iter(result.values()), None)
    return 0 if first is None else int(first.shape[0])


class FeatureLogging:
    """Wraps a transform's ``execute``: every answered request gets a new request key (a random
    63-bit integer, output :data:`REQUEST_KEY` INT64 [rows, 1] beside its other outputs) and, with a
    ``logger``, a ``features`` record of the input tensors as received. Rejected requests get
    neither; requests of no rows get a key but no record.

    Args:
        execute: the transform's batched call (host numpy outputs).
        logger: where records go (None: keys only).
        model, version: the model's name and version, recorded.
        columns: packed input tensor -> its column names (recorded, so that the monitor writes columns).
        plan: the transform's plan fingerprint (recorded).
        oov: the transform's out-of-vocabulary flags of a request's outputs (bool [rows, k], host), recorded
            with ``oov_columns`` (the k raw columns); None: not recorded.
    """

    def __init__(self, execute: Execute, logger: RequestLogger | None, model: str, version: int,
                 columns: Mapping[str, Sequence[str]] | None = None, plan: str = "",
                 oov: Callable[[Mapping[str, Any]], np.ndarray] | None = None, oov_columns: Sequence[str] = ()) -> None:
        self.execute, self.logger, self.model, self.version, self.plan = execute, logger, model, version, plan
        self.columns = {name: list(names) for name, names in (columns or {}).items()}
        self.oov, self.oov_columns = oov, list(oov_columns)

    def __call__(self, batch: list[dict[str, Any]], request_ids: Sequence[str] | None = None) -> list[Any]:
        """Runs ``batch``; ``request_ids``: the client's id of each request ("" for none), recorded."""
        results = self.execute(batch)
        out = []
        ids = list(request_ids) if request_ids is not None else [""] * len(batch)
        for tensors, result, request_id in zip(batch, results, ids):
            if isinstance(result, Exception):
                out.append(result)
                continue
            key, rows = secrets.randbits(63), _rows(result)
            result = {**result, REQUEST_KEY: np.full((rows, 1), key, dtype=np.int64)}
            if self.logger is not None and rows:
                self.logger.log(RequestRecord(key, "features", self.model, self.version, time.time_ns(),
                                              {name: _host(array) for name, array in tensors.items()}, request_id or "",
                                              {name: names for name, names in self.columns.items() if name in tensors}, self.plan,
                                              self.oov(result) if self.oov is not None else None, self.oov_columns))
            out.append(result)
        return out


class PredictionLogging:
    """Wraps a scorer's ``execute``: takes :data:`REQUEST_KEY` out of each request's inputs (the
    scorer never sees it) and, for every answered request, logs a ``prediction`` record of its
    outputs under that key.

    Raises (per request, as its error): RequestError when the key tensor is missing or not
    INT64 [rows, 1] holding one key.
    """

    def __init__(self, execute: Execute, logger: RequestLogger, model: str, version: int) -> None:
        self.execute, self.logger, self.model, self.version = execute, logger, model, version

    def __call__(self, batch: Sequence[Mapping[str, Any]]) -> list[Any]:
        from tritonrec.serving.requests import RequestError  # noqa: PLC0415

        keys: list[Any] = []
        stripped = []
        for tensors in batch:
            key_tensor = tensors.get(REQUEST_KEY)
            values = None if key_tensor is None else _host(key_tensor)
            if values is None or values.dtype != np.int64 or values.ndim != 2 or values.shape[1] != 1 or (values.size and (values != values[0, 0]).any()):
                keys.append(RequestError(f"input {REQUEST_KEY!r}: expected INT64 [rows, 1] holding one request key"))
            else:
                keys.append(int(values[0, 0]) if values.size else None)
            stripped.append({name: array for name, array in tensors.items() if name != REQUEST_KEY})
        good = [i for i, k in enumerate(keys) if not isinstance(k, Exception)]
        answered = self.execute([stripped[i] for i in good]) if good else []
        results: list[Any] = list(keys)
        for i, result in zip(good, answered):
            results[i] = result
            if not isinstance(result, Exception) and keys[i] is not None:
                self.logger.log(RequestRecord(keys[i], "prediction", self.model, self.version, time.time_ns(),
                                              {name: _host(array) for name, array in result.items()}))
        return results
