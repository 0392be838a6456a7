"""The transform plan with cupy on the GPU beside the same plan with numpy on the host, in process.

Two plans: the Criteo-shaped plan of ``bench_gpu_ensemble.py`` (13 continuous columns through
FillMissing, Clip, LogOp, Normalize; 26 Categorify columns of 300,000-key vocabularies, Zipf(1.05)
ids, 2% unseen) in the packed layout, and a plan of the other numeric ops (NormalizeMinMax,
Bucketize, HashBucket, HashedCross, TargetEncode) by columns. Rows/s of ``transform_packed`` /
``transform`` at each batch, and of ``TransformModel.execute`` (what the backend calls: request
checks, the plan, out-of-vocabulary counts) for the Criteo plan: numpy on host arrays (one thread, as one Triton instance runs it), cupy
on device arrays (inputs already on the GPU, as KIND_GPU instances get them; timed with a device
synchronise after each call). Outputs compared before timing (integers equal, floats within 1e-6).
Baseline: the numpy plan in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu_ensemble import build_plan, sample  # noqa: E402
from common import header, write_section  # noqa: E402


def ops_plan(rows: int, seed: int):
    """The numeric-op plan and (rows,) host input columns for it."""
    from tritonrec.transform._table import KeyTable
    from tritonrec.transform.ops import Bucketize, FillMissing, HashBucket, HashedCross, NormalizeMinMax, TargetEncode
    from tritonrec.transform.plan import ColumnSpec, PlanGroup, TransformPlan

    groups = [
        PlanGroup(["x", "y"], ["x", "y"], np.dtype(np.float32),
                  [FillMissing([0.5, 1.0]), NormalizeMinMax([-3.0, 2.0], [10.0, 0.0], False, np.float32)]),
        PlanGroup(["x"], ["bx"], np.dtype(np.float32), [Bucketize([[-1.0, 0.0, 2.5, 4.0, 8.0]])]),
        PlanGroup(["i", "j"], ["hi", "hj"], np.dtype(np.int64), [HashBucket([100_000, 1000])]),
        PlanGroup(["i", "j"], ["ixj"], np.dtype(np.int64), [HashedCross(1 << 20)]),
        PlanGroup(["j"], ["te"], np.dtype(np.int64), [TargetEncode(
            KeyTable.build(np.zeros(2000, dtype=np.int64), np.arange(-1000, 1000, dtype=np.int64), np.arange(2000, dtype=np.int64)),
            np.linspace(0.0, 1.0, 2000), [0.5], [0.25], np.int64, np.float32)]),
    ]
    inputs = [ColumnSpec("x", np.dtype(np.float32)), ColumnSpec("y", np.dtype(np.float32)),
              ColumnSpec("i", np.dtype(np.int64)), ColumnSpec("j", np.dtype(np.int64))]
    outputs = [ColumnSpec("x", np.dtype(np.float32)), ColumnSpec("y", np.dtype(np.float32))] + [
        ColumnSpec(n, np.dtype(np.int32)) for n in ("bx", "hi", "hj", "ixj")] + [ColumnSpec("te", np.dtype(np.float32))]
    rng = np.random.default_rng(seed)
    columns = {
        "x": np.where(rng.random(rows) < 0.1, np.nan, rng.normal(0, 3, rows)).astype(np.float32),
        "y": rng.normal(0, 3, rows).astype(np.float32),
        "i": rng.integers(-(2**62), 2**62, rows),
        "j": rng.integers(-1200, 1200, rows),
    }
    return TransformPlan(inputs, outputs, groups, "23.08.00"), columns


def _rename(out: dict) -> dict:
    """Packed outputs by dtype name, whether keyed ``float32`` (the plan) or ``OUTPUT_FP32`` (the model)."""
    names = {"OUTPUT_FP32": "float32", "OUTPUT_INT64": "int64"}
    return {names.get(k, k): v for k, v in out.items()}


def rate(call, sync, seconds: float) -> float:
    """Calls per second of ``call`` (after two warm-up calls), each followed by ``sync``."""
    for _ in range(2):
        call()
        sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        call()
        sync()
        n += 1
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="16384,131072")
    parser.add_argument("--rows", type=int, default=300_000, help="vocabulary keys per Criteo table")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per cell")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    import cupy

    from tritonrec.serving.transform_model import TransformModel, packed_input_name

    batches = [int(b) for b in args.batches.split(",")]
    gpu_plans: dict = {}  # by plan object (kept alive, so never confused)
    models: dict = {}
    criteo, vocab = build_plan(args.rows)
    table = ["| plan | batch | numpy rows/s | cupy rows/s | cupy / numpy |", "|---|---:|---:|---:|---:|"]
    checks = []
    for batch in batches:
        raw = sample(vocab, batch, seed=batch)
        packed = {dtype: np.stack([raw[c] for c in names], axis=1) for dtype, names in criteo.packed_inputs.items()}
        ops, columns = ops_plan(batch, seed=batch)

        def served(p, t):  # the transform model as the backend calls it: checks, the plan, OOV counts
            return models[p].execute([{packed_input_name(d): v for d, v in t.items()}])[0]

        cases = [
            ("criteo (packed)", criteo, lambda p, t: p.transform_packed(t), packed),
            ("criteo, TransformModel.execute", criteo, served, packed),
            ("numeric ops (columns)", ops, lambda p, t: p.transform(t), columns),
        ]
        for name, plan, run, host in cases:
            if plan not in gpu_plans:
                gpu_plans[plan] = plan.to(cupy)
            gpu_plan, device = gpu_plans[plan], {k: cupy.asarray(v) for k, v in host.items()}
            for p in (plan, gpu_plan):
                models.setdefault(p, TransformModel(p, "packed", 0, "packed"))
            expected, got = run(plan, host), run(gpu_plan, device)
            expected, got = _rename(expected), _rename(got)
            for key, want in expected.items():
                have = cupy.asnumpy(got[key])
                same = np.array_equal(have, want) if want.dtype.kind in "iu" else np.allclose(have, want, rtol=1e-6, atol=1e-6, equal_nan=True)
                checks.append(bool(same))
                if not same:
                    print(f"MISMATCH {name} b{batch} {key}", flush=True)
            host_rate = rate(lambda: run(plan, host), lambda: None, args.seconds) * batch
            gpu_rate = rate(lambda: run(gpu_plan, device), cupy.cuda.get_current_stream().synchronize, args.seconds) * batch
            table.append(f"| {name} | {batch:,} | {host_rate:,.0f} | {gpu_rate:,.0f} | {gpu_rate / host_rate:.1f}x |")
            print(table[-1], flush=True)
    body = "\n".join([
        header("The transform plan with cupy (GPU) beside numpy (host)"),
        "In process, one thread on the host; cupy inputs already on the device, a device synchronise after each call. "
        f"Criteo plan: 26 Categorify tables of {args.rows:,} keys, Zipf(1.05) ids; numeric ops: NormalizeMinMax, Bucketize, "
        "HashBucket, HashedCross, TargetEncode. Baseline: the numpy plan.\n",
        *table, "",
        f"- cupy outputs equal the numpy plan's (integers exactly, floats within 1e-6): {'yes' if all(checks) else 'NO'}",
    ])
    print(body)
    if not args.no_write:
        write_section("gpu-plan", body)
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
