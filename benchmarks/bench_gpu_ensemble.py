"""The whole ensemble on one GPU through tritonserver: the transform plan with cupy -> the embedding
lookup with the GPU cache -> the torch DLRM scorer, all KIND_GPU, against the same ensemble on CPU
instances, in the same run and server.

Runs where nvtabular cannot (numpy 2): the plan is built by hand with the same steps a Criteo
workflow compiles to (13 continuous columns: FillMissing, Clip(0), LogOp, Normalize to float32; 26
categorical: Categorify of random int64 keys). The DLRM is the ensemble issue's (dim 16, bottom
512-256-16, dot interaction, top 512-256-1), randomly initialised, split by ``save_dlrm`` into a
store and a scorer. Tables of ``--rows`` rows each; the GPU cache holds ``--cache-share`` of all
rows (LFU with admission); ids drawn from Zipf(1.05) per table. perf_analyzer over gRPC, packed inputs; outputs checked against in-process PyTorch on the numpy
plan's features, for both ensembles, before and after the runs.

Target: >= 2 M samples/s at batch 16384 on one H200.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, perf_point, write_input_data, write_section  # noqa: E402

N_DENSE, N_TABLES = 13, 26


def build_plan(rows: int, seed: int = 0):
    """A Criteo-shaped TransformPlan and each table's vocabulary keys (int64 (rows,) per table)."""
    from tritonrec.transform._table import KeyTable
    from tritonrec.transform.ops import Categorify, Clip, FillMissing, LogOp, Normalize
    from tritonrec.transform.plan import ColumnSpec, PlanGroup, TransformPlan

    rng = np.random.default_rng(seed)
    vocab = [rng.choice(2**62, size=rows, replace=False).astype(np.int64) for _ in range(N_TABLES)]
    table = KeyTable.build(
        np.repeat(np.arange(N_TABLES, dtype=np.int64), rows),
        np.concatenate(vocab),
        np.tile(np.arange(3, 3 + rows, dtype=np.int64), N_TABLES),
    )
    dense_names = [f"I{i}" for i in range(1, N_DENSE + 1)]
    cat_names = [f"C{j}" for j in range(1, N_TABLES + 1)]
    dense = PlanGroup(dense_names, dense_names, np.dtype(np.float32), [
        FillMissing([0.0] * N_DENSE), Clip([0.0] * N_DENSE, None), LogOp(),
        Normalize(rng.uniform(0.5, 2.0, N_DENSE), rng.uniform(0.5, 2.0, N_DENSE), np.float32),
    ])
    cat = PlanGroup(cat_names, cat_names, np.dtype(np.int64), [Categorify(table, [0] * N_TABLES, np.int64, np.int64)])
    inputs = [ColumnSpec(n, np.dtype(np.float32)) for n in dense_names] + [ColumnSpec(n, np.dtype(np.int64)) for n in cat_names]
    outputs = [ColumnSpec(n, np.dtype(np.float32)) for n in dense_names] + [ColumnSpec(n, np.dtype(np.int64)) for n in cat_names]
    return TransformPlan(inputs, outputs, [dense, cat], "23.08.00"), vocab


def sample(vocab: list[np.ndarray], n: int, seed: int) -> dict[str, np.ndarray]:
    """Raw columns: lognormal continuous values with 10% missing; Zipf(1.05) keys per table (2% unseen)."""
    rng = np.random.default_rng(seed)
    rows = vocab[0].size
    cdf = np.cumsum(np.arange(1, rows + 1, dtype=np.float64) ** -1.05)
    cdf /= cdf[-1]
    columns = {}
    for i in range(1, N_DENSE + 1):
        v = rng.lognormal(1.0, 1.5, n).astype(np.float32)
        v[rng.random(n) < 0.1] = np.nan
        columns[f"I{i}"] = v
    for j, keys in enumerate(vocab, start=1):
        ranked = keys[rng.permutation(rows)]
        ids = ranked[np.minimum(np.searchsorted(cdf, rng.random(n)), rows - 1)]
        ids[rng.random(n) < 0.02] = -1  # never in a vocabulary: the OOV code
        columns[f"C{j}"] = ids
    return columns


def step_times(http_url: str, models: list[str]) -> dict[str, tuple[int, float, float]]:
    """model -> (executions, queue ms, compute ms) cumulative, from Triton's statistics over HTTP."""
    import json
    import urllib.request

    out = {}
    for model in models:
        with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=10) as r:
            stats = json.loads(r.read())["model_stats"][0]
        inference = stats["inference_stats"]
        compute = sum(float(inference[k]["ns"]) for k in ("compute_input", "compute_infer", "compute_output"))
        out[model] = (int(stats.get("execution_count", 0)), float(inference["queue"]["ns"]) / 1e6, compute / 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000, help="rows per table")
    parser.add_argument("--cache-share", type=float, default=0.075, help="share of all rows the GPU cache holds")
    parser.add_argument("--seconds", type=float, default=1.5, help="perf_analyzer measurement window")
    parser.add_argument("--data-rows", type=int, default=2048, help="rows of perf_analyzer input data (distinct samples it cycles through; "
                        "perf_analyzer's set-up grows with rows x batch: 65536 rows did not finish one b16384 point in 8 minutes)")
    parser.add_argument("--points", default="16384x1,16384x2,1024x1,1024x2,65536x1,65536x2",
                        help="the gpu ensemble's batch x concurrency points, in order (the target's batch first: a run cut short still has it)")
    parser.add_argument("--cuda-pool-mib", type=int, default=2048,
                        help="tritonserver --cuda-memory-pool-byte-size for GPU 0 (Triton's default, 64 MiB, sends larger tensors through host memory)")
    parser.add_argument("--point-timeout", type=float, default=240.0, help="seconds one perf_analyzer run may take")
    parser.add_argument("--cpu-points", default="16384x2,1024x1", help="the cpu ensemble's points")
    parser.add_argument("--cpu-only", action="store_true", help="smoke test without a GPU: the CPU ensemble only")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from embedding_cache import GpuCacheOptions, _core
    from tritonrec.export import export_ensemble
    from tritonrec.scorer.dlrm import DLRM, DLRMConfig, predict, save_dlrm
    from tritonrec.serving.client import infer_http, scrape_metrics
    from tritonrec.serving.client import pack_request
    from tritonrec.serving.server import TritonServer
    from tritonrec.serving.transform_model import TransformModel

    work = Path(tempfile.mkdtemp(prefix="bench-gpu-ensemble-"))
    t0 = time.time()
    plan, vocab = build_plan(args.rows)
    cardinalities = [plan.categorical_codes()[c][0] for c in plan.packed_outputs["int64"]]
    torch.manual_seed(0)
    model = DLRM(N_DENSE, cardinalities, DLRMConfig()).eval()
    save_dlrm(model, plan, work / "store", work / "scorer")
    total_rows = sum(cardinalities)
    cache_bytes = int(args.cache_share * total_rows * _core.gpu_cache_slot_bytes(16, _core.GpuRowDtype.float32, True)) if _core.has_cuda else 0
    repo = work / "repo"
    kinds = {"cpu": "KIND_CPU"} if args.cpu_only else {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
    for name, kind in kinds.items():
        export_ensemble(
            plan, work / "store", work / "scorer", repo, name, layout="packed", max_batch_size=65536,
            transform_kind=kind, lookup_kind=kind, scorer_kind=kind,
            gpu_cache=GpuCacheOptions(cache_bytes, eviction="lfu", admission=True) if kind == "KIND_GPU" else None,
        )
    print(f"built plan, DLRM, store and repository in {time.time() - t0:.0f} s ({total_rows:,} rows)", flush=True)

    # JSON carries no NaN: the check rows have their missing values as 0 (perf_analyzer's data keeps NaN)
    check_columns = {k: np.nan_to_num(v, nan=0.0) for k, v in sample(vocab, 512, seed=1).items()}
    transform = TransformModel(plan, "packed")
    request = pack_request(transform, check_columns)
    offline = predict(model, *_features(plan, check_columns))
    bench_columns = sample(vocab, args.data_rows, seed=2)
    data = work / "input.json"
    write_input_data(pack_request(transform, bench_columns), args.data_rows, data)
    points = {"gpu": _points(args.points), "cpu": _points(args.cpu_points)}

    results, checks, between = [], [], []
    log = work / "tritonserver.log"
    with TritonServer(repo, log_path=log, extra_args=() if args.cpu_only else (f"--cuda-memory-pool-byte-size=0:{args.cuda_pool_mib << 20}",)) as server:
        def check() -> None:
            served = {}
            for name in kinds:
                served[name] = infer_http(server.http_url, name, request, ["probability"])["probability"].reshape(-1)
                checks.append((name, float(np.abs(served[name] - offline).max())))
                print(f"{name}: served vs in-process max |difference| {checks[-1][1]:.2e}", flush=True)
            if len(served) == 2:
                between.append(float(np.abs(served["gpu"] - served["cpu"]).max()))
                print(f"gpu vs cpu ensemble max |difference| {between[-1]:.2e}", flush=True)

        check()
        steps: list[str] = []
        for name in kinds:
            models = [f"{name}_transform", f"{name}_embeddings", f"{name}_scorer"]
            for batch, concurrency in points[name]:
                before = step_times(server.http_url, models)
                counted = scrape_metrics(server.metrics_url)
                # no shared memory: perf_analyzer makes one region per input-data row of the whole batch
                # (8192 x 65536 rows here); the outputs are 4 bytes a sample anyway
                t_point = time.time()
                try:
                    m = perf_point(server.grpc_url, name, batch, concurrency, data, work / "perf.csv", args.seconds, timeout_s=args.point_timeout)
                except subprocess.TimeoutExpired:
                    print(f"{name} b{batch} c{concurrency}: perf_analyzer did not finish in {args.point_timeout:.0f} s", flush=True)
                    steps.append(f"- {name} b{batch} c{concurrency}: perf_analyzer did not finish in {args.point_timeout:.0f} s")
                    continue
                m["wall_s"] = time.time() - t_point
                time.sleep(1.0)  # the lookup model sends its counters every 0.5 s
                m["gpu_hit"] = _gpu_hit_rate(counted, scrape_metrics(server.metrics_url), f"{name}_embeddings")
                results.append((name, batch, concurrency, m))
                print(f"{name} b{batch} c{concurrency}: {m['infer_s']:,.0f} samples/s p50 {m['p50_ms']:.2f} p99 {m['p99_ms']:.2f} ms "
                      f"(GPU cache hits {m['gpu_hit'] if m['gpu_hit'] is None else round(m['gpu_hit'], 4)}; point took {m['wall_s']:.0f} s)", flush=True)
                after = step_times(server.http_url, models)
                parts = []
                for model in models:
                    runs = max(after[model][0] - before[model][0], 1)
                    parts.append(f"{model.split('_', 1)[1]} {(after[model][2] - before[model][2]) / runs:.2f} ms compute + "
                                 f"{(after[model][1] - before[model][1]) / runs:.2f} ms queue per execute")
                steps.append(f"- {name} b{batch} c{concurrency}: " + "; ".join(parts))
                print(steps[-1], flush=True)
        check()
    log_errors = [line for line in log.read_text().splitlines() if "Error" in line or "error" in line.split(":")[0]]
    table = ["| ensemble | batch | concurrency | samples/s | p50 ms | p95 ms | p99 ms | GPU cache hits |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, batch, concurrency, m in results:
        hit = "-" if m["gpu_hit"] is None else f"{m['gpu_hit']:.1%}"
        table.append(f"| {name} | {batch} | {concurrency} | {m['infer_s']:,.0f} | {m['p50_ms']:.2f} | {m['p95_ms']:.2f} | {m['p99_ms']:.2f} | {hit} |")
    worst = max(d for _, d in checks)
    at_target = [m["infer_s"] for name, b, _, m in results if name == "gpu" and b == 16384]
    verdict = (f"- gpu ensemble at batch 16384: best {max(at_target):,.0f} samples/s (target 2,000,000): "
               f"{'met' if max(at_target) >= 2e6 else 'MISSED'}") if at_target else (
               "- gpu ensemble not run (--cpu-only)" if args.cpu_only else "- gpu ensemble: no point at batch 16384 was measured")
    body = "\n".join([
        header("The whole ensemble on one GPU (transform -> GPU embedding cache -> DLRM)"),
        f"tritonserver 2.51, one instance per model; 26 tables of {args.rows:,} rows (+3 codes), dim 16, fp32 ({total_rows:,} rows, "
        f"{total_rows * 64 / 2**20:,.0f} MiB); GPU cache {args.cache_share:.1%} of the rows (LFU + admission, {cache_bytes / 2**20:,.0f} MiB); "
        "ids Zipf(1.05) per table, 2% unseen; the ensemble issue's DLRM, random weights; perf_analyzer 2.44 over gRPC, packed inputs, "
        f"{args.data_rows:,} rows of input data, {args.seconds:g} s windows, CUDA memory pool {args.cuda_pool_mib:,} MiB. gpu: all three models KIND_GPU; cpu: all KIND_CPU (same server). "
        "GPU cache hits: share of the point's keys the GPU tier held (Triton metrics); perf_analyzer cycles through "
        f"the same {args.data_rows:,} rows, so after the first pass the cache sees only their distinct ids.\n",
        *table, "",
        "Server-side time per step (Triton's statistics, per execute, during each point):", "", *steps, "",
        verdict,
        f"- Served probabilities equal in-process PyTorch on the numpy plan's features (512 rows per ensemble, before and after): "
        f"max |difference| {worst:.2e} ({'yes' if worst <= 1e-5 else 'NO'})"
        + (f"; gpu vs cpu ensemble on the same rows: max |difference| {max(between):.2e}" if between else ""),
        f"- Errors in the server's log: {len(log_errors)}" + (f" (first: {log_errors[0][:200]})" if log_errors else ""),
    ])
    print(body)
    if not args.no_write:
        write_section("gpu-ensemble", body)
    return 0 if worst <= 1e-5 and not log_errors else 1


def _points(text: str) -> list[tuple[int, int]]:
    """``"16384x1,1024x2"`` -> [(16384, 1), (1024, 2)]."""
    try:
        return [(int(b), int(c)) for b, c in (p.split("x") for p in text.split(",") if p)]
    except ValueError:
        raise SystemExit(f"points {text!r}: expected BATCHxCONCURRENCY[,...], e.g. 16384x1,1024x2") from None


def _gpu_hit_rate(before: dict[str, float], after: dict[str, float], model: str) -> float | None:
    """Share of keys the model's GPU tier held between two scrapes of tritonrec's metrics (None: no GPU tier)."""
    def total(family: str, values: dict[str, float]) -> float:
        return sum(v for k, v in values.items() if k.startswith(family + "{") and f'model="{model}"' in k and 'tier="gpu"' in k)
    lookups = total("tritonrec_embedding_lookups_total", after) - total("tritonrec_embedding_lookups_total", before)
    misses = total("tritonrec_embedding_misses_total", after) - total("tritonrec_embedding_misses_total", before)
    return None if lookups <= 0 else 1.0 - misses / lookups


def _features(plan, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    out = plan.transform(columns)
    return (np.stack([out[c] for c in plan.packed_outputs["float32"]], axis=1),
            np.stack([out[c] for c in plan.packed_outputs["int64"]], axis=1))


if __name__ == "__main__":
    sys.exit(main())
