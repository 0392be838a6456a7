"""tritonrec's custom metrics on Triton's metrics endpoint, through ``pb_utils.MetricFamily``.

Families (Prometheus names, as scraped from ``/metrics``):

- ``tritonrec_embedding_lookups_total{model,table,tier}``: keys looked up in a tier (counter).
- ``tritonrec_embedding_misses_total{model,table,tier}``: keys a tier did not hold (counter).
- ``tritonrec_embedding_lookup_duration_us{model}``: time of one ``execute``'s lookup, in
  microseconds (histogram).
- ``tritonrec_transform_rows_total{model}``: rows transformed (counter).
- ``tritonrec_transform_oov_total{model,column}``: values encoded out of vocabulary (counter).
- ``tritonrec_feedback_sent_total{model}``: request records written to the Redis Stream (counter).
- ``tritonrec_feedback_dropped_total{model,reason}``: request records dropped, ``reason``
  ``queue_full`` or ``redis_error`` (counter; see :mod:`tritonrec.serving.request_log`).

Every metric call of the Python backend is a synchronous round trip from the stub to the server
(about 0.1 ms here), so nothing is sent from ``execute``: counters are read from the model's own
cumulative totals, durations are queued, and a background thread sends the differences every
``interval_s`` (0.5 s) and once more when the model is unloaded. The metrics endpoint therefore
lags by up to ``interval_s``; the counts themselves are exact.

The backends pass their ``pb_utils`` module in; nothing here imports Triton.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

LOOKUP_DURATION_BUCKETS_US = [10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0, 100000.0]
FLUSH_INTERVAL_S = 0.5


class _Flusher:
    """Calls ``flush`` every ``interval_s`` on a daemon thread, and once more from :meth:`close`."""

    def __init__(self, flush: Callable[[], None], interval_s: float) -> None:
        self._flush = flush
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), name="tritonrec-metrics", daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.flush()


class _ModelMetrics:
    """The metrics of one model: its families (``FAMILIES``: name, help, ``COUNTER`` or
    ``HISTOGRAM``), registered once, and a thread that sends what ``read`` reports every
    ``interval_s`` seconds and once more on :meth:`close`."""

    FAMILIES: tuple[tuple[str, str, str], ...] = ()

    def __init__(self, pb_utils: Any, model: str, read: Callable[[], Any], interval_s: float = FLUSH_INTERVAL_S) -> None:
        family = pb_utils.MetricFamily
        self._families = [family(name, text, getattr(family, kind)) for name, text, kind in self.FAMILIES]
        self._read = read
        self._metrics(model, *self._families)
        self._flusher = _Flusher(self._send, interval_s)

    def _metrics(self, model: str, *families: Any) -> None:
        """Makes the model's metrics of each family."""
        raise NotImplementedError

    def _send(self) -> None:
        """Sends what changed since the last call."""
        raise NotImplementedError

    def close(self) -> None:
        """Sends what is pending and stops the thread."""
        self._flusher.close()


class LookupMetrics(_ModelMetrics):
    """Counters and the duration histogram of one embedding_lookup model.

    Args:
        pb_utils: the ``triton_python_backend_utils`` module.
        model: the model's name (label ``model``).
        read: returns (table, tier) -> (lookups, misses) since its previous call.
        interval_s: seconds between sends.
    """

    FAMILIES = (
        ("tritonrec_embedding_lookups_total", "Embedding keys looked up, per table and tier", "COUNTER"),
        ("tritonrec_embedding_misses_total", "Embedding keys a tier did not hold, per table and tier", "COUNTER"),
        ("tritonrec_embedding_lookup_duration_us", "Duration of one batched embedding lookup, in microseconds", "HISTOGRAM"),
    )

    def _metrics(self, model: str, *families: Any) -> None:
        lookups, misses, duration = families
        keys = list(self._read())
        self._lookups = {key: lookups.Metric(labels={"model": model, "table": key[0], "tier": key[1]}) for key in keys}
        self._misses = {key: misses.Metric(labels={"model": model, "table": key[0], "tier": key[1]}) for key in keys}
        self._duration = duration.Metric(labels={"model": model}, buckets=LOOKUP_DURATION_BUCKETS_US)
        self._durations: list[float] = []

    def observe_duration(self, duration_us: float) -> None:
        """Queues one execute's lookup duration, in microseconds (cheap: no call to the server)."""
        self._durations.append(duration_us)

    def _send(self) -> None:
        durations, self._durations = self._durations, []
        for key, (lookups, misses) in self._read().items():
            if lookups:
                self._lookups[key].increment(lookups)
            if misses:
                self._misses[key].increment(misses)
        for value in durations:
            self._duration.observe(value)


class _TotalAndLabelled(_ModelMetrics):
    """Two counters of one model read as cumulative totals: one with the model's label only, one
    per value of a second label (``LABEL``); sends the differences since the last send.
    ``read`` returns (total, label value -> total); the label values are those of its first call."""

    LABEL = ""

    def _metrics(self, model: str, *families: Any) -> None:
        plain, labelled = families
        _, values = self._read()
        self._plain = plain.Metric(labels={"model": model})
        self._labelled = {v: labelled.Metric(labels={"model": model, self.LABEL: v}) for v in values}
        self._last_plain = 0
        self._last_labelled = dict.fromkeys(values, 0)

    def _send(self) -> None:
        total, by_value = self._read()
        if total != self._last_plain:
            self._plain.increment(total - self._last_plain)
            self._last_plain = total
        for value, count in list(by_value.items()):
            if count != self._last_labelled[value]:
                self._labelled[value].increment(count - self._last_labelled[value])
                self._last_labelled[value] = count


class TransformMetrics(_TotalAndLabelled):
    """Row and out-of-vocabulary counters of one nvtabular_transform model.

    Args:
        pb_utils: the ``triton_python_backend_utils`` module.
        model: the model's name.
        read: returns (rows transformed, column -> out-of-vocabulary values), cumulative.
        interval_s: seconds between sends.
    """

    FAMILIES = (
        ("tritonrec_transform_rows_total", "Rows transformed", "COUNTER"),
        ("tritonrec_transform_oov_total", "Categorical values encoded out of vocabulary, per column", "COUNTER"),
    )
    LABEL = "column"


class RequestLogMetrics(_TotalAndLabelled):
    """Sent and dropped request records of one model that logs (a request logger's counts).

    Args:
        pb_utils: the ``triton_python_backend_utils`` module.
        model: the model's name.
        read: returns (records sent, reason -> records dropped), cumulative
            (``RequestLogger.counts``).
        interval_s: seconds between sends.
    """

    FAMILIES = (
        ("tritonrec_feedback_sent_total", "Request records written to the Redis Stream", "COUNTER"),
        ("tritonrec_feedback_dropped_total", "Request records dropped (queue full, or Redis down or slow), per reason", "COUNTER"),
    )
    LABEL = "reason"
