"""The model's quality on delayed labels: AUC, log loss and calibration, over the last N labelled
rows of each model version (issue 18).

- :func:`auc`: the area under the ROC curve as the Mann-Whitney statistic (ranks of the scores,
  ties sharing their average rank): the probability that a random positive scores above a random
  negative, ties counting one half.
- :func:`log_loss`: mean binary cross-entropy, predictions clipped to [eps, 1 - eps].
- :class:`RollingQuality`: a ring of the last ``rows`` (label, prediction) pairs per key (model,
  version); :meth:`RollingQuality.compute` gives None where the metrics are undefined (too few rows,
  or one class only), never a made-up number.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

LOG_LOSS_EPSILON = 1e-15
"""Predictions are clipped to [eps, 1 - eps] in the log loss, so a confident miss costs ~34.5, not infinity."""


def _pairs(labels: Any, predictions: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.asarray(predictions, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels and {p.size} predictions: expected one prediction per label")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"labels: {y[~np.isin(y, (0.0, 1.0))][0]!r} is not a label: expected 0 or 1")
    if not np.isfinite(p).all():
        raise ValueError("predictions: expected finite numbers")
    return y, p


def auc(labels: Any, predictions: Any) -> float:
    """ROC AUC of ``predictions`` (any scores) for 0/1 ``labels``, 1-D of equal length.

    Raises:
        ValueError: lengths differ, a label not 0/1, a non-finite prediction, or one class only
            (the AUC is undefined then).
    """
    from scipy.stats import rankdata  # noqa: PLC0415

    y, p = _pairs(labels, predictions)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError(f"{positives} positive and {negatives} negative labels: the AUC needs both positive and negative labels")
    ranks = rankdata(p)  # ties: their average rank
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def log_loss(labels: Any, predictions: Any, eps: float = LOG_LOSS_EPSILON) -> float:
    """Mean binary cross-entropy (natural log) of probabilities ``predictions`` for 0/1 ``labels``.

    Raises:
        ValueError: lengths differ, no rows, a label not 0/1, a prediction outside [0, 1] or not finite.
    """
    y, p = _pairs(labels, predictions)
    if y.size == 0:
        raise ValueError("no rows: the log loss needs at least one")
    if ((p < 0) | (p > 1)).any():
        raise ValueError("predictions: expected probabilities in [0, 1]")
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


class RollingQuality:
    """The last ``rows`` labelled rows of each key (e.g. ``(model, version)``), and their quality.

    Args:
        rows: how many of the newest labelled rows a key's metrics cover (the window, N).
        min_rows: fewest rows before :meth:`compute` gives metrics.
    """

    def __init__(self, rows: int = 10_000, min_rows: int = 100) -> None:
        if rows < 1 or min_rows < 1 or min_rows > rows:
            raise ValueError(f"rows {rows} / min_rows {min_rows}: expected 1 <= min_rows <= rows")
        self.rows, self.min_rows = rows, min_rows
        self._labels: dict[Hashable, np.ndarray] = {}
        self._predictions: dict[Hashable, np.ndarray] = {}
        self._filled: dict[Hashable, int] = {}  # rows held, up to `rows`
        self._next: dict[Hashable, int] = {}  # the ring's next slot

    def add(self, key: Hashable, labels: Any, predictions: Any) -> None:
        """Appends labelled rows of ``key`` (0/1 labels, probabilities), dropping the oldest past ``rows``."""
        y, p = _pairs(labels, predictions)
        if key not in self._labels:
            self._labels[key] = np.zeros(self.rows, dtype=np.float64)
            self._predictions[key] = np.zeros(self.rows, dtype=np.float64)
            self._filled[key], self._next[key] = 0, 0
        y, p = y[-self.rows:], p[-self.rows:]
        at = (self._next[key] + np.arange(y.size)) % self.rows
        self._labels[key][at] = y
        self._predictions[key][at] = p
        self._next[key] = int((self._next[key] + y.size) % self.rows)
        self._filled[key] = min(self.rows, self._filled[key] + y.size)

    def keys(self) -> list[Hashable]:
        return list(self._labels)

    def compute(self, key: Hashable) -> dict[str, float] | None:
        """``{"rows", "auc", "log_loss", "mean_prediction", "mean_label", "calibration"}`` over the
        key's window; None with fewer than ``min_rows`` rows; ``auc`` and ``calibration`` None
        where undefined (one class only; no positive label)."""
        n = self._filled.get(key, 0)
        if n < self.min_rows:
            return None
        y, p = self._labels[key][:n], self._predictions[key][:n]
        both = 0 < y.sum() < n
        mean_label, mean_prediction = float(y.mean()), float(p.mean())
        return {"rows": float(n), "auc": auc(y, p) if both else None, "log_loss": log_loss(y, p),
                "mean_prediction": mean_prediction, "mean_label": mean_label,
                "calibration": mean_prediction / mean_label if mean_label > 0 else None}
