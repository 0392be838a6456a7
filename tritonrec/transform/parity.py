"""Compare transform outputs with NVTabular's: integers equal, floats within a relative tolerance."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from tritonrec.transform.plan import ListColumn, TransformPlan

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


def _flat(columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A list column as two compared columns, ``<name>[values]`` and ``<name>[lengths]``."""
    out = {}
    for name, column in columns.items():
        if isinstance(column, ListColumn):
            out[f"{name}[values]"], out[f"{name}[lengths]"] = np.asarray(column.values), np.asarray(column.lengths)
        else:
            out[name] = np.asarray(column)
    return out


def check_parity(workflow: Any, frame: Any, plan: TransformPlan | None = None, rtol: float = FLOAT_RTOL) -> ParityReport:
    """The plan against NVTabular's own transform of the same rows: a fitted ``nvtabular.Workflow``
    (or its saved directory) and a pandas DataFrame of raw rows (list columns: a list or array per
    row; other columns are ignored). ``plan``: the compiled workflow (default: compiled here).
    Needs nvtabular. List columns are compared as their values and row lengths."""
    from tritonrec.transform.compile import compile_workflow, import_nvtabular  # noqa: PLC0415

    nvtabular = import_nvtabular()  # says what to install when it is missing
    from merlin.io import Dataset  # noqa: PLC0415 - installed with nvtabular

    if not hasattr(workflow, "transform"):
        workflow = nvtabular.Workflow.load(str(workflow))
    plan = plan or compile_workflow(workflow)
    inputs = frame[[c.name for c in plan.input_schema]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # merlin's dtype-mapping and dask notices
        want = workflow.transform(Dataset(inputs, cpu=True)).to_ddf().compute()
    expected = {c.name: (ListColumn.from_rows(want[c.name].to_numpy(), c.dtype) if c.is_list else want[c.name].to_numpy())
                for c in plan.output_schema}
    got = plan.transform({c.name: (ListColumn.from_rows(inputs[c.name].to_numpy(), c.dtype) if c.is_list else inputs[c.name].to_numpy())
                          for c in plan.input_schema})
    return dataclasses.replace(compare(_flat(expected), _flat(got), rtol), rows=len(inputs))  # rows, not a list's values
