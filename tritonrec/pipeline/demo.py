"""The README's main job: fit the Criteo-shaped workflow, compile it, serve it on the embedded
Triton in both layouts, check every served row against NVTabular, and print a latency table."""

from __future__ import annotations

import dataclasses
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from tritonrec.pipeline.synthetic import CATEGORICAL, CONTINUOUS, CriteoGenerator


@dataclasses.dataclass
class DemoOptions:
    workdir: str = "demo-output"
    train_rows: int = 200_000
    eval_rows: int = 20_000
    requests: int = 300
    keep_serving: bool = False
    seed: int = 0
    batch_sizes: tuple[int, ...] = (1, 64, 1024)


def _percentiles(latencies_s: list[float]) -> tuple[float, float]:
    ms = np.asarray(latencies_s) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def run_demo(options: DemoOptions) -> int:
    """Runs the demo; returns the process exit code (0 when every parity check passes)."""
    from tqdm import tqdm  # noqa: PLC0415

    import tritonclient.grpc as grpcclient  # noqa: PLC0415
    from tritonrec.client import infer  # noqa: PLC0415
    from tritonrec.export import export_transform  # noqa: PLC0415
    from tritonrec.pipeline.workflow import criteo_workflow, fit_workflow, nvtabular_transform  # noqa: PLC0415
    from tritonrec.serve import ServerError, TritonServer  # noqa: PLC0415
    from tritonrec.transform import compile_workflow  # noqa: PLC0415
    from tritonrec.transform.parity import compare  # noqa: PLC0415
    from tritonrec.transform.serving import TransformModel, pack_request, unpack_response  # noqa: PLC0415

    work = Path(options.workdir).resolve()
    repository = work / "model_repository"
    inputs = CONTINUOUS + CATEGORICAL
    ok = True
    progress = tqdm(total=6, desc="demo", unit="step", file=sys.stdout)

    progress.set_postfix_str("generating Criteo-shaped data")
    generator = CriteoGenerator()
    train = generator.sample(options.train_rows, seed=options.seed)
    held_out = generator.sample(options.eval_rows, seed=options.seed + 1)
    held_cols = {c: held_out[c] for c in inputs}
    progress.update()

    progress.set_postfix_str(f"fitting the NVTabular workflow on {options.train_rows:,} rows")
    workflow = fit_workflow(criteo_workflow(), train, inputs, work / "workflow")
    progress.update()

    progress.set_postfix_str("compiling the plan")
    plan = compile_workflow(work / "workflow")
    expected = nvtabular_transform(workflow, held_cols)
    in_process = compare(expected, plan.transform(held_cols))
    ok &= in_process.ok
    progress.update()

    progress.set_postfix_str("exporting the model repository")
    if repository.exists():
        shutil.rmtree(repository)
    models = {}
    for layout, name in (("per-column", "criteo_transform"), ("packed", "criteo_transform_packed")):
        export_transform(plan, repository, name, layout=layout)
        models[name] = TransformModel(plan, layout)
    progress.update()

    progress.set_postfix_str("starting tritonserver")
    try:
        server = TritonServer(repository, log_path=work / "tritonserver.log").start()
    except ServerError as e:
        progress.close()
        print(f"demo: {e}", file=sys.stderr)
        return 1
    progress.update()
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        progress.set_postfix_str("serving the held-out rows")
        served = {}
        for name, model in models.items():
            outputs = [s.name for s in model.outputs]
            parts = []
            for start in range(0, options.eval_rows, 1024):
                batch = {c: v[start : start + 1024] for c, v in held_cols.items()}
                parts.append(unpack_response(model, infer(client, name, pack_request(model, batch), outputs)))
            got = {c.name: np.concatenate([p[c.name] for p in parts]) for c in plan.output_schema}
            served[name] = compare(expected, got)
            ok &= served[name].ok
        progress.update()
        progress.close()

        rows = []
        for name, model in models.items():
            outputs = [s.name for s in model.outputs]
            for batch_size in options.batch_sizes:
                tensors = pack_request(model, {c: v[:batch_size] for c, v in held_cols.items()})
                for _ in range(10):
                    infer(client, name, tensors, outputs)
                latencies = []
                for _ in range(options.requests):
                    t0 = time.perf_counter()
                    infer(client, name, tensors, outputs)
                    latencies.append(time.perf_counter() - t0)
                p50, p99 = _percentiles(latencies)
                rows.append((model.layout, batch_size, p50, p99, batch_size * len(latencies) / sum(latencies)))

        print()
        print(f"Plan: {plan}")
        print(f"Parity, in process, plan vs nvtabular.Workflow.transform: {in_process.summary()}")
        for name, report in served.items():
            print(f"Parity, served by tritonserver ({models[name].layout}, model '{name}'): {report.summary()}")
        print()
        print(f"Latency through tritonserver (gRPC, Python client, concurrency 1, {options.requests} requests each):")
        print(f"| {'layout':<10} | {'batch':>5} | {'p50 ms':>7} | {'p99 ms':>7} | {'rows/s':>10} |")
        print(f"|{'-' * 12}|{'-' * 7}|{'-' * 9}|{'-' * 9}|{'-' * 12}|")
        for layout, batch_size, p50, p99, rate in rows:
            print(f"| {layout:<10} | {batch_size:>5} | {p50:>7.3f} | {p99:>7.3f} | {rate:>10,.0f} |")
        print()
        print(f"Model repository: {repository}")
        print(f"Server endpoints: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.metrics_url}")
        if options.keep_serving:
            print("Serving until Ctrl-C or SIGTERM.", flush=True)
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            while not stop.wait(0.5) and server.is_running():
                pass
    finally:
        server.stop()
    print("demo: all parity checks passed" if ok else "demo: PARITY FAILED", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1
