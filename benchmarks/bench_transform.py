"""In-process transform: the compiled plan against nvtabular's own Workflow.transform.

Batch 1, 64, 1024, 16384 of held-out Criteo-shaped rows; rows/s, p50 and p99 per call. Outputs are
checked against Workflow.transform in the same run. Target: >= 100x Workflow.transform at batch 1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fitted_criteo, header, time_calls, write_section  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-rows", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timing per configuration")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)

    from tritonrec.pipeline.workflow import nvtabular_transform
    from tritonrec.transform import compile_workflow
    from tritonrec.transform.parity import compare

    work = Path(tempfile.mkdtemp(prefix="bench-transform-"))
    workflow, _, held = fitted_criteo(work, train_rows=args.train_rows)
    plan = compile_workflow(workflow)
    rows = []
    checks = []
    for batch in (1, 64, 1024, 16384):
        idx = np.arange(batch) % len(held["I1"])
        columns = {c: v[idx] for c, v in held.items()}
        packed = {d: np.ascontiguousarray(np.stack([columns[c] for c in names], axis=1)) for d, names in plan.packed_inputs.items()}
        expected = nvtabular_transform(workflow, columns)
        got = plan.transform(columns)
        unpacked = plan.transform_packed(packed)
        unpacked = {n: unpacked[d][:, j] for d, names in plan.packed_outputs.items() for j, n in enumerate(names)}
        checks.append(compare(expected, got).ok and compare(expected, unpacked).ok)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nvt = time_calls(lambda: workflow.transform(_frame(columns)), 5, args.seconds / 2)
        plan_cols = time_calls(lambda: plan.transform(columns), 20, args.seconds)
        plan_packed = time_calls(lambda: plan.transform_packed(packed), 20, args.seconds)
        for label, times in (("nvtabular Workflow.transform", nvt), ("plan, per-column", plan_cols), ("plan, packed", plan_packed)):
            rows.append((label, batch, batch / times.mean(), np.percentile(times, 50) * 1e3, np.percentile(times, 99) * 1e3, np.median(nvt) / np.median(times)))

    table = ["| implementation | batch | rows/s | p50 ms | p99 ms | speed-up vs nvtabular (p50) |", "|---|---:|---:|---:|---:|---:|"]
    for label, batch, rate, p50, p99, speedup in rows:
        table.append(f"| {label} | {batch} | {rate:,.0f} | {p50:.4f} | {p99:.4f} | {speedup:,.1f}x |")
    speedup_b1 = min(r[5] for r in rows if r[1] == 1 and r[0] != "nvtabular Workflow.transform")
    verdict = [
        f"- Outputs equal to Workflow.transform at every batch size (integers equal, floats within 1e-6): {'yes' if all(checks) else 'NO'}",
        f"- Target >= 100x Workflow.transform at batch 1: {speedup_b1:,.0f}x, {'met' if speedup_b1 >= 100 else 'MISSED'}",
    ]
    body = "\n".join([header("Transform in process: plan vs nvtabular.Workflow.transform"),
                      f"Criteo-shaped workflow (13 continuous FillMissing>>Clip>>LogOp>>Normalize, 26 Categorify, Zipf ids, cardinalities 10..1e6), fitted on {args.train_rows:,} rows; {plan}.\n",
                      *table, "", *verdict])
    print(body)
    if not args.no_write:
        write_section("transform-in-process", body)
    return 0 if all(checks) else 1


def _frame(columns):
    import pandas as pd

    return pd.DataFrame(columns)


if __name__ == "__main__":
    sys.exit(main())
