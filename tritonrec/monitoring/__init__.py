"""The feedback loop's consuming side: delayed labels now; the monitor (join, sink, drift, AUC) next.

- :mod:`~tritonrec.monitoring.labels`: :func:`report_labels`, what ``tritonrec feedback FILE`` runs.
- The request records themselves are written by :mod:`tritonrec.serving.request_log`.
"""

from tritonrec.monitoring.labels import LABEL_STREAM, LabelError, report_labels

__all__ = ["LABEL_STREAM", "LabelError", "report_labels"]
