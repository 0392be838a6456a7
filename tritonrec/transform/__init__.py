"""Compile a fitted NVTabular workflow into a plan that runs with numpy (or cupy) alone."""

from tritonrec.transform.compile import UnsupportedOpError, compile_workflow
from tritonrec.transform.plan import ColumnSpec, PlanLoadError, TransformPlan

__all__ = ["ColumnSpec", "PlanLoadError", "TransformPlan", "UnsupportedOpError", "compile_workflow"]
