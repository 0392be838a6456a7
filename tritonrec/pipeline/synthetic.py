"""Synthetic Criteo-shaped data: 13 continuous columns with missing values, 26 categorical columns
with Zipf frequencies and cardinalities from 10 to 1e6, and labels from a hidden model.

Deterministic for a given seed; generated in host memory with numpy.
"""

from __future__ import annotations

import dataclasses

import numpy as np

N_CONTINUOUS = 13
N_CATEGORICAL = 26
CONTINUOUS = [f"I{i}" for i in range(1, N_CONTINUOUS + 1)]
CATEGORICAL = [f"C{i}" for i in range(1, N_CATEGORICAL + 1)]
LABEL = "label"
HIDDEN = "hidden_probability"


@dataclasses.dataclass(frozen=True)
class CriteoShape:
    """Parameters of the synthetic data.

    Attributes:
        cardinalities: distinct values per categorical column (26), log-spaced 10..1e6 by default.
        zipf_alpha: exponent of the Zipf law of each categorical column's value frequencies.
        missing_rate: fraction of missing values (NaN) per continuous column (13).
        seed: seed of the hidden model and the id scrambling; rows come from ``sample``'s seed.
        effect_ranks: the hidden model gives the most frequent ``effect_ranks`` values of each
            categorical column a random effect on the click logit; rarer values have none.
    """

    cardinalities: tuple[int, ...] = tuple(int(round(c)) for c in np.logspace(1, 6, N_CATEGORICAL))
    zipf_alpha: float = 1.05
    missing_rate: tuple[float, ...] = tuple(np.linspace(0.02, 0.45, N_CONTINUOUS).round(3))
    seed: int = 2026
    effect_ranks: int = 100

    def __post_init__(self) -> None:
        if len(self.cardinalities) != N_CATEGORICAL:
            raise ValueError(f"cardinalities: expected {N_CATEGORICAL} values, got {len(self.cardinalities)}")
        if len(self.missing_rate) != N_CONTINUOUS:
            raise ValueError(f"missing_rate: expected {N_CONTINUOUS} values, got {len(self.missing_rate)}")


class CriteoGenerator:
    """Draws rows of Criteo-shaped data with labels from a fixed hidden logistic model."""

    def __init__(self, shape: CriteoShape | None = None) -> None:
        self.shape = shape or CriteoShape()
        rng = np.random.default_rng(self.shape.seed)
        self._cdfs = []
        for card in self.shape.cardinalities:
            weights = np.arange(1, card + 1, dtype=np.float64) ** -self.shape.zipf_alpha
            cdf = np.cumsum(weights)
            self._cdfs.append(cdf / cdf[-1])
        # Raw ids look hashed: rank r of column j becomes a scrambled 62-bit id.
        self._salts = rng.integers(1, 2**62, size=N_CATEGORICAL, dtype=np.int64)
        # Hidden model: dense weights, and a random effect per (column, rank) for ranks < 10k.
        self._dense_w = rng.normal(0, 0.6, size=N_CONTINUOUS)
        self._effects = [rng.normal(0, 0.5, size=min(card, self.shape.effect_ranks)) for card in self.shape.cardinalities]
        self._scales = rng.uniform(0.5, 3.0, size=N_CONTINUOUS)

    def _ids(self, j: int, ranks: np.ndarray) -> np.ndarray:
        mixed = (ranks.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        mixed ^= self._salts[j].astype(np.uint64)
        return (mixed >> np.uint64(2)).astype(np.int64)

    def sample(self, n: int, seed: int, hidden_probability: bool = False) -> dict[str, np.ndarray]:
        """``n`` rows as columns: I1..I13 float32 (NaN = missing), C1..C26 int64, label int64 (0/1),
        and with ``hidden_probability`` also ``HIDDEN`` float64 (n,): the hidden model's click
        probability, from which the label was drawn (the best any model can score)."""
        rng = np.random.default_rng(seed)
        columns: dict[str, np.ndarray] = {}
        logit = np.full(n, -1.2)
        for i, name in enumerate(CONTINUOUS):
            counts = np.floor(rng.lognormal(mean=1.0, sigma=1.4, size=n) * self._scales[i])
            counts -= (rng.random(n) < 0.03) * 3  # a few negative values, as in Criteo's I2
            missing = rng.random(n) < self.shape.missing_rate[i]
            # The hidden model sees what a learner sees: a missing value contributes nothing.
            logit += np.where(missing, 0.0, self._dense_w[i] * (np.log1p(np.maximum(counts, 0)) - 1.5) / 1.5)
            values = counts.astype(np.float32)
            values[missing] = np.nan
            columns[name] = values
        for j, name in enumerate(CATEGORICAL):
            ranks = np.searchsorted(self._cdfs[j], rng.random(n), side="right")
            ranks = np.minimum(ranks, len(self._cdfs[j]) - 1)
            effects = self._effects[j]
            logit += np.where(ranks < effects.size, effects[np.minimum(ranks, effects.size - 1)], 0.0)
            columns[name] = self._ids(j, ranks)
        probability = 1.0 / (1.0 + np.exp(-logit))
        columns[LABEL] = (rng.random(n) < probability).astype(np.int64)
        if hidden_probability:
            columns[HIDDEN] = probability
        return columns
