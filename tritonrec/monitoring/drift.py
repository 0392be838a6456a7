"""Drift statistics of the monitor: the population stability index of a continuous column and the
Jensen-Shannon distance of a categorical one, against a reference (the training data's profile).

- :func:`psi`: bins at the reference's quantiles, PSI = sum over bins of
  (cur - ref) * ln(cur / ref), shares of each sample per bin. Usual reading: < 0.1 no drift,
  0.1-0.25 moderate, > 0.25 large.
- :func:`js_distance`: the Jensen-Shannon distance (the square root of the divergence, base 2, in
  [0, 1]) of two value -> count tables over the union of their values (scipy's ``jensenshannon``);
  :func:`js_noise`: what sampling alone gives a window of a given size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

PSI_EPSILON = 1e-4
"""The share a bin empty in either sample is given, so that PSI stays finite (as common tools do)."""


def quantile_edges(reference: Any, bins: int = 10) -> np.ndarray:
    """The inner bin edges of ``reference`` (1-D, NaN ignored): its quantiles at 1/bins .. (bins-1)/bins,
    repeated edges dropped (a column with many equal values gets fewer bins), float64 (<= bins - 1,).

    Raises:
        ValueError: ``bins`` < 2, or no finite value in ``reference``.
    """
    if int(bins) != bins or bins < 2:
        raise ValueError(f"bins {bins!r}: expected an integer >= 2")
    values = _finite(reference, "reference")
    return np.unique(np.quantile(values, np.arange(1, bins) / bins))


def bin_counts(values: Any, edges: np.ndarray) -> np.ndarray:
    """Counts of ``values`` (1-D, NaN ignored) in the bins that ``edges`` (the inner edges,
    ascending) delimit: bin 0 is x <= edges[0], bin i is edges[i-1] < x <= edges[i], the last is
    x > edges[-1]. int64 (len(edges) + 1,).

    Raises:
        ValueError: no finite value in ``values``.
    """
    finite = _finite(values, "current")
    return np.bincount(np.searchsorted(edges, finite, side="left"), minlength=len(edges) + 1)


def bin_shares(values: Any, edges: np.ndarray) -> np.ndarray:
    """:func:`bin_counts` as shares, float64 (len(edges) + 1,) summing to 1."""
    counts = bin_counts(values, edges)
    return counts / counts.sum()


def psi_of_shares(reference: np.ndarray, current: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """PSI of two share vectors over the same bins (each summing to 1); a share of 0 counts as ``epsilon``."""
    ref = np.maximum(np.asarray(reference, dtype=np.float64), epsilon)
    cur = np.maximum(np.asarray(current, dtype=np.float64), epsilon)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def psi(reference: Any, current: Any, bins: int = 10) -> float:
    """The population stability index of ``current`` against ``reference`` (1-D numbers; NaN is
    ignored: the missing rate is watched on its own).

    The bins are ``reference``'s quantiles (:func:`quantile_edges`: ``bins`` bins of about equal
    reference share, fewer where values repeat); a bin that either sample leaves empty counts as a
    share of :data:`PSI_EPSILON`. 0 when the two samples fall into the bins alike.

    Raises:
        ValueError: ``bins`` < 2, or either sample has no finite value.
    """
    edges = quantile_edges(reference, bins)
    return psi_against(edges, bin_counts(reference, edges), current)


def psi_against(edges: Any, reference_counts: Any, current: Any) -> float:
    """PSI of ``current`` (1-D, NaN ignored) against a reference kept as its inner bin ``edges``
    and the counts of its rows in those bins (a profile's), as :func:`psi` computes it.

    Raises:
        ValueError: no finite value in ``current``.
    """
    counts = np.asarray(reference_counts, dtype=np.float64)
    return psi_of_shares(counts / counts.sum(), bin_shares(current, np.asarray(edges, dtype=np.float64)))


def js_distance(ref_counts: Mapping[Any, float], cur_counts: Mapping[Any, float]) -> float:
    """The Jensen-Shannon distance (base 2, in [0, 1]) of two distributions given as value -> count
    over the union of their values (a value absent from one counts 0 there).

    Raises:
        ValueError: a negative or non-finite count, or a table with no count at all.
    """
    values = list(dict.fromkeys([*ref_counts, *cur_counts]))
    return js_of_counts(_counts(ref_counts, values, "ref_counts"), _counts(cur_counts, values, "cur_counts"))


def js_of_counts(reference: np.ndarray, current: np.ndarray) -> float:
    """:func:`js_distance` of two count vectors over the same values, in order (float64 (n,),
    finite, >= 0, each with a positive sum: checked by the caller, as :func:`js_distance` does)."""
    from scipy.spatial.distance import jensenshannon  # noqa: PLC0415

    return float(min(1.0, max(0.0, jensenshannon(reference, current, base=2))))


def js_noise(reference_counts: Any, rows: int, draws: int = 200, seed: int = 0) -> float:
    """The Jensen-Shannon distance that sampling alone gives a window of ``rows`` rows drawn from
    the reference's own distribution (``reference_counts``: float (k,) counts of its buckets): the
    mean over ``draws`` multinomial samples, seeded. A drift threshold near it flags unchanged
    traffic: the noise grows with the buckets and shrinks with the window (about sqrt((k - 1) /
    (8 rows ln 2)) for large windows).

    Raises:
        ValueError: ``rows`` < 1, or counts that are negative, not finite, or all zero.
    """
    if rows < 1:
        raise ValueError(f"rows {rows}: expected >= 1")
    counts = np.asarray(reference_counts, dtype=np.float64).reshape(-1)
    if not np.isfinite(counts).all() or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError("reference_counts: expected finite counts >= 0 with a positive sum")
    samples = np.random.default_rng(seed).multinomial(int(rows), counts / counts.sum(), size=draws)
    return float(np.mean([js_of_counts(counts, sample.astype(np.float64)) for sample in samples]))


def _finite(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    array = array[~np.isnan(array)]
    if array.size == 0:
        raise ValueError(f"{name}: no value that is not NaN")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: infinite values: expected finite numbers or NaN")
    return array


def _counts(table: Mapping[Any, float], values: list[Any], name: str) -> np.ndarray:
    counts = np.array([float(table.get(v, 0.0)) for v in values], dtype=np.float64)
    bad = [v for v, c in zip(values, counts) if not np.isfinite(c) or c < 0]
    if bad:
        raise ValueError(f"{name}: the count of {bad[0]!r} is {table[bad[0]]!r}: expected a finite number >= 0")
    if counts.sum() <= 0:
        raise ValueError(f"{name}: no counts: expected at least one value counted")
    return counts
