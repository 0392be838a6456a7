"""Compile a fitted NVTabular workflow into a plan that runs with numpy (or cupy) alone."""

from tritonrec.transform.compile import UnsupportedOpError, compile_workflow
from tritonrec.transform.parity import ParityReport, check_parity
from tritonrec.transform.plan import ColumnSpec, ListColumn, PlanLoadError, TransformPlan

__all__ = ["ColumnSpec", "ListColumn", "ParityReport", "PlanLoadError", "TransformPlan", "UnsupportedOpError", "check_parity", "compile_workflow"]
