"""Drift statistics against hand computations: PSI over the reference's quantile bins (equal,
shifted, an empty bin, ties, NaN) and the Jensen-Shannon distance of two count tables; bad inputs
named."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tritonrec.monitoring import js_distance, psi
from tritonrec.monitoring.drift import PSI_EPSILON, bin_shares, quantile_edges


def test_psi_equals_the_hand_computation():
    reference = np.arange(100, dtype=np.float64)  # quartile edges 24.75, 49.5, 74.25: 25 values a bin
    current = np.r_[np.arange(10), np.arange(30, 40), np.arange(50, 60), np.arange(80, 100)].astype(np.float64)  # 10, 10, 10, 20
    np.testing.assert_allclose(quantile_edges(reference, 4), [24.75, 49.5, 74.25])
    np.testing.assert_allclose(bin_shares(current, quantile_edges(reference, 4)), [0.2, 0.2, 0.2, 0.4])
    by_hand = 3 * (0.2 - 0.25) * math.log(0.2 / 0.25) + (0.4 - 0.25) * math.log(0.4 / 0.25)
    assert psi(reference, current, bins=4) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(0.1039720, abs=1e-7)


def test_psi_of_a_sample_against_itself_is_zero_and_an_empty_bin_counts_epsilon():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=10_000)
    assert psi(reference, reference) == 0.0
    assert psi(reference, rng.normal(size=10_000)) < 0.01  # the same distribution
    assert psi(reference, rng.normal(1.0, 1.0, size=10_000)) > 0.25  # shifted by one standard deviation
    everything_low = np.full(40, -100.0)  # all in the first of 4 bins, the other three empty
    by_hand = (1 - 0.25) * math.log(1 / 0.25) + 3 * (PSI_EPSILON - 0.25) * math.log(PSI_EPSILON / 0.25)
    assert psi(np.arange(100.0), everything_low, bins=4) == pytest.approx(by_hand, rel=1e-12)


def test_values_on_an_edge_and_ties_and_nan():
    edges = np.array([1.0, 2.0])
    np.testing.assert_allclose(bin_shares([1.0, 1.5, 2.0, 2.5, np.nan], edges), [0.25, 0.5, 0.25])  # x <= edge: the lower bin
    ties = np.r_[np.zeros(70), np.ones(30)]
    edges = quantile_edges(ties, 10)
    assert list(edges) == sorted(set(edges)) and len(edges) < 9  # repeated quantiles dropped: fewer bins
    assert psi(ties, ties) == 0.0
    assert psi(np.r_[np.arange(100.0), [np.nan] * 50], np.arange(100.0)) == 0.0  # NaN ignored


@pytest.mark.parametrize("reference, current, bins, words", [
    (np.arange(10.0), np.arange(10.0), 1, "bins 1: expected an integer >= 2"),
    (np.arange(10.0), np.arange(10.0), 2.5, "bins 2.5"),
    ([np.nan, np.nan], np.arange(10.0), 10, "reference: no value that is not NaN"),
    (np.arange(10.0), [], 10, "current: no value that is not NaN"),
    (np.arange(10.0), [1.0, np.inf], 10, "current: infinite values"),
])
def test_bad_psi_inputs_are_named(reference, current, bins, words):
    with pytest.raises(ValueError, match=words):
        psi(reference, current, bins=bins)


def test_js_distance_equals_the_hand_computation():
    # p = (1/2, 1/2), q = (1, 0), m = (3/4, 1/4), base 2
    kl_pm = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_qm = 1.0 * math.log2(1.0 / 0.75)
    by_hand = math.sqrt(0.5 * (kl_pm + kl_qm))
    assert js_distance({"a": 1, "b": 1}, {"a": 7}) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(0.5579230, abs=1e-7)
    assert js_distance({"a": 2, "b": 6}, {"b": 3, "a": 1}) == 0.0  # the same shares, any order and scale
    assert js_distance({"a": 5}, {"b": 5}) == pytest.approx(1.0)  # nothing shared
    assert js_distance({1: 3, None: 1}, {1: 3, None: 1, 2: 0}) == 0.0  # any hashable value; a zero count changes nothing


@pytest.mark.parametrize("ref, cur, words", [
    ({"a": -1, "b": 2}, {"a": 1}, "ref_counts: the count of 'a' is -1"),
    ({"a": 1}, {"a": float("nan")}, "cur_counts: the count of 'a' is nan"),
    ({}, {"a": 1}, "ref_counts: no counts"),
    ({"a": 1}, {"a": 0}, "cur_counts: no counts"),
])
def test_bad_count_tables_are_named(ref, cur, words):
    with pytest.raises(ValueError, match=words):
        js_distance(ref, cur)


def test_js_noise_is_what_sampling_alone_gives_a_window():
    """js_noise: the mean JS distance of windows drawn from the reference itself, against repeated
    draws made here and the large-window approximation sqrt((k - 1) / (8 n ln 2))."""
    from tritonrec.monitoring.drift import js_noise

    counts = np.array([400, 200, 100, 50, 25, 25, 100], dtype=float)  # 7 buckets
    shares = counts / counts.sum()
    rng = np.random.default_rng(99)
    for rows in (100, 1_000, 10_000):
        drawn = np.mean([js_distance(dict(enumerate(counts)), dict(enumerate(rng.multinomial(rows, shares)))) for _ in range(400)])
        noise = js_noise(counts, rows)
        assert noise == pytest.approx(drawn, rel=0.1)
        assert noise == pytest.approx(math.sqrt(6 / (8 * rows * math.log(2))), rel=0.15)
    assert js_noise(counts, 100) > js_noise(counts, 10_000) and js_noise(counts, 1_000) == js_noise(counts, 1_000)  # seeded
    with pytest.raises(ValueError, match="rows 0: expected >= 1"):
        js_noise(counts, 0)
    with pytest.raises(ValueError, match="reference_counts: expected finite counts"):
        js_noise([0, 0], 10)
