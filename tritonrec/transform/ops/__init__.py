"""The ops a plan runs: one module per NVTabular op, each with its :class:`Step` (the arithmetic,
saved and loaded through ``params``/``arrays``/``from_saved``) and its compiler (how the step is
read from a fitted NVTabular op), registered in the two tables below.

To add an op: write ``ops/<op>.py`` with a ``Step`` subclass (a new ``kind``) and a compile
function, export them as ``STEPS`` and ``COMPILERS``, and list the module in ``_MODULES``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tritonrec.transform.ops import (
    bucketize, categorify, clip, fill_missing, hash_bucket, hashed_cross, list_slice, log, normalize, normalize_minmax,
    target_encoding,
)
from tritonrec.transform.ops.base import (
    NULL_CODE, OOV_CODE, BadValueError, Chain, ColumnStep, CompileOp, IncompatibleStepError, Step, UnsupportedOpError,
    row_of_each_value,
)
from tritonrec.transform.ops.bucketize import Bucketize
from tritonrec.transform.ops.categorify import Categorify
from tritonrec.transform.ops.clip import Clip
from tritonrec.transform.ops.fill_missing import FillMissing
from tritonrec.transform.ops.hash_bucket import HashBucket
from tritonrec.transform.ops.hashed_cross import HashedCross, IndexedHash, XorBuckets, cross_chain
from tritonrec.transform.ops.list_slice import ListSlice
from tritonrec.transform.ops.log import LogOp
from tritonrec.transform.ops.normalize import Normalize
from tritonrec.transform.ops.normalize_minmax import NormalizeMinMax
from tritonrec.transform.ops.target_encoding import TargetEncode

_MODULES = (fill_missing, clip, log, normalize, normalize_minmax, bucketize, hash_bucket, categorify, target_encoding,
            hashed_cross, list_slice)

STEPS: dict[str, type[Step]] = {cls.kind: cls for module in _MODULES for cls in module.STEPS}
"""Step kind (as saved in a plan's manifest) -> its class."""

COMPILERS: dict[str, CompileOp] = {name: fn for module in _MODULES for name, fn in getattr(module, "COMPILERS", {}).items()}
"""NVTabular op class name -> the compile function of one op on one column (HashedCross, which
combines columns, compiles through :func:`cross_chain`)."""

PASS_THROUGH = ("Rename", "ValueCount", "AddMetadata", "AddTags", "AddProperties", "TagAsItemID", "TagAsUserID",
                "TagAsItemFeatures", "TagAsUserFeatures")
"""NVTabular ops that change only a column's name or schema (tags, properties, value counts): the
chain goes on unchanged."""

LIST_OPS = ("Categorify", "ListSlice", "LogOp", *PASS_THROUGH)
"""Ops the plan runs on list (multi-hot) columns; others are refused there, naming the op."""


def step_from_manifest(kind: str, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Step:
    """Rebuilds a step saved with ``kind``, ``params()`` and ``arrays()``; KeyError for an unknown kind."""
    try:
        cls = STEPS[kind]
    except KeyError:
        raise KeyError(f"unknown step kind {kind!r}") from None
    return cls.from_saved(params, arrays)


def is_op(op: Any, name: str) -> bool:
    """True for NVTabular's own op class ``name`` (a subclass defined elsewhere is another op)."""
    return type(op).__name__ == name and _from_nvtabular(op)


def _from_nvtabular(op: Any) -> bool:
    return type(op).__module__.split(".")[0] == "nvtabular"


def op_name(op: Any) -> str:
    """The name users know an op by (``LambdaOp`` for merlin's ``UDF`` class, which it is)."""
    return "LambdaOp" if type(op).__name__ == "UDF" else type(op).__name__


def compile_op(op: Any, column: str, dtype: np.dtype, out_name: str, on_list: bool) -> ColumnStep:
    """The step of NVTabular ``op`` on one source ``column`` (see :data:`CompileOp`);
    UnsupportedOpError for an op the registry lacks, naming it."""
    name = op_name(op)
    if name == "LambdaOp":
        raise UnsupportedOpError(name, column, "it runs Python the plan cannot read: express it with NVTabular's built-in ops, or "
                                 "apply it before the request reaches the transform")
    compile_fn = COMPILERS.get(name)
    if compile_fn is None or not _from_nvtabular(op):
        raise UnsupportedOpError(name, column, f"this op is not supported by the plan compiler (supported: {', '.join(sorted(COMPILERS))}, "
                                 f"HashedCross, and the schema-only ops {', '.join(PASS_THROUGH)})")
    return compile_fn(op, column, dtype, out_name, on_list)


__all__ = [
    "COMPILERS", "LIST_OPS", "NULL_CODE", "OOV_CODE", "PASS_THROUGH", "STEPS", "BadValueError", "Bucketize", "Categorify", "Chain",
    "Clip", "ColumnStep", "FillMissing", "HashBucket", "HashedCross", "IncompatibleStepError", "IndexedHash", "ListSlice",
    "LogOp", "Normalize", "NormalizeMinMax", "Step", "TargetEncode", "UnsupportedOpError", "XorBuckets", "compile_op",
    "cross_chain", "is_op", "op_name", "row_of_each_value", "step_from_manifest",
]
