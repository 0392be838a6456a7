"""The feedback loop's consuming side: delayed labels, the monitor (join, sink) and its drift statistics.

- :mod:`~tritonrec.monitoring.labels`: :func:`report_labels`, what ``tritonrec feedback FILE`` runs.
- :mod:`~tritonrec.monitoring.monitor`: ``tritonrec monitor``, the streams joined into the sink.
- :mod:`~tritonrec.monitoring.drift`: :func:`psi` and :func:`js_distance`.
- :mod:`~tritonrec.monitoring.profile`: the training profile (bins, top values, OOV rates, validation quality), sealed.
- :mod:`~tritonrec.monitoring.quality`: AUC, log loss and calibration over a rolling window.
- :mod:`~tritonrec.monitoring.watch`: drift and quality per window against the profile, alerts that act.
- :mod:`~tritonrec.monitoring.alerts`: alerts over consecutive windows, the on-alert command, the audit log.
- The request records themselves are written by :mod:`tritonrec.serving.request_log`.
"""

from tritonrec.monitoring.drift import js_distance, psi
from tritonrec.monitoring.labels import LABEL_STREAM, LabelError, report_labels

__all__ = ["LABEL_STREAM", "LabelError", "js_distance", "psi", "report_labels"]
