"""The embedding_lookup backend through tritonserver on a GPU machine: KIND_GPU instances (GPU cache
on the device, tensors kept there) against KIND_CPU instances of the same store, in the same run.

26 tables of 200k rows, dim 16 (Criteo-like), ids drawn from Zipf(1.05) per table; perf_analyzer
over gRPC with tensors in system shared memory at batch 1024 (concurrency 1 and 2) and 16384
(concurrency 2); input data: 4096 rows of ids. Served
embeddings are checked against the store's rows over HTTP before and after the runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, perf_point, write_input_data, write_section  # noqa: E402

TABLES = [f"C{j}" for j in range(1, 27)]


def _infer_http(http_url: str, model: str, ids: np.ndarray) -> np.ndarray:
    """One request over Triton's HTTP/JSON protocol (no client library needed)."""
    from tritonrec.serving.client import infer_http

    return infer_http(http_url, model, {"ids": ids}, ["embeddings"])["embeddings"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    from embedding_cache import build_store
    from tritonrec.export import render_template, tensor_block
    from tritonrec.serving.specs import TensorSpec
    from tritonrec.serving.server import TritonServer

    work = Path(tempfile.mkdtemp(prefix="bench-gpu-lookup-"))
    rng = np.random.default_rng(0)
    weights = {name: rng.normal(size=(args.rows, 16)).astype(np.float32) for name in TABLES}
    store = build_store(work / "store", {name: (np.arange(args.rows, dtype=np.int64), w) for name, w in weights.items()})
    cdf = np.cumsum(np.arange(1, args.rows + 1, dtype=np.float64) ** -1.05)
    cdf /= cdf[-1]
    ids = np.stack([rng.permutation(args.rows)[np.minimum(np.searchsorted(cdf, rng.random(4096)), args.rows - 1)] for _ in TABLES], axis=1).astype(np.int64)
    repo = work / "repo"
    models = {"lookup_gpu": ("KIND_GPU", "false"), "lookup_gpu_async": ("KIND_GPU", "true"), "lookup_cpu": ("KIND_CPU", "false")}
    for model, (kind, async_insert) in models.items():
        (repo / model / "1").mkdir(parents=True)
        (repo / model / "config.pbtxt").write_text(render_template(
            "embedding_lookup", name=model, max_batch_size=16384, n_tables=len(TABLES), dim=16, instance_count=1, multi_hot="",
            inputs=tensor_block("input", [TensorSpec("ids", np.dtype(np.int64), (len(TABLES),))]),
            max_queue_delay_us=0, store=str(store), tables=",".join(TABLES), missing_key_policy="store", host_budget_bytes="",
            threads="", fingerprint="", instance_kind=kind, gpu_cache_bytes=1 << 30 if kind == "KIND_GPU" else "",
            gpu_eviction="lru", gpu_admission="false", gpu_cache_dtype="float32", gpu_async_insert=async_insert, force_cpu_inputs="no" if kind == "KIND_GPU" else "yes",
        ))
    data = work / "ids.json"
    write_input_data({"ids": ids}, ids.shape[0], data)
    expected = np.stack([weights[name][ids[:, j]] for j, name in enumerate(TABLES)], axis=1)

    results = []
    checks = []
    with TritonServer(repo, log_path=work / "tritonserver.log") as server:
        for model in models:
            checks.append(float(np.abs(_infer_http(server.http_url, model, ids[:64]) - expected[:64]).max()))
        for model in models:
            for batch, concurrency in ((1024, 1), (1024, 2), (16384, 2)):
                # inputs and outputs in system shared memory: at batch 16384 the 27 MB of embeddings
                # per response would otherwise measure gRPC's serialisation more than the lookup
                shm = ("--shared-memory=system", f"--output-shared-memory-size={batch * len(TABLES) * 16 * 4}")
                m = perf_point(server.grpc_url, model, batch, concurrency, data, work / "perf.csv", args.seconds, shm)
                results.append((model, batch, concurrency, m))
                print(f"{model} b{batch} c{concurrency}: {m['infer_s']:,.0f} rows/s p50 {m['p50_ms']:.3f} p99 {m['p99_ms']:.3f} ms", flush=True)
        for model in models:
            checks.append(float(np.abs(_infer_http(server.http_url, model, ids[64:128]) - expected[64:128]).max()))
    log_errors = [line for line in (work / "tritonserver.log").read_text().splitlines() if "Error" in line or "error" in line.split(":")[0]]
    table = ["| model | batch | concurrency | rows/s | p50 ms | p95 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|---:|"]
    for model, batch, concurrency, m in results:
        table.append(f"| {model} | {batch} | {concurrency} | {m['infer_s']:,.0f} | {m['p50_ms']:.3f} | {m['p95_ms']:.3f} | {m['p99_ms']:.3f} |")
    ok = max(checks) == 0.0 and not log_errors
    body = "\n".join([
        header("embedding_lookup backend on KIND_GPU instances through tritonserver"),
        f"tritonserver 2.51 (the nvidia-pytriton 0.7.0 wheel's, carried to the GPU machine), one instance per model; 26 tables of {args.rows:,} rows, dim 16, fp32; "
        "ids from Zipf(1.05) per table (4096 rows of input data); perf_analyzer 2.44 over gRPC on loopback, tensors in system shared memory. "
        "lookup_gpu: KIND_GPU, 1 GiB GPU cache (LRU), FORCE_CPU_ONLY_INPUT_TENSORS no, all 26 tables in one store call; "
        "lookup_gpu_async: the same with inserts on the cache's own stream (gpu_async_insert); lookup_cpu: KIND_CPU, the host store.\n",
        *table, "",
        f"- Served embeddings equal the store's rows (64 rows per model, before and after the runs): {'yes' if max(checks) == 0.0 else 'NO'} (max |difference| {max(checks):.2e})",
        f"- Errors in the server's log: {len(log_errors)}" + (f" (first: {log_errors[0][:200]})" if log_errors else ""),
    ])
    print(body)
    if not args.no_write:
        write_section("gpu-lookup-triton", body)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
