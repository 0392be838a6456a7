"""``tritonrec monitor``: the request and label streams joined into the next training data.

The monitor reads both streams through a Redis consumer group (at least once: an entry is
acknowledged only after the rows it belongs to are in the sink, so a monitor killed at any point
reads its unacknowledged entries again when it restarts), joins each request's ``features`` and
``prediction`` records (:mod:`tritonrec.serving.request_log`) by request key and its label
(:mod:`tritonrec.monitoring.labels`) by the request key or the client's request id, and writes
the joined rows to hourly parquet partitions (:mod:`tritonrec.monitoring.sink`).

A request is written when it has features, a prediction and a label, or once both streams are
read past its time + ``label_window_s`` (then with what it has: no label, or no prediction when
the scorer never logged one). "Read past" is the time of the last entry read, or the clock when a
stream is caught up, so a monitor restarted after an outage still joins the labels of its backlog.
A label for a request not (yet) seen waits likewise, then counts as ``unknown``; one for a request
already written, as ``late``. Each request is written
once: the keys and client ids already in the sink are read when the monitor starts (from the
partitions a re-delivered or undelivered entry can belong to: those from the group's oldest
unacknowledged or undelivered entry less the window and an hour on), and re-delivered entries of
those are acknowledged without writing.

Redis down or restarted under the monitor: :meth:`Monitor.run` reports the error and retries,
backing off; acknowledgements that failed are kept and sent at the next step, and what was read
stays in memory, so nothing is lost or written twice. A Redis that comes back without its data
(no persistence) has lost the consumer group: it is created again and reading starts from the
new streams' first entries.

With a ``watch`` (``--profile``) the joined rows also go to its drift and quality windows
(:mod:`tritonrec.monitoring.watch`); a profile of another plan than the one served (the plan of
the newest features record in the stream) is refused at start, and rows of another plan that
arrive later (a rollout) are left out of the windows and counted.

Prometheus metrics (``prometheus_client``, served on ``metrics_port``):
``tritonrec_monitor_rows_total{label="present"|"missing"}``, ``tritonrec_monitor_lag_seconds``
(how far behind the newest entry the last read was, 0 when caught up),
``tritonrec_monitor_malformed_total{stream}``, ``tritonrec_monitor_labels_unmatched_total{reason}``
(``unknown``, ``late``, ``duplicate``), ``tritonrec_monitor_sink_errors_total``,
``tritonrec_monitor_pending_requests``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

from tritonrec.monitoring.labels import LABEL_STREAM
from tritonrec.monitoring.sink import Sink, SinkError, concat_tables, feature_columns, partition_of, request_table
from tritonrec.serving.request_log import REQUEST_STREAM, RecordError, RequestRecord, decode_record

RECORD_WAIT_S = 10.0
"""How long a request read with one of its two records (features, prediction) waits for the other
at least, whatever the label window: the transform's and the scorer's loggers send independently."""
GROUP = "tritonrec-monitor"
"""The consumer group's default name."""


@dataclasses.dataclass
class _Request:
    key: int
    time_ns: int
    features: RequestRecord | None = None
    prediction: RequestRecord | None = None
    label: tuple[int, int] | None = None  # (0 or 1, time_ns)
    entries: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (stream, entry id) to acknowledge


@dataclasses.dataclass
class _Label:
    label: int
    time_ns: int
    entry: str
    arrived_ns: int


def _text(value: Any) -> str:
    """A Redis reply's name or id (bytes from redis-py without decode_responses) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry_time_ns(entry_id: str) -> int:
    """The time part of a stream entry id (``<ms>-<seq>``), in nanoseconds."""
    return int(entry_id.split("-", 1)[0]) * 1_000_000


def parse_label(fields: dict[bytes, bytes]) -> tuple[str, int, int]:
    """(request id, label, time_ns) of a label stream entry; RecordError naming the bad field."""
    request_id = fields.get(b"id", b"").decode("utf-8", "replace")
    if not request_id:
        raise RecordError("label entry: field 'id' missing or empty")
    raw = fields.get(b"label", b"").decode("ascii", "replace")
    if raw not in ("0", "1"):
        raise RecordError(f"label entry {request_id!r}: field 'label' is {raw!r}: expected 0 or 1")
    try:
        at = int(fields.get(b"time_ns", b"0"))
    except ValueError:
        raise RecordError(f"label entry {request_id!r}: field 'time_ns' is not an integer") from None
    return request_id, int(raw), at


class _Metrics:
    def __init__(self, registry: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge  # noqa: PLC0415

        self.registry = registry if registry is not None else CollectorRegistry()
        self.rows = Counter("tritonrec_monitor_rows", "Rows written to the sink, by whether a label was joined", ["label"],
                            registry=self.registry)
        self.lag = Gauge("tritonrec_monitor_lag_seconds", "Age of the last entry read while more were waiting (0: caught up)",
                         registry=self.registry)
        self.malformed = Counter("tritonrec_monitor_malformed", "Stream entries skipped as malformed", ["stream"], registry=self.registry)
        self.unmatched = Counter("tritonrec_monitor_labels_unmatched", "Labels not joined, by reason", ["reason"], registry=self.registry)
        self.sink_errors = Counter("tritonrec_monitor_sink_errors", "Failed writes to the sink (retried)", registry=self.registry)
        self.pending = Gauge("tritonrec_monitor_pending_requests", "Requests read and not yet written", registry=self.registry)
        self.other_plan = Counter("tritonrec_monitor_rows_other_plan", "Rows of a plan other than the profile's, left out of drift and quality",
                                  registry=self.registry)


class Monitor:
    """Joins the request and label streams into the sink (see the module's docstring).

    Args:
        redis_url: ``redis://HOST:PORT[/DB]``.
        sink: the sink directory (created; SinkError when it cannot be written).
        label_window_s: how long a request waits for its label, and a label for its request, seconds.
        request_stream, label_stream: the streams' keys.
        group, consumer: the consumer group and this monitor's name in it (a restarted monitor must
            keep its name to read again what it had not acknowledged).
        count: entries read per stream per step.
        record_wait_s: how long a request with one of its two records waits for the other at
            least (the label window when longer), seconds.
        watch: a :class:`~tritonrec.monitoring.watch.Watch` given the rows written (those of its
            profile's plan), for drift, quality and alerts; its metrics should share ``registry``.
        registry: a prometheus_client registry for the metrics (default: a new one).
        log: where errors that the monitor rides out are reported (default: stderr).

    Raises:
        SinkError: the sink cannot be written. ValueError: a bad option or URL. redis.RedisError: Redis
        cannot be reached.
    """

    def __init__(self, redis_url: str, sink: Any, *, label_window_s: float = 600.0, request_stream: str = REQUEST_STREAM,
                 label_stream: str = LABEL_STREAM, group: str = GROUP, consumer: str = "monitor", count: int = 1000,
                 registry: Any = None, log: Callable[[str], None] | None = None, record_wait_s: float = RECORD_WAIT_S,
                 watch: Any = None) -> None:
        import redis  # noqa: PLC0415

        if label_window_s < 0:
            raise ValueError(f"label_window_s {label_window_s}: expected >= 0")
        if count < 1:
            raise ValueError(f"count {count}: expected >= 1")
        if record_wait_s < 0:
            raise ValueError(f"record_wait_s {record_wait_s}: expected >= 0")
        self.window_ns = int(label_window_s * 1e9)
        self.record_wait_ns = max(self.window_ns, int(record_wait_s * 1e9))
        self.streams = (request_stream, label_stream)
        self.group, self.consumer, self.count = group, consumer, count
        self.log = log or (lambda message: print(f"tritonrec monitor: {message}", file=sys.stderr, flush=True))
        self.sink = Sink(sink)
        self.metrics = _Metrics(registry)
        self.watch = watch
        self._refused_plans: set[str] = set()
        try:
            self.client = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
        except ValueError as e:
            raise ValueError(f"redis URL {redis_url!r}: {e}") from None
        if watch is not None:
            self._check_served_plan()
        self._create_groups()
        self.written, self.written_ids = self.sink.written(self._oldest_request_ns())
        self._pending: dict[int, _Request] = {}
        self._by_id: dict[str, int] = {}  # client request id -> request key, of pending requests
        self._labels: dict[str, list[_Label]] = {}  # labels waiting for their request
        self._cursor = {stream: "0" for stream in self.streams}  # "0..": this consumer's unacknowledged entries first
        # per stream, the time it is read up to: its last new entry's, or now when caught up
        self._read_to = {stream: 0 for stream in self.streams}
        self._complete: dict[int, None] = {}  # keys of pending requests with features, prediction and label, in order
        self._unacked: list[tuple[str, str]] = []  # (stream, entry) done with, acknowledged at the end of a step
        self.rows_written = 0

    def _check_served_plan(self, look_back: int = 1000) -> None:
        """Refuses the watch's profile when the newest features record among the request stream's
        last ``look_back`` entries comes from another plan (the plan served now; a rollout later
        on is handled row by row, see :meth:`_of_profiled_plan`).

        Raises:
            ProfileError: naming both plans, the model and the stream.
        """
        from tritonrec.monitoring.profile import ProfileError  # noqa: PLC0415

        stream, wanted = self.streams[0], self.watch.profile.plan_fingerprint
        newest, read = "+", 0
        while read < look_back:  # pages of 16 from the newest (an entry can hold a large batch's tensors)
            page = self.client.xrevrange(stream, max=newest, count=16)
            for entry, fields in page:
                plan = fields.get(b"plan", b"").decode("ascii", "replace")
                if fields.get(b"kind") != b"features" or not plan:
                    continue
                if plan != wanted:
                    model = fields.get(b"model", b"").decode("utf-8", "replace")
                    raise ProfileError(f"the profile was built for plan {wanted}; model {model!r} serves plan {plan} "
                                       f"(its newest request in {stream}): build the profile of the plan now served")
                return
            if len(page) < 16:
                return
            newest, read = "(" + _text(page[-1][0]), read + len(page)

    def _oldest_request_ns(self) -> int:
        """The earliest request time an entry this consumer can still read may belong to: the
        oldest entry of either stream that the group has not acknowledged or not yet delivered
        (now when none), less the window and an hour for the loggers' delay. Requests written
        before that cannot come again, so the sink's older partitions are not read at start."""
        oldest = time.time_ns()
        for stream in self.streams:
            pending = self.client.xpending(stream, self.group)
            if pending["pending"]:
                oldest = min(oldest, _entry_time_ns(_text(pending["min"])))
            group = next(g for g in self.client.xinfo_groups(stream) if _text(g["name"]) == self.group)
            undelivered = self.client.xrange(stream, min=f"({_text(group['last-delivered-id'])}", count=1)
            if undelivered:
                oldest = min(oldest, _entry_time_ns(_text(undelivered[0][0])))
        return max(0, oldest - self.window_ns - 3600 * 10**9)

    def _create_groups(self) -> None:
        """The consumer group on both streams (and the streams), from their first entry; kept when there."""
        import redis  # noqa: PLC0415

        for stream in self.streams:
            try:
                self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    # -- reading

    def step(self, block_ms: int = 200) -> int:
        """One read of both streams (waiting up to ``block_ms`` when caught up), then writes what
        is complete or past its window. Returns the entries read."""
        import redis  # noqa: PLC0415

        self._acknowledge()  # what an earlier step could not acknowledge (Redis was down)
        reading_pending = any(c != ">" for c in self._cursor.values())
        try:
            reply = self.client.xreadgroup(self.group, self.consumer, dict(self._cursor), count=self.count,
                                           block=None if reading_pending else block_ms)
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            # Redis came back without its data (no persistence): the streams start again, empty
            self.log(f"redis: the consumer group {self.group!r} is gone (Redis restarted without its data?): creating it again")
            self._create_groups()
            self._cursor = {stream: "0" for stream in self.streams}
            return 0
        read, lag = 0, 0.0
        now = time.time_ns()
        returned = {_text(s): entries for s, entries in (reply or [])}
        for stream in self.streams:
            entries = returned.get(stream, [])
            if self._cursor[stream] != ">":
                if not entries:
                    self._cursor[stream] = ">"  # this consumer's backlog is read: new entries from now on
                    continue
                self._cursor[stream] = entries[-1][0].decode()
            new = self._cursor[stream] == ">"
            for entry_id, fields in entries:
                if stream == self.streams[0]:
                    self._take_record(entry_id.decode(), fields or {})
                else:
                    self._take_label(entry_id.decode(), fields or {})
            read += len(entries)
            if len(entries) == self.count:
                lag = max(lag, (now - _entry_time_ns(entries[-1][0].decode())) / 1e9)
                if new:
                    self._read_to[stream] = _entry_time_ns(entries[-1][0].decode())
            elif new:
                self._read_to[stream] = now
        self.metrics.lag.set(max(lag, 0.0))
        self.flush()
        if self.watch is not None:  # a window also ends by time; a running on-alert action is reaped
            report = self.watch.tick()
            if report is not None:
                self._report(report)
            self.watch.poll()
        return read

    def _skip(self, stream: str, entry: str) -> None:
        """Done with ``entry`` without writing it (malformed, a duplicate, written before)."""
        self._unacked.append((stream, entry))

    def _acknowledge(self) -> None:
        """XACKs the entries done with. Raises Redis's error and keeps them, to try again at the
        next step; nothing else waits on this, so reading and writing go on from where they were."""
        if not self._unacked:
            return
        pipe = self.client.pipeline(transaction=False)
        for stream, entry in self._unacked:
            pipe.xack(stream, self.group, entry)
        pipe.execute()
        self._unacked.clear()

    def _take_record(self, entry: str, fields: dict[bytes, bytes]) -> None:
        stream = self.streams[0]
        try:
            record = decode_record(fields)
        except (RecordError, KeyError, ValueError) as e:
            self.metrics.malformed.labels(stream=stream).inc()
            self.log(f"{stream} entry {entry} skipped: {e}")
            self._skip(stream, entry)
            return
        if record.key in self.written:  # written before a crash, not acknowledged then
            self._skip(stream, entry)
            return
        request = self._pending.get(record.key)
        if request is None:
            request = self._pending[record.key] = _Request(record.key, record.time_ns)
        if getattr(request, record.kind) is not None:  # the same record again (re-delivered): keep one
            self._skip(stream, entry)
            return
        setattr(request, record.kind, record)
        request.time_ns = min(request.time_ns, record.time_ns)
        request.entries.append((stream, entry))
        if record.request_id:
            self._by_id[record.request_id] = record.key
        for name in (str(record.key), record.request_id):
            for label in self._labels.pop(name, []) if name else []:
                self._join_label(request, label)
        self._check_complete(request)

    def _take_label(self, entry: str, fields: dict[bytes, bytes]) -> None:
        stream = self.streams[1]
        try:
            request_id, value, at = parse_label(fields)
        except RecordError as e:
            self.metrics.malformed.labels(stream=stream).inc()
            self.log(f"{stream} entry {entry} skipped: {e}")
            self._skip(stream, entry)
            return
        label = _Label(value, at, entry, _entry_time_ns(entry))
        key = self._key_of(request_id)
        if key is not None:
            self._join_label(self._pending[key], label)
        elif request_id in self.written_ids or (request_id.lstrip("-").isdigit() and int(request_id) in self.written):
            self.metrics.unmatched.labels(reason="late").inc()
            self._skip(stream, entry)
        else:
            self._labels.setdefault(request_id, []).append(label)

    def _key_of(self, request_id: str) -> int | None:
        if request_id in self._by_id:
            return self._by_id[request_id]
        if request_id.lstrip("-").isdigit() and int(request_id) in self._pending:
            return int(request_id)
        return None

    def _join_label(self, request: _Request, label: _Label) -> None:
        if request.label is not None:
            self.metrics.unmatched.labels(reason="duplicate").inc()
            self._skip(self.streams[1], label.entry)
            return
        request.label = (label.label, label.time_ns)
        request.entries.append((self.streams[1], label.entry))
        self._check_complete(request)

    def _check_complete(self, request: _Request) -> None:
        if request.features is not None and request.prediction is not None and request.label is not None:
            self._complete[request.key] = None

    # -- writing

    def flush(self) -> int:
        """Writes the requests that are complete or past the window, acknowledges their entries,
        and drops labels that waited past the window. Returns rows written."""
        # A request waits for its label until the label stream is read past its time + the window
        # (not the clock: after an outage the backlog's labels are still to be read), and for its
        # other record until the request stream is; a label waits likewise for its request.
        # A request without one of its two records waits at least record_wait_s for it (the two
        # loggers send independently), whatever the label window.
        requests_to, labels_to = (self._read_to[stream] for stream in self.streams)
        read_to = min(requests_to, labels_to)
        ready = {key: self._pending[key] for key in self._complete if key in self._pending}
        for request in self._pending.values():  # in the order first read, about their times: the oldest first
            waited = read_to - request.time_ns
            if waited <= self.window_ns:
                break  # nor have the later ones waited long enough
            if waited > self.record_wait_ns or (request.features is not None and request.prediction is not None):
                ready[request.key] = request
        rows = self._write(list(ready.values())) if ready else 0
        self._complete = {key: None for key in self._complete if key in self._pending}  # kept when the sink failed
        for request_id, labels in list(self._labels.items()):
            expired = [label for label in labels if requests_to - label.arrived_ns > self.window_ns]
            for label in expired:
                self.metrics.unmatched.labels(reason="unknown").inc()
                self._skip(self.streams[1], label.entry)
            kept = [label for label in labels if label not in expired]
            if kept:
                self._labels[request_id] = kept
            else:
                del self._labels[request_id]
        self.metrics.pending.set(len(self._pending))
        self._acknowledge()
        return rows

    def _write(self, ready: list[_Request]) -> int:
        by_partition: dict[str, list[Any]] = {}
        counts = {"present": 0, "missing": 0}
        joined: list[tuple[_Request, Any]] = []  # (request, its rows' table)
        for request in ready:
            table = self._table(request)
            if table is None:
                continue
            by_partition.setdefault(partition_of(request.time_ns), []).append(table)
            counts["present" if request.label is not None else "missing"] += table.num_rows
            joined.append((request, table))
        try:
            for partition, tables in by_partition.items():
                self.sink.write(partition, tables)
        except SinkError as e:  # nothing acknowledged: the next flush tries again
            self.metrics.sink_errors.inc()
            self.log(str(e))
            return 0
        # written: from here on these requests are done, whether or not Redis takes the XACKs now
        for request in ready:
            self._unacked.extend(request.entries)
            del self._pending[request.key]
            self.written.add(request.key)
            for record in (request.features, request.prediction):
                if record is not None and record.request_id:
                    self.written_ids.add(record.request_id)
                    self._by_id.pop(record.request_id, None)
        for label, n in counts.items():
            if n:
                self.metrics.rows.labels(label=label).inc(n)
        rows = counts["present"] + counts["missing"]
        self.rows_written += rows
        if self.watch is not None:  # once written: a failed write is tried again, and counted then
            watched = [table for request, table in joined if self._of_profiled_plan(request, table.num_rows)]
            if watched:
                self._watch(watched)
        return rows

    def _of_profiled_plan(self, request: _Request, rows: int) -> bool:
        """Whether the request was transformed by the plan of the watch's profile (or by a
        transform that does not say); other plans' rows are counted and left out of drift and quality."""
        plan = request.features.plan if request.features is not None else ""
        if not plan or plan == self.watch.profile.plan_fingerprint:
            return True
        self.metrics.other_plan.inc(rows)
        if plan not in self._refused_plans:
            self._refused_plans.add(plan)
            self.log(f"requests of plan {plan} are not compared with the profile, built for plan {self.watch.profile.plan_fingerprint}: "
                     "build the profile of the plan now served")
        return False

    def _watch(self, tables: list[Any]) -> None:
        """The rows to the watch; the report of every window they complete goes to the log."""
        self.watch.add(concat_tables(tables))
        for report in self.watch.closed:
            self._report(report)

    def _report(self, report: dict[str, Any]) -> None:
        drifted = sorted(c for c, r in report["columns"].items() if r["drifted"])
        self.log(f"window {report['window']}: {report['rows']:,} rows, drifted {drifted or 'none'}"
                 + (", dataset drift" if report["dataset_drift"] else "")
                 + "".join(f"; {m} v{v} AUC {q['auc']:.4f}" for (m, v), q in report["quality"].items() if q and q["auc"] is not None))

    def _table(self, request: _Request) -> Any:
        """The request's rows as a pyarrow Table; None (logged, acknowledged later as written)
        when its records cannot be joined (their rows disagree)."""
        features, prediction = request.features, request.prediction
        try:
            rows, columns = feature_columns(features.tensors, features.columns) if features is not None else (None, {})
            predicted_rows, outputs = feature_columns(prediction.tensors) if prediction is not None else (rows, {})
            if rows is None:
                rows = predicted_rows
            if predicted_rows != rows:
                raise ValueError(f"{rows} rows of features and {predicted_rows} of predictions")
            oov = (features.oov, features.oov_columns) if features is not None and features.oov is not None else None
            if oov is not None and oov[0].shape[0] != rows:
                raise ValueError(f"{rows} rows of features and {oov[0].shape[0]} of out-of-vocabulary flags")
        except ValueError as e:
            self.metrics.malformed.labels(stream=self.streams[0]).inc()
            self.log(f"request {request.key} skipped: {e}")
            return None
        first = features or prediction
        meta = {
            "request_key": request.key, "request_id": first.request_id if first is not None else "",
            "model": features.model if features is not None else "", "model_version": features.version if features is not None else None,
            "scorer": prediction.model if prediction is not None else "", "scorer_version": prediction.version if prediction is not None else None,
            "request_time_ns": features.time_ns if features is not None else None,
            "prediction_time_ns": prediction.time_ns if prediction is not None else None,
            "label": request.label[0] if request.label is not None else None,
            "label_time_ns": request.label[1] if request.label is not None else None, "oov": oov,
        }
        return request_table(columns, outputs, rows or 0, meta)

    # -- running

    @property
    def pending_requests(self) -> int:
        """Requests read and not yet written (their entries are read again after a restart)."""
        return len(self._pending)

    def caught_up(self) -> bool:
        """True when nothing read waits to be written or acknowledged and this consumer reads new entries only."""
        return not self._pending and not self._labels and not self._unacked and all(c == ">" for c in self._cursor.values())

    def drain(self, timeout_s: float = 30.0, block_ms: int = 50) -> bool:
        """Steps until the streams hold nothing unread and everything read is written (requests
        and labels past their window included); False after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            new_only = all(c == ">" for c in self._cursor.values())  # a read of new entries, not of the backlog
            if self.step(block_ms) == 0 and new_only and self.caught_up():
                return True
        return False

    def run(self, stop: Callable[[], bool] = lambda: False, block_ms: int = 500) -> None:
        """Steps until ``stop()`` is true. Redis errors are reported and retried (backing off up to 5 s)."""
        import redis  # noqa: PLC0415

        backoff = 0.0
        while not stop():
            try:
                self.step(block_ms)
                backoff = 0.0
            except (redis.RedisError, OSError) as e:
                backoff = min(5.0, max(0.2, 2 * backoff))
                self.log(f"redis: {type(e).__name__}: {e} (retrying in {backoff:.1f} s)")
                time.sleep(backoff)
