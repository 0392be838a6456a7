"""Shared pieces of the benchmarks: the fitted Criteo-shaped workflow, timing, RESULTS.md sections."""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    """One line: CPU model, cores, memory, OS, Python (GPU name when one is visible)."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        pass
    gpu = ""
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        if names.returncode == 0 and names.stdout.strip():
            gpu = f", GPU {names.stdout.strip().splitlines()[0]}"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}, Python {platform.python_version()}{gpu}"


def fitted_criteo(workdir: Path, train_rows: int = 200_000, eval_rows: int = 20_000):
    """Fits (or reuses) the Criteo-shaped workflow: returns (workflow, workflow_dir, held-out columns)."""
    from tritonrec.pipeline.synthetic import CATEGORICAL, CONTINUOUS, CriteoGenerator
    from tritonrec.pipeline.workflow import criteo_workflow, fit_workflow

    generator = CriteoGenerator()
    inputs = CONTINUOUS + CATEGORICAL
    workflow = fit_workflow(criteo_workflow(), generator.sample(train_rows, seed=0), inputs, workdir / "workflow")
    held = generator.sample(eval_rows, seed=1)
    return workflow, workdir / "workflow", {c: held[c] for c in inputs}


def time_calls(fn: Callable[[], object], min_calls: int, min_seconds: float) -> np.ndarray:
    """Seconds per call, at least ``min_calls`` calls and ``min_seconds`` in all (after 3 warm-ups)."""
    for _ in range(3):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of ``fn``, in seconds, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def write_section(name: str, body: str) -> None:
    """Replaces (or appends) the section ``name`` of RESULTS.md, between marker comments."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nEach section is rewritten by the benchmark named in it.\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def header(title: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join([Path(sys.executable).name, *sys.argv])
    return f"## {title}\n\n- Machine: {machine()}\n- Date: {now}\n- Command: `{command}`\n"


def write_input_data(tensors: dict[str, np.ndarray], rows: int, path: Path) -> None:
    """perf_analyzer input data: ``rows`` single-row samples of each tensor ([n, ...] arrays), raw
    bytes in base64 (NaN-safe), as ``tritonrec perf`` writes them."""
    from tritonrec.serving.perf import rows_input_data

    path.write_text(json.dumps(rows_input_data(tensors, rows)))


def perf_point(grpc_url: str, model: str, batch: int, concurrency: int, data: Path, out: Path, seconds: float,
               extra: tuple[str, ...] = (), timeout_s: float = 600.0) -> dict[str, float]:
    """One perf_analyzer point over gRPC (stabilised on average latency; percentiles from its CSV
    report, in ms; ``infer_s`` counts rows). A point that does not stabilise is measured again with
    windows twice as long. ``extra``: more perf_analyzer arguments (e.g. shared memory); ``timeout_s``:
    the most one perf_analyzer run may take (``subprocess.TimeoutExpired`` past it)."""
    from tritonrec.serving.perf import find_perf_analyzer

    perf = find_perf_analyzer()
    for window in (seconds, 2 * seconds):
        command = [
            perf, "-m", model, "-i", "grpc", "-u", grpc_url, "-b", str(batch),
            f"--concurrency-range={concurrency}:{concurrency}", f"--input-data={data}",
            f"--measurement-interval={int(window * 1000)}", "--stability-percentage=25", "--max-trials=10",
            "-f", str(out), *extra,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        if result.returncode == 0:
            break
    if result.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed for {model} b{batch} c{concurrency}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    with open(out) as f:
        row = next(csv.DictReader(f))
    return {
        "infer_s": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1e3,
        "p95_ms": float(row["p95 latency"]) / 1e3,
        "p99_ms": float(row["p99 latency"]) / 1e3,
    }


def served_difference(client, model: str, transform, held: dict[str, np.ndarray], expected: np.ndarray) -> float:
    """Largest |served - offline| probability of ``model`` (an ensemble of the packed ``transform``)
    over requests of 1, 64 and 1024 held-out rows (``expected``: the offline predictions, (n,))."""
    from tritonrec.serving.client import infer, pack_request

    worst = 0.0
    for start, n in ((0, 1), (1, 64), (100, 1024)):
        tensors = pack_request(transform, {c: v[start : start + n] for c, v in held.items()})
        got = infer(client, model, tensors, ["probability"])["probability"].reshape(-1)
        worst = max(worst, float(np.abs(got - expected[start : start + n]).max()))
    return worst


def inference_statistics(client, models: list[str]) -> dict[str, dict[str, float]]:
    """model -> cumulative executions, inferences (rows) and queue / compute nanoseconds (Triton's statistics)."""
    out = {}
    for model in models:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        inference = stats["inference_stats"]
        out[model] = {
            "executions": float(stats.get("execution_count", 0)),
            "inferences": float(stats.get("inference_count", 0)),
            "queue_ns": float(inference["queue"].get("ns", 0)),
            "compute_ns": sum(float(inference[k].get("ns", 0)) for k in ("compute_input", "compute_infer", "compute_output")),
        }
    return out


def per_execute_ms(before, after, model) -> tuple[float, float]:
    """(queue ms, compute ms) per execution of ``model`` between two statistics snapshots."""
    executions = after[model]["executions"] - before[model]["executions"]
    if executions <= 0:
        return float("nan"), float("nan")
    return (
        (after[model]["queue_ns"] - before[model]["queue_ns"]) / executions / 1e6,
        (after[model]["compute_ns"] - before[model]["compute_ns"]) / executions / 1e6,
    )


def trained_criteo_ensemble(train_rows: int, prefix: str):
    """The Criteo-shaped pipeline trained on ``train_rows`` synthetic rows in a new temporary
    directory, with 4,096 held-out rows and the PyTorch model's offline answers for them: a
    namespace of ``work`` (the directory), ``pipeline``, ``held`` (raw columns, (4096,) each),
    ``dense`` and ``ids`` (the plan's outputs for them) and ``expected`` (probabilities, (4096,))."""
    import tempfile
    import types

    from tritonrec.pipeline.synthetic import CATEGORICAL, CONTINUOUS, CriteoGenerator
    from tritonrec.pipeline.train import plan_features, train_pipeline
    from tritonrec.scorer.dlrm import predict

    work = Path(tempfile.mkdtemp(prefix=prefix))
    generator = CriteoGenerator()
    print(f"training on {train_rows:,} rows ...", flush=True)
    pipeline = train_pipeline(work, generator.sample(train_rows, seed=0))
    held_all = generator.sample(4096, seed=1)
    held = {c: held_all[c] for c in CONTINUOUS + CATEGORICAL}
    dense, ids = plan_features(pipeline.plan, held)
    return types.SimpleNamespace(work=work, pipeline=pipeline, held=held, dense=dense, ids=ids,
                                 expected=predict(pipeline.model, dense, ids))


def cuda_elapsed_s(cp, fn) -> float:
    """Seconds of one run of ``fn`` on cupy's current stream (CUDA events around it), no warm-up."""
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    fn()
    stop.record()
    stop.synchronize()
    return cp.cuda.get_elapsed_time(start, stop) / 1e3
