"""Compare transform outputs with NVTabular's: integers equal, floats within a relative tolerance."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

FLOAT_RTOL = 1e-6
"""Relative tolerance for float outputs (NaN must match NaN, inf must match inf)."""


@dataclasses.dataclass
class ParityReport:
    """Result of :func:`compare`: ``mismatches`` maps a column to its number of differing rows."""

    rows: int
    columns: int
    mismatches: dict[str, int]
    max_relative_error: float

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> str:
        verdict = "exact" if self.ok else f"MISMATCH in {len(self.mismatches)} column(s): {dict(list(self.mismatches.items())[:5])}"
        return f"{self.rows} rows x {self.columns} columns: {verdict} (max relative float error {self.max_relative_error:.2e})"


def compare(expected: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], rtol: float = FLOAT_RTOL) -> ParityReport:
    """Compares two column -> (n,) array mappings column by column.

    Integer columns must be equal and of the same dtype kind; float columns equal within ``rtol``
    relative error (absolute 1e-30 near zero), NaN where NaN, same infinities. A column missing
    from ``got`` counts as all rows mismatching.
    """
    mismatches: dict[str, int] = {}
    worst = 0.0
    rows = 0
    for name, want in expected.items():
        want = np.asarray(want).reshape(-1)
        rows = max(rows, want.shape[0])
        if name not in got:
            mismatches[name] = want.shape[0]
            continue
        have = np.asarray(got[name]).reshape(-1)
        if have.shape != want.shape or (want.dtype.kind in "iub") != (have.dtype.kind in "iub"):
            mismatches[name] = want.shape[0]
            continue
        if want.dtype.kind in "iub":
            bad = int(np.count_nonzero(want != have))
        else:
            w, h = want.astype(np.float64), have.astype(np.float64)
            both_nan = np.isnan(w) & np.isnan(h)
            same_inf = np.isinf(w) & (w == h)
            finite = np.isfinite(w) & np.isfinite(h)
            with np.errstate(invalid="ignore", divide="ignore"):
                rel = np.where(finite, np.abs(w - h) / np.maximum(np.abs(w), 1e-30), 0.0)
            if rel.size:
                worst = max(worst, float(rel.max()))
            bad = int(np.count_nonzero(~(both_nan | same_inf | (finite & (rel <= rtol)))))
        if bad:
            mismatches[name] = bad
    return ParityReport(rows, len(expected), mismatches, worst)
