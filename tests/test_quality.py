"""Quality on delayed labels against hand computations: AUC (ties, perfect, reversed), log loss
(clipped), calibration, and the rolling window per model version; undefined metrics are None,
bad inputs named."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tritonrec.monitoring.quality import RollingQuality, auc, log_loss


def test_auc_equals_the_hand_computation():
    # positives 0.35 and 0.8, negatives 0.1 and 0.4: of the 4 pairs, 3 have the positive above
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(3 / 4)
    assert auc([0, 1, 1], [0.5, 0.5, 0.9]) == pytest.approx((0.5 + 1) / 2)  # a tie counts one half
    assert auc([0, 0, 1], [0.1, 0.2, 0.3]) == 1.0 and auc([1, 1, 0], [0.1, 0.2, 0.3]) == 0.0
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 2000)
    scores = rng.random(2000)
    pairs = (scores[labels == 1][:, None] > scores[labels == 0][None, :]).mean()  # every pair, by brute force
    assert auc(labels, scores) == pytest.approx(pairs, abs=1e-12)


def test_log_loss_equals_the_hand_computation():
    assert log_loss([1, 0], [0.8, 0.3]) == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2, rel=1e-12)
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-15), rel=1e-9)  # clipped, finite


@pytest.mark.parametrize("call, words", [
    (lambda: auc([0, 0], [0.1, 0.2]), "2 negative labels: the AUC needs both"),
    (lambda: auc([0, 2], [0.1, 0.2]), "labels: 2.0 is not a label"),
    (lambda: auc([0, 1], [0.1]), "2 labels and 1 predictions"),
    (lambda: auc([0, 1], [0.1, np.nan]), "predictions: expected finite numbers"),
    (lambda: log_loss([0, 1], [0.1, 1.2]), r"expected probabilities in \[0, 1\]"),
    (lambda: log_loss([], []), "no rows"),
])
def test_bad_inputs_are_named(call, words):
    with pytest.raises(ValueError, match=words):
        call()


def test_the_rolling_window_keeps_the_last_rows_of_each_version():
    quality = RollingQuality(rows=4, min_rows=3)
    key, other = ("ranker", 1), ("ranker", 2)
    quality.add(key, [1, 1], [0.9, 0.8])
    assert quality.compute(key) is None  # fewer than min_rows
    quality.add(key, [1], [0.7])
    one_class = quality.compute(key)
    assert one_class["auc"] is None and one_class["rows"] == 3 and one_class["calibration"] == pytest.approx(0.8)
    quality.add(key, [0, 0, 1], [0.2, 0.6, 0.1])  # 6 rows added: the window holds the last 4
    got = quality.compute(key)
    window_y, window_p = [1, 0, 0, 1], [0.7, 0.2, 0.6, 0.1]
    assert got["rows"] == 4 and got["auc"] == pytest.approx(auc(window_y, window_p)) == pytest.approx(0.5)
    assert got["log_loss"] == pytest.approx(log_loss(window_y, window_p))
    assert got["mean_label"] == 0.5 and got["mean_prediction"] == pytest.approx(0.4) and got["calibration"] == pytest.approx(0.8)
    quality.add(other, [0, 0, 0], [0.1, 0.2, 0.3])
    assert quality.compute(other)["calibration"] is None and quality.keys() == [key, other]  # no positive: undefined
    quality.add(key, np.arange(10) % 2, np.linspace(0, 1, 10))  # more than the window at once: its last 4
    assert quality.compute(key)["auc"] == pytest.approx(auc([0, 1, 0, 1], np.linspace(0, 1, 10)[-4:]))
    with pytest.raises(ValueError, match="expected 1 <= min_rows <= rows"):
        RollingQuality(rows=5, min_rows=6)
