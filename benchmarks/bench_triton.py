"""The transform through tritonserver, measured with perf_analyzer, against the Triton floor.

Both layouts (per-column: 39 input and 39 output tensors; packed: 2 and 2), batch 1, 64, 1024 at
concurrency 1 and 2, over gRPC on loopback; real held-out rows as perf_analyzer input data. The
floor, measured in the same run: a no-op Python model with the same input and output tensors.
Before and after perf_analyzer, a sample of served outputs is checked against Workflow.transform
(perf_analyzer and Triton's success counter both count failing responses as successes).

Targets (2-core CPU machine): p99 within 1.5x of the floor in both layouts; packed p99 <= 1 ms at
batch 1 and >= 500k rows/s at batch 1024.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fitted_criteo, header, perf_point, write_input_data, write_section  # noqa: E402

HERE = Path(__file__).resolve().parent


def _input_data(model, columns: dict[str, np.ndarray], rows: int, path: Path) -> None:
    from tritonrec.serving.client import pack_request

    write_input_data(pack_request(model, {c: v[:rows] for c, v in columns.items()}), rows, path)


def _perf(server, model: str, batch: int, concurrency: int, data: Path, out: Path, seconds: float) -> dict[str, float]:
    return perf_point(server.grpc_url, model, batch, concurrency, data, out, seconds)


def _check_sample(client, models, columns, expected) -> bool:
    from tritonrec.serving.client import infer
    from tritonrec.transform.parity import compare
    from tritonrec.serving.client import pack_request, unpack_response

    ok = True
    for name, model in models.items():
        for start, n in ((0, 1), (1, 64), (100, 1024)):
            batch = {c: v[start : start + n] for c, v in columns.items()}
            want = {c: v[start : start + n] for c, v in expected.items()}
            got = unpack_response(model, infer(client, name, pack_request(model, batch), [s.name for s in model.outputs]))
            ok &= compare(want, got).ok
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=2.0, help="perf_analyzer measurement window")
    parser.add_argument("--batches", default="1,64,1024")
    parser.add_argument("--concurrency", default="1,2")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    import tritonclient.grpc as grpcclient

    from tritonrec.export import export_transform, render_template, tensor_block
    from tritonrec.pipeline.workflow import nvtabular_transform
    from tritonrec.serving.server import TritonServer
    from tritonrec.transform import compile_workflow
    from tritonrec.serving.transform_model import TransformModel

    work = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    workflow, _, held = fitted_criteo(work, train_rows=args.train_rows)
    plan = compile_workflow(workflow)
    repo = work / "repo"
    models = {}
    for layout, name in (("per-column", "transform"), ("packed", "transform_packed")):
        export_transform(plan, repo, name, layout=layout)
        models[name] = TransformModel(plan, layout)
        floor = repo / f"floor_{name}"
        (floor / "1").mkdir(parents=True)
        shutil.copy(HERE / "floor_model.py", floor / "1" / "model.py")
        config = render_template(
            "nvtabular_transform", name=f"floor_{name}", max_batch_size=16384,
            inputs=tensor_block("input", models[name].inputs), outputs=tensor_block("output", models[name].outputs),
            instance_count=1, batching="dynamic_batching { max_queue_delay_microseconds: 0 }", layout=layout, output_layout=layout, fingerprint=plan.fingerprint,
            instance_kind="KIND_CPU", force_cpu_inputs="yes", packed_inputs="", null_string="", input_dtypes="{}", cast_float64="false",
            request_log="",
        ).replace('backend: "nvtabular_transform"', 'backend: "python"')
        (floor / "config.pbtxt").write_text(config)
        _input_data(models[name], held, 2048, work / f"{name}.json")
    expected = nvtabular_transform(workflow, {c: v[:2048] for c, v in held.items()})

    batches = [int(b) for b in args.batches.split(",")]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    results = []
    with TritonServer(repo, log_path=work / "tritonserver.log") as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        checked_before = _check_sample(client, models, held, expected)
        for name in models:
            for batch in batches:
                for concurrency in concurrencies:
                    measured = {}
                    for kind, model in (("tritonrec", name), ("floor", f"floor_{name}")):
                        measured[kind] = _perf(server, model, batch, concurrency, work / f"{name}.json", work / "perf.csv", args.seconds)
                    results.append((models[name].layout, batch, concurrency, measured))
                    m = measured["tritonrec"]
                    print(f"{models[name].layout:>10} b{batch:<5} c{concurrency}: {m['infer_s']:>12,.0f} rows/s p50 {m['p50_ms']:.3f} p99 {m['p99_ms']:.3f} ms (floor p99 {measured['floor']['p99_ms']:.3f})", flush=True)
        checked_after = _check_sample(client, models, held, expected)

    table = [
        "| layout | batch | concurrency | requests/s | infer/s (rows/s) | p50 ms | p99 ms | floor rows/s | floor p50 ms | floor p99 ms | p99 / floor p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    worst_ratio = {"per-column": 0.0, "packed": 0.0}
    for layout, batch, concurrency, m in results:
        t, f = m["tritonrec"], m["floor"]
        ratio = t["p99_ms"] / f["p99_ms"]
        worst_ratio[layout] = max(worst_ratio[layout], ratio)
        table.append(
            f"| {layout} | {batch} | {concurrency} | {t['infer_s'] / batch:,.0f} | {t['infer_s']:,.0f} | {t['p50_ms']:.3f} | {t['p99_ms']:.3f} | "
            f"{f['infer_s']:,.0f} | {f['p50_ms']:.3f} | {f['p99_ms']:.3f} | {ratio:.2f} |"
        )
    for layout, ratio in worst_ratio.items():
        verdicts.append(f"- {layout}: p99 within 1.5x of the floor at every point: worst {ratio:.2f}x, {'met' if ratio <= 1.5 else 'MISSED'}")
    packed = {(b, c): m["tritonrec"] for lay, b, c, m in results if lay == "packed"}
    if (1, 1) in packed:
        p99 = packed[(1, 1)]["p99_ms"]
        verdicts.append(f"- packed p99 <= 1 ms at batch 1 (concurrency 1): {p99:.3f} ms, {'met' if p99 <= 1.0 else 'MISSED'}")
    for (b, c), m in sorted(packed.items()):
        if b == 1024:  # perf_analyzer's infer/s counts rows
            verdicts.append(f"- packed >= 500k rows/s at batch 1024, concurrency {c}: {m['infer_s']:,.0f} rows/s, {'met' if m['infer_s'] >= 500_000 else 'MISSED'}")
    verdicts.append(f"- Served outputs equal Workflow.transform on a sample before and after the runs: {'yes' if checked_before and checked_after else 'NO'}")
    body = "\n".join([
        header("Transform through tritonserver (perf_analyzer) vs the Triton floor"),
        "tritonserver 2.51 (nvidia-pytriton 0.7.0 wheel), one KIND_CPU instance per model, dynamic batching; perf_analyzer 2.44 over gRPC on loopback, "
        "client on the same cores; input data: 2048 held-out rows. Floor: a Python model with the same tensors returning zeros.\n",
        *table, "", *verdicts,
    ])
    print(body)
    if not args.no_write:
        write_section("transform-triton", body)
    return 0 if checked_before and checked_after else 1


if __name__ == "__main__":
    sys.exit(main())
