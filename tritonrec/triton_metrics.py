"""tritonrec's custom metrics on Triton's metrics endpoint, through ``pb_utils.MetricFamily``.

Families (Prometheus names, as scraped from ``/metrics``):

- ``tritonrec_embedding_lookups_total{model,table,tier}``: keys looked up in a tier (counter).
- ``tritonrec_embedding_misses_total{model,table,tier}``: keys a tier did not hold (counter).
- ``tritonrec_embedding_lookup_duration_us{model}``: time of one ``execute``'s lookup, in
  microseconds (histogram).
- ``tritonrec_transform_rows_total{model}``: rows transformed (counter).
- ``tritonrec_transform_oov_total{model,column}``: values encoded out of vocabulary (counter).

The backends pass their ``pb_utils`` module in; nothing here imports Triton.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

LOOKUP_DURATION_BUCKETS_US = [10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0, 100000.0]


class LookupMetrics:
    """Counters and the duration histogram of one embedding_lookup model."""

    def __init__(self, pb_utils: Any, model: str, counters: Sequence[tuple[str, str]]) -> None:
        family = pb_utils.MetricFamily
        self._families = [
            family("tritonrec_embedding_lookups_total", "Embedding keys looked up, per table and tier", family.COUNTER),
            family("tritonrec_embedding_misses_total", "Embedding keys a tier did not hold, per table and tier", family.COUNTER),
            family("tritonrec_embedding_lookup_duration_us", "Duration of one batched embedding lookup, in microseconds", family.HISTOGRAM),
        ]
        lookups, misses, duration = self._families
        self._lookups = {key: lookups.Metric(labels={"model": model, "table": key[0], "tier": key[1]}) for key in counters}
        self._misses = {key: misses.Metric(labels={"model": model, "table": key[0], "tier": key[1]}) for key in counters}
        self._duration = duration.Metric(labels={"model": model}, buckets=LOOKUP_DURATION_BUCKETS_US)

    def record(self, deltas: Mapping[tuple[str, str], tuple[int, int]], duration_us: float) -> None:
        """Adds one execute's (table, tier) -> (lookups, misses) and its duration; zeros are skipped."""
        for key, (lookups, misses) in deltas.items():
            if lookups:
                self._lookups[key].increment(lookups)
            if misses:
                self._misses[key].increment(misses)
        self._duration.observe(duration_us)


class TransformMetrics:
    """Row and out-of-vocabulary counters of one nvtabular_transform model."""

    def __init__(self, pb_utils: Any, model: str, columns: Sequence[str]) -> None:
        family = pb_utils.MetricFamily
        self._families = [
            family("tritonrec_transform_rows_total", "Rows transformed", family.COUNTER),
            family("tritonrec_transform_oov_total", "Categorical values encoded out of vocabulary, per column", family.COUNTER),
        ]
        rows, oov = self._families
        self._rows = rows.Metric(labels={"model": model})
        self._oov = {c: oov.Metric(labels={"model": model, "column": c}) for c in columns}
        self._last_rows = 0
        self._last_oov = dict.fromkeys(columns, 0)

    def record(self, rows_total: int, oov_total: Mapping[str, int]) -> None:
        """Brings the counters up to the model's cumulative totals."""
        if rows_total != self._last_rows:
            self._rows.increment(rows_total - self._last_rows)
            self._last_rows = rows_total
        for column, total in oov_total.items():
            if total != self._last_oov[column]:
                self._oov[column].increment(total - self._last_oov[column])
                self._last_oov[column] = total
