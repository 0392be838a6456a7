"""The README's main job: Criteo-shaped data -> fit -> train a DLRM -> export the ensemble ->
serve it on the embedded Triton -> score held-out rows over gRPC, and report AUC, parity,
latency and cache hit rates."""

from __future__ import annotations

import dataclasses
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from tritonrec.pipeline.synthetic import CATEGORICAL, CONTINUOUS, HIDDEN, LABEL, CriteoGenerator
from tritonrec.serving.metrics import FLUSH_INTERVAL_S

ENSEMBLE = "criteo"


@dataclasses.dataclass
class DemoOptions:
    """Sizes and switches of the demo (see ``tritonrec demo --help``)."""

    workdir: str = "demo-output"
    train_rows: int = 500_000
    eval_rows: int = 20_000
    requests: int = 300
    keep_serving: bool = False
    seed: int = 0
    epochs: int = 1
    host_budget: float = 0.25
    """Host memory for the embedding rows, as a fraction of their size; the rest stays in the
    RocksDB tier (0 or a build without RocksDB: every row in host memory)."""
    batch_sizes: tuple[int, ...] = (1, 64, 1024)


def _percentiles(latencies_s: list[float]) -> tuple[float, float, float]:
    ms = np.asarray(latencies_s) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(np.percentile(ms, 99))


def hit_rates(metrics: dict[str, float], model: str) -> dict[str, tuple[int, int]]:
    """tier -> (keys looked up there, keys it held), summed over tables, for one embedding model."""
    tiers: dict[str, list[int]] = {}
    pattern = re.compile(r'tritonrec_embedding_(lookups|misses)_total\{model="([^"]+)",table="[^"]+",tier="([^"]+)"\}')
    for key, value in metrics.items():
        match = pattern.fullmatch(key)
        if match and match.group(2) == model:
            entry = tiers.setdefault(match.group(3), [0, 0])
            entry[0 if match.group(1) == "lookups" else 1] += int(value)
    return {tier: (lookups, lookups - misses) for tier, (lookups, misses) in tiers.items()}


@dataclasses.dataclass
class _Served:
    """What the served ensemble answered: probabilities of every held-out row, their worst
    differences from the offline model (batched, one row per request, timed requests), latencies
    (batch, p50, p95, p99 ms, rows/s) and the store's hit rates."""

    probabilities: np.ndarray
    parity: float
    single_rows: int
    single_parity: float
    latency_parity: float
    latency_rows: list[tuple[int, float, float, float, float]]
    rates: dict[str, tuple[int, int]]

    @property
    def ok(self) -> bool:
        return max(self.parity, self.single_parity, self.latency_parity) <= 1e-5


def _train(options: DemoOptions, work: Path, train: dict[str, np.ndarray], persistent: bool) -> Any:
    """Fits the workflow and trains the DLRM with a progress bar; returns the TrainedPipeline."""
    from tqdm import tqdm  # noqa: PLC0415

    from tritonrec.pipeline.train import train_pipeline  # noqa: PLC0415
    from tritonrec.scorer.dlrm import TrainOptions  # noqa: PLC0415

    with tqdm(total=options.train_rows * options.epochs, desc="training DLRM", unit="row", unit_scale=True, file=sys.stdout, leave=False) as bar:
        done = [0]

        def progress(rows: int, loss: float) -> None:
            bar.update(rows - done[0] if rows >= done[0] else rows)
            done[0] = rows
            bar.set_postfix_str(f"loss {loss:.4f}")

        return train_pipeline(work, train, train_options=TrainOptions(epochs=options.epochs, seed=options.seed), persistent=persistent, progress=progress)


def _offline(pipeline: Any, held_cols: dict[str, np.ndarray]) -> tuple[Any, np.ndarray]:
    """(the plan's parity report against nvtabular, the offline probabilities: PyTorch on
    NVTabular's own transform of the raw rows, float32 (n,))."""
    from tritonrec.pipeline.workflow import nvtabular_transform  # noqa: PLC0415
    from tritonrec.scorer.dlrm import predict  # noqa: PLC0415
    from tritonrec.transform.parity import compare  # noqa: PLC0415

    expected = nvtabular_transform(pipeline.workflow, held_cols)
    in_process = compare(expected, pipeline.plan.transform(held_cols))
    dense = np.stack([expected[c] for c in pipeline.plan.packed_outputs["float32"]], axis=1)
    ids = np.stack([expected[c] for c in pipeline.plan.packed_outputs["int64"]], axis=1).astype(np.int64)
    return in_process, predict(pipeline.model, dense, ids)


def _profile(pipeline: Any, train: dict[str, np.ndarray], offline: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """The training profile that ``tritonrec monitor --profile`` compares traffic with: the training
    rows' columns, the held-out rows' offline predictions and labels as the validation set."""
    from tritonrec.monitoring.profile import build_profile  # noqa: PLC0415

    columns = {c: train[c] for c in CONTINUOUS + CATEGORICAL}
    return build_profile(pipeline.plan, columns, workflow_dir=pipeline.workflow_dir, predictions=offline, labels=labels).save(path)


def _export(options: DemoOptions, pipeline: Any, repository: Path, persistent: bool) -> int | None:
    """Exports the ensemble (afresh); returns the lookup's host budget in bytes (None: all in memory)."""
    import embedding_cache  # noqa: PLC0415
    from tritonrec.export import export_ensemble  # noqa: PLC0415

    if repository.exists():
        shutil.rmtree(repository)
    budget = None
    if persistent:
        _, tables = embedding_cache.read_store_info(pipeline.store_dir)
        budget = max(1, int(options.host_budget * sum(t.rows * t.dim * 4 for t in tables)))
    export_ensemble(pipeline.plan, pipeline.store_dir, pipeline.scorer_dir, repository, ENSEMBLE, layout="packed",
                    host=embedding_cache.HostOptions(budget_bytes=budget))
    return budget


def _serve(options: DemoOptions, server: Any, plan: Any, held_cols: dict[str, np.ndarray], offline: np.ndarray) -> _Served:
    """Scores the held-out rows through the ensemble (batches of 1024, then 200 rows one request
    each), times requests of each batch size (checking every answer) and reads the hit rates."""
    import tritonclient.grpc as grpcclient  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    from tritonrec.serving.client import infer, pack_request, scrape_metrics  # noqa: PLC0415
    from tritonrec.serving.transform_model import TransformModel  # noqa: PLC0415

    client = grpcclient.InferenceServerClient(server.grpc_url)
    transform = TransformModel(plan, "packed")

    def score(rows: slice) -> np.ndarray:
        return infer(client, ENSEMBLE, pack_request(transform, {c: v[rows] for c, v in held_cols.items()}), ["probability"])["probability"].reshape(-1)

    served = np.concatenate([score(slice(start, start + 1024)) for start in
                             tqdm(range(0, options.eval_rows, 1024), desc="serving", unit="batch", file=sys.stdout, leave=False)])
    single_rows = min(200, options.eval_rows)  # batch 1 must give the batched answers
    single = np.concatenate([score(slice(i, i + 1)) for i in range(single_rows)])
    latency_rows, latency_parity = [], 0.0
    for batch_size in options.batch_sizes:
        tensors = pack_request(transform, {c: v[:batch_size] for c, v in held_cols.items()})
        for _ in range(10):
            infer(client, ENSEMBLE, tensors, ["probability"])
        latencies = []
        for _ in range(options.requests):
            t0 = time.perf_counter()
            got = infer(client, ENSEMBLE, tensors, ["probability"])["probability"]
            latencies.append(time.perf_counter() - t0)
            latency_parity = max(latency_parity, float(np.abs(got.reshape(-1) - offline[:batch_size]).max()))
        latency_rows.append((batch_size, *_percentiles(latencies), batch_size * len(latencies) / sum(latencies)))
    time.sleep(2 * FLUSH_INTERVAL_S)  # the backends send their counts every FLUSH_INTERVAL_S
    rates = hit_rates(scrape_metrics(server.metrics_url), f"{ENSEMBLE}_embeddings")
    return _Served(served, float(np.abs(served - offline).max()), single_rows, float(np.abs(single - offline[:single_rows]).max()),
                   latency_parity, latency_rows, rates)


def _report(options: DemoOptions, pipeline: Any, in_process: Any, served: _Served, held_out: dict[str, np.ndarray],
            budget: int | None) -> None:
    """Prints parity, AUC, the latency table and the hit rates."""
    from tritonrec.scorer.dlrm import roc_auc  # noqa: PLC0415

    auc_served = roc_auc(held_out[LABEL], served.probabilities)
    auc_hidden = roc_auc(held_out[LABEL], held_out[HIDDEN])
    ratio = auc_served / auc_hidden
    within = served.parity <= 1e-5
    print()
    print(f"Plan: {pipeline.plan}")
    print(f"Training: {options.train_rows:,} rows, {options.epochs} epoch(s), loss {pipeline.losses[-1]:.4f}")
    print(f"Parity, in process, plan vs nvtabular.Workflow.transform: {in_process.summary()}")
    print(f"Parity, served ensemble vs PyTorch on Workflow.transform ({options.eval_rows:,} rows): "
          f"max |difference| {served.parity:.2e} ({'within' if within else 'NOT within'} 1e-5)")
    print(f"Parity at batch 1 ({served.single_rows} rows, one request each): max |difference| {served.single_parity:.2e}; "
          f"the timed requests below: {served.latency_parity:.2e} "
          f"({'within' if max(served.single_parity, served.latency_parity) <= 1e-5 else 'NOT within'} 1e-5)")
    print(f"AUC on {options.eval_rows:,} held-out rows: served DLRM {auc_served:.4f}, hidden model {auc_hidden:.4f}, "
          f"ratio {ratio:.4f} (target >= 0.97: {'met' if ratio >= 0.97 else 'MISSED'})")
    print()
    print(f"Latency of the ensemble '{ENSEMBLE}' (packed inputs, gRPC, Python client, concurrency 1, {options.requests} requests each):")
    print(f"| {'batch':>5} | {'p50 ms':>7} | {'p95 ms':>7} | {'p99 ms':>7} | {'rows/s':>10} |")
    print(f"|{'-' * 7}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 12}|")
    for batch_size, p50, p95, p99, rate in served.latency_rows:
        print(f"| {batch_size:>5} | {p50:>7.3f} | {p95:>7.3f} | {p99:>7.3f} | {rate:>10,.0f} |")
    print()
    where = f"host budget {budget / 2**20:.1f} MiB of {budget / options.host_budget / 2**20:.1f} MiB, rest in RocksDB" if budget else "every row in host memory"
    print(f"Embedding cache ({where}), keys looked up since the server started:")
    for tier, (lookups, hits) in served.rates.items():
        print(f"  {tier:>8}: {lookups:,} lookups, {hits:,} hits, hit rate {hits / max(lookups, 1):.4f}")
    print()


def _keep_serving(server: Any) -> None:
    print("Serving until Ctrl-C or SIGTERM.", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5) and server.is_running():
        pass


def run_demo(options: DemoOptions) -> int:
    """Runs the demo; returns the process exit code (0 when every parity check passes)."""
    from tqdm import tqdm  # noqa: PLC0415

    import embedding_cache  # noqa: PLC0415
    from tritonrec.serving.server import ServerError, TritonServer  # noqa: PLC0415

    started = time.perf_counter()
    work = Path(options.workdir).resolve()
    repository = work / "model_repository"
    steps = tqdm(total=7, desc="demo", unit="step", file=sys.stdout)
    steps.set_postfix_str(f"generating {options.train_rows:,} + {options.eval_rows:,} Criteo-shaped rows")
    generator = CriteoGenerator()
    train = generator.sample(options.train_rows, seed=options.seed)
    held_out = generator.sample(options.eval_rows, seed=options.seed + 1, hidden_probability=True)
    held_cols = {c: held_out[c] for c in CONTINUOUS + CATEGORICAL}
    steps.update()
    steps.set_postfix_str("fitting the workflow, training the DLRM")
    persistent = options.host_budget > 0 and embedding_cache._core.has_rocksdb
    pipeline = _train(options, work, train, persistent)
    steps.update()
    steps.set_postfix_str("checking the plan against nvtabular, scoring offline")
    in_process, offline = _offline(pipeline, held_cols)
    profile_path = _profile(pipeline, train, offline, held_out[LABEL], work / "profile.json")
    steps.update()
    steps.set_postfix_str("exporting the ensemble")
    budget = _export(options, pipeline, repository, persistent)
    steps.update()
    steps.set_postfix_str("starting tritonserver")
    try:
        server = TritonServer(repository, log_path=work / "tritonserver.log").start()
    except ServerError as e:
        steps.close()
        print(f"demo: {e}", file=sys.stderr)
        return 1
    steps.update()
    try:
        steps.set_postfix_str("scoring the held-out rows through the ensemble, measuring latency")
        served = _serve(options, server, pipeline.plan, held_cols, offline)
        steps.update(2)
        steps.close()
        _report(options, pipeline, in_process, served, held_out, budget)
        print(f"Model repository: {repository}")
        print(f"Training profile (tritonrec monitor --profile): {profile_path}")
        print(f"Server endpoints: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.metrics_url}")
        print(f"Elapsed: {time.perf_counter() - started:.0f} s")
        if options.keep_serving:
            _keep_serving(server)
    finally:
        server.stop()
    ok = in_process.ok and served.ok
    print("demo: all parity checks passed" if ok else "demo: PARITY FAILED", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1
