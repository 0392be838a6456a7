"""The full ensemble (transform -> embedding lookup -> DLRM scorer) through tritonserver, measured
with perf_analyzer, against the Triton floor: the same ensemble of three no-op Python models
passing the same tensors.

Batch 1, 64, 1024 at concurrency 1, 2, 4, over gRPC on loopback, real held-out rows as
perf_analyzer input data (packed inputs). Each composing model is measured alone too, and the
server-side time per step (Triton's statistics: queue and compute per execute) is read around every
ensemble point. Before and after, served probabilities are checked against the PyTorch model's
offline predictions (perf_analyzer and Triton count failing responses as successes). Draws PNG
plots into benchmarks/plots/.

Targets (2-core CPU machine): ensemble p99 <= 3 ms at batch 1 (packed, concurrency 1) and within
1.5x of the floor; >= 200k rows/s at batch 1024.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    header, inference_statistics, per_execute_ms, perf_point, served_difference, trained_criteo_ensemble, write_input_data, write_section,
)

HERE = Path(__file__).resolve().parent
PLOTS = HERE / "plots"
STEPS = ("transform", "embeddings", "scorer")


def _floor_ensemble(repo: Path, pipeline) -> None:
    """Exports the ensemble 'floor' and turns its three steps into no-op Python models."""
    from tritonrec.export import export_ensemble

    export_ensemble(pipeline.plan, pipeline.store_dir, pipeline.scorer_dir, repo, "floor", layout="packed")
    for step in STEPS:
        model = repo / f"floor_{step}"
        config = model / "config.pbtxt"
        text = config.read_text()
        for backend in ("nvtabular_transform", "embedding_lookup", "torch_scorer"):
            text = text.replace(f'backend: "{backend}"', 'backend: "python"')
        config.write_text(text)
        version = model / "1"
        shutil.rmtree(version)
        version.mkdir()
        shutil.copy(HERE / "floor_model.py", version / "model.py")


def _plots(results: list[dict], batches: list[int], concurrencies: list[int]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(exist_ok=True)
    by = {(r["model"], r["batch"], r["concurrency"]): r for r in results}
    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for model, style in (("criteo", "-o"), ("floor", "--s")):
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
            ys = [by[(model, b, 1)][key] for b in batches if (model, b, 1) in by]
            ax.plot(batches[: len(ys)], ys, style, label=f"{'ensemble' if model == 'criteo' else 'floor'} {label}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (rows per request)")
    ax.set_ylabel("latency, ms (perf_analyzer, concurrency 1)")
    ax.set_title("Ensemble latency against batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(PLOTS / "ensemble_latency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for batch in batches:
        for model, style in (("criteo", "-o"), ("floor", "--s")):
            ys = [by[(model, batch, c)]["infer_s"] for c in concurrencies if (model, batch, c) in by]
            ax.plot(concurrencies[: len(ys)], ys, style, label=f"{'ensemble' if model == 'criteo' else 'floor'} batch {batch}")
    ax.set_yscale("log")
    ax.set_xticks(concurrencies)
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("rows/s")
    ax.set_title("Ensemble throughput against concurrency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    paths.append(PLOTS / "ensemble_throughput.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=2.0, help="perf_analyzer measurement window")
    parser.add_argument("--batches", default="1,64,1024")
    parser.add_argument("--concurrency", default="1,2,4")
    parser.add_argument("--steps", action=argparse.BooleanOptionalAction, default=True, help="also measure each composing model alone")
    parser.add_argument("--scorer-threads", type=int, default=None, help="torch threads of the scorer (default: the export's)")
    parser.add_argument("--no-write", action="store_true", help="print only: leave RESULTS.md and the plots as they are")
    args = parser.parse_args(argv)

    import tritonclient.grpc as grpcclient

    from tritonrec.export import export_ensemble
    from tritonrec.serving.server import TritonServer
    from tritonrec.serving.client import pack_request
    from tritonrec.serving.transform_model import TransformModel

    trained = trained_criteo_ensemble(args.train_rows, "bench-ensemble-")
    work, pipeline, held, dense, ids, expected = trained.work, trained.pipeline, trained.held, trained.dense, trained.ids, trained.expected
    embeddings = np.stack([w[ids[:, j]] for j, w in enumerate(pipeline.model.table_weights())], axis=1)

    repo = work / "repo"
    export_ensemble(pipeline.plan, pipeline.store_dir, pipeline.scorer_dir, repo, "criteo", layout="packed", scorer_threads=args.scorer_threads)
    _floor_ensemble(repo, pipeline)
    transform = TransformModel(pipeline.plan, "packed")
    rows = 2048
    data = {
        "criteo": pack_request(transform, {c: v[:rows] for c, v in held.items()}),
        "criteo_embeddings": {"ids": ids[:rows]},
        "criteo_scorer": {"dense": dense[:rows], "embeddings": embeddings[:rows]},
    }
    data["floor"] = data["criteo_transform"] = data["criteo"]
    files = {}
    for model, tensors in data.items():
        files[model] = work / f"{model}.json"
        write_input_data(tensors, rows, files[model])

    batches = [int(b) for b in args.batches.split(",")]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    models = ["criteo", "floor", *([f"criteo_{s}" for s in STEPS] if args.steps else [])]
    step_models = [f"criteo_{s}" for s in STEPS] + [f"floor_{s}" for s in STEPS]
    results = []
    with TritonServer(repo, log_path=work / "tritonserver.log") as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        before_check = served_difference(client, "criteo", transform, held, expected)
        for model in models:
            for batch in batches:
                for concurrency in concurrencies:
                    before = inference_statistics(client, step_models)
                    m = perf_point(server.grpc_url, model, batch, concurrency, files[model], work / "perf.csv", args.seconds)
                    after = inference_statistics(client, step_models)
                    prefix = model if model in ("criteo", "floor") else None
                    m["steps"] = {s: per_execute_ms(before, after, f"{prefix}_{s}") for s in STEPS} if prefix else {}
                    results.append({"model": model, "batch": batch, "concurrency": concurrency, **m})
                    print(f"{model:>18} b{batch:<5} c{concurrency}: {m['infer_s']:>10,.0f} rows/s p50 {m['p50_ms']:.3f} p95 {m['p95_ms']:.3f} p99 {m['p99_ms']:.3f} ms", flush=True)
        after_check = served_difference(client, "criteo", transform, held, expected)
    checked = max(before_check, after_check) <= 1e-5

    by = {(r["model"], r["batch"], r["concurrency"]): r for r in results}
    table = [
        "| model | batch | concurrency | rows/s | p50 ms | p95 ms | p99 ms | floor rows/s | floor p99 ms | p99 / floor p99 | transform q+c ms | embeddings q+c ms | scorer q+c ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    worst_ratio = 0.0
    for r in results:
        if r["model"] == "floor":
            continue
        floor = by.get(("floor", r["batch"], r["concurrency"])) if r["model"] == "criteo" else None
        ratio = r["p99_ms"] / floor["p99_ms"] if floor else float("nan")
        if floor:
            worst_ratio = max(worst_ratio, ratio)
        steps = " | ".join(f"{q:.3f} + {c:.3f}" for q, c in (r["steps"][s] for s in STEPS)) if r["steps"] else "| |"
        table.append(
            f"| {r['model']} | {r['batch']} | {r['concurrency']} | {r['infer_s']:,.0f} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | {r['p99_ms']:.3f} | "
            + (f"{floor['infer_s']:,.0f} | {floor['p99_ms']:.3f} | {ratio:.2f} | " if floor else " | | | ")
            + steps + " |"
        )
    floor_rows = [
        "| floor step | batch | concurrency | queue + compute ms per execute |",
        "|---|---:|---:|---|",
    ]
    for r in results:
        if r["model"] == "floor" and r["concurrency"] == 1:
            floor_rows.append(f"| floor | {r['batch']} | 1 | " + ", ".join(f"{s} {q:.3f} + {c:.3f}" for s, (q, c) in r["steps"].items()) + " |")
    verdicts = []
    if ("criteo", 1, 1) in by:
        p99 = by[("criteo", 1, 1)]["p99_ms"]
        verdicts.append(f"- Ensemble p99 <= 3 ms at batch 1 (packed, concurrency 1): {p99:.3f} ms, {'met' if p99 <= 3.0 else 'MISSED'}")
    verdicts.append(f"- Ensemble p99 within 1.5x of the floor at every point: worst {worst_ratio:.2f}x, {'met' if worst_ratio <= 1.5 else 'MISSED'}")
    big = [by[("criteo", 1024, c)]["infer_s"] for c in concurrencies if ("criteo", 1024, c) in by]
    if big:
        verdicts.append(f"- >= 200k rows/s at batch 1024: best {max(big):,.0f} rows/s, {'met' if max(big) >= 200_000 else 'MISSED'}")
    verdicts.append(f"- Served probabilities equal the offline PyTorch model within 1e-5 before and after the runs: {'yes' if checked else 'NO'} (max |difference| {max(before_check, after_check):.2e})")
    plots = [] if args.no_write else _plots(results, batches, concurrencies)
    body = "\n".join([
        header("Full ensemble through tritonserver (perf_analyzer) vs the Triton floor"),
        f"tritonserver 2.51 (nvidia-pytriton 0.7.0 wheel), one KIND_CPU instance per step, dynamic batching; perf_analyzer 2.44 over gRPC on loopback, "
        f"client on the same cores; DLRM (dim 16, bottom 512-256-16, top 512-256-1) trained on {args.train_rows:,} rows; input data: 2048 held-out rows, packed. "
        "Floor: the same ensemble with three no-op Python models returning zero tensors of the same shapes. "
        "`q+c ms`: Triton's queue + compute time per execution of each step during that point. "
        "Rows `criteo_<step>` measure one step alone (its own inputs over gRPC).\n",
        *table, "", *floor_rows, "", *verdicts, "",
        "Plots: " + (", ".join(f"[{p.name}](plots/{p.name})" for p in plots) or "not drawn (--no-write)"),
    ])
    print(body)
    if not args.no_write:
        write_section("ensemble-triton", body)
    return 0 if checked else 1


if __name__ == "__main__":
    sys.exit(main())
