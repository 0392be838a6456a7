"""Request logging's cost on the CPU ensemble, and the monitor's throughput (issue 17).

Three ensembles of the same trained DLRM in one tritonserver: ``plain`` (no logging), ``logged``
(exported with ``request_log``: the transform and the scorer log every request to a local
redis-server, off the request path) and, to split the cost, ``keyed`` (exported with
``request_log`` at a sampling rate of 1e-9: the request key made and routed to the scorer, no
record sent). perf_analyzer measures each at batch 1 (concurrency 1) and batch 1024 (concurrency
1, 2, 4) in rounds that alternate the order, on real held-out rows; the medians of the rounds are
compared. After each logged point the
bench waits until the loggers have sent everything, so the next point does not pay for them.
Served probabilities of both are checked against the PyTorch model before and after, and every
request the logged ensemble answered must be a record sent (or a drop counted) by both loggers.

Then ``tritonrec monitor``'s consumer (:class:`tritonrec.monitoring.monitor.Monitor`) reads what
the logged ensemble wrote at batch 1024 (and, reported beside it, at batch 1), with a label
reported for every request, and joins and writes it to a parquet sink (default label window,
600 s): rows per second, consumed, joined and written, timed from its first read to the last
entry acknowledged. The sink is checked: one row per row logged, each with its prediction and label.
The same streams are read once more by a monitor with drift and quality on (``--profile``, issue
18): its rows/s beside part 1's.

Targets (issue 17; this 2-core CPU machine): p99 at batch 1 with logging within 1.1x of without;
throughput at batch 1024 with logging within 0.95x; the monitor >= 2x the ensemble's best rows/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    header, inference_statistics, perf_point, served_difference, trained_criteo_ensemble, write_input_data, write_section,
)

STEPS = ("transform", "embeddings", "scorer")
MODELS = ("plain", "keyed", "logged")
"""The baseline, the same ensemble routing request keys but logging none (sampling 1e-9), and logging every request."""


def _stream_settled(client, stream: str, quiet_s: float = 0.5, timeout_s: float = 60.0) -> int:
    """Waits until the stream's length has not changed for ``quiet_s`` (the loggers are done); its length."""
    deadline = time.monotonic() + timeout_s
    length, since = client.xlen(stream), time.monotonic()
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.05)
        now = client.xlen(stream)
        if now != length:
            length, since = now, time.monotonic()
    return length


def _requests_answered(client, model: str) -> int:
    """Successful requests of ``model`` (Triton's statistics)."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats["inference_stats"]["success"].get("count", 0))


def _logged(metrics_url: str) -> dict[str, float]:
    """Records sent and dropped by each logging step (tritonrec's metrics on Triton's endpoint)."""
    from tritonrec.serving.client import scrape_metrics

    values = scrape_metrics(metrics_url)
    out = {}
    for step in ("logged_transform", "logged_scorer"):
        out[f"{step} sent"] = sum(v for k, v in values.items() if k.startswith("tritonrec_feedback_sent_total") and f'model="{step}"' in k)
        out[f"{step} dropped"] = sum(v for k, v in values.items() if k.startswith("tritonrec_feedback_dropped_total") and f'model="{step}"' in k)
    return out


def _logged_requests(redis_url: str, stream_client) -> dict[int, int]:
    """Request key -> rows of every request in the stream; reports a label (key % 2) for each."""
    from tritonrec.monitoring import report_labels
    from tritonrec.serving.request_log import REQUEST_STREAM, decode_record

    rows_of: dict[int, int] = {}
    for _, fields in stream_client.xrange(REQUEST_STREAM):
        record = decode_record(fields)
        if record.kind == "features":
            rows_of[record.key] = next(iter(record.tensors.values())).shape[0]
    report_labels(redis_url, list(rows_of), [k % 2 for k in rows_of])
    return rows_of


def _monitor_run(redis_url: str, rows_of: dict[int, int], work: Path, name: str, profile=None) -> dict[str, float]:
    """One Monitor (a consumer group of its own) over the whole stream, timed; with ``profile``, its
    Watch on (drift, quality). The sink is checked against the stream. Returns requests, rows,
    seconds, rows/s, windows."""
    from prometheus_client import CollectorRegistry

    from tritonrec.monitoring.monitor import Monitor
    from tritonrec.monitoring.sink import Sink
    from tritonrec.monitoring.watch import Watch

    registry = CollectorRegistry()
    watch = Watch(profile, registry=registry) if profile is not None else None
    sink = work / f"sink-{name}"
    monitor = Monitor(redis_url, sink, group=f"bench-{name}", registry=registry, watch=watch, log=lambda message: None)
    start = time.perf_counter()
    if not monitor.drain(timeout_s=600, block_ms=10):
        raise RuntimeError(f"monitor ({name}): not drained within 600 s")
    seconds = time.perf_counter() - start
    frame = Sink(sink).read()
    counts = frame.groupby("request_key").size().to_dict()
    if counts != rows_of:
        raise RuntimeError(f"monitor ({name}): the sink holds {len(counts)} requests / {len(frame)} rows, the stream {len(rows_of)} / {sum(rows_of.values())}")
    if frame.label.isna().any() or frame.probability.isna().any() or (frame.label != frame.request_key % 2).any():
        raise RuntimeError(f"monitor ({name}): {int(frame.label.isna().sum())} rows without their label, "
                           f"{int(frame.probability.isna().sum())} without their prediction")
    if watch is not None and len(frame) >= watch.window_rows and watch.windows == 0:
        raise RuntimeError(f"monitor ({name}): {len(frame):,} rows watched in no window")
    return {"requests": len(rows_of), "rows": monitor.rows_written, "seconds": seconds, "rows_s": monitor.rows_written / seconds,
            "windows": watch.windows if watch is not None else 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=2.0, help="perf_analyzer measurement window")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both models")
    parser.add_argument("--concurrency", default="1,2,4", help="concurrencies measured at batch 1024")
    parser.add_argument("--no-write", action="store_true", help="print only: leave RESULTS.md as it is")
    args = parser.parse_args(argv)

    import redis
    import tritonclient.grpc as grpcclient

    from tritonrec.export import export_ensemble
    from tritonrec.monitoring.profile import build_profile
    from tritonrec.monitoring.redis_server import RedisServer
    from tritonrec.serving.client import pack_request
    from tritonrec.serving.request_log import REQUEST_STREAM, RequestLogOptions
    from tritonrec.serving.server import TritonServer
    from tritonrec.serving.transform_model import TransformModel

    trained = trained_criteo_ensemble(args.train_rows, "bench-feedback-")
    work, pipeline, held, expected = trained.work, trained.pipeline, trained.held, trained.expected
    transform = TransformModel(pipeline.plan, "packed")
    data = work / "input.json"
    write_input_data(pack_request(transform, {c: v[:2048] for c, v in held.items()}), 2048, data)
    points = [(1, 1), *((1024, int(c)) for c in args.concurrency.split(","))]

    results: dict[tuple[str, int, int], list[dict[str, float]]] = {}
    with RedisServer(work / "redis") as redis_server:
        repo = work / "repo"
        export_ensemble(pipeline.plan, pipeline.store_dir, pipeline.scorer_dir, repo, "plain", layout="packed")
        # maxlen: 20,000 entries bound Redis's memory (about 2.7 GB of 1024-row requests of this model)
        export_ensemble(pipeline.plan, pipeline.store_dir, pipeline.scorer_dir, repo, "logged", layout="packed",
                        request_log=RequestLogOptions(redis_server.url, maxlen=20_000))
        export_ensemble(pipeline.plan, pipeline.store_dir, pipeline.scorer_dir, repo, "keyed", layout="packed",
                        request_log=RequestLogOptions(redis_server.url, maxlen=20_000, sample=1e-9))
        stream = redis.Redis.from_url(redis_server.url)
        with TritonServer(repo, log_path=work / "tritonserver.log") as server:
            client = grpcclient.InferenceServerClient(server.grpc_url)
            checks = [served_difference(client, m, transform, held, expected) for m in MODELS]
            for round_ in range(args.rounds):
                order = MODELS[round_ % len(MODELS):] + MODELS[:round_ % len(MODELS)]
                for batch, concurrency in points:
                    for model in order:
                        steps = [f"{model}_{s}" for s in STEPS]
                        before = inference_statistics(client, steps)
                        m = perf_point(server.grpc_url, model, batch, concurrency, data, work / "perf.csv", args.seconds)
                        after = inference_statistics(client, steps)
                        for step, name in zip(STEPS, steps):  # server compute per row, us
                            rows = after[name]["inferences"] - before[name]["inferences"]
                            m[step] = (after[name]["compute_ns"] - before[name]["compute_ns"]) / rows / 1e3 if rows else float("nan")
                        if model != "plain":
                            _stream_settled(stream, REQUEST_STREAM)
                        results.setdefault((model, batch, concurrency), []).append(m)
                        print(f"round {round_ + 1} {model:>6} b{batch:<5} c{concurrency}: {m['infer_s']:>10,.0f} rows/s "
                              f"p50 {m['p50_ms']:.3f} p99 {m['p99_ms']:.3f} ms", flush=True)
            checks += [served_difference(client, m, transform, held, expected) for m in MODELS]
            _stream_settled(stream, REQUEST_STREAM)
            answered = _requests_answered(client, "logged")
            logged = _logged(server.metrics_url)

            # the monitor over what the logged ensemble wrote: batch 1024, then batch 1; joining only, then
            # with drift and quality against a profile (of the held-out rows and their offline answers)
            profile = build_profile(pipeline.plan, held, predictions=expected)
            monitor_runs = {}
            for batch, concurrency in ((1024, 2), (1, 1)):
                stream.delete(REQUEST_STREAM, "tritonrec:labels")
                perf_point(server.grpc_url, "logged", batch, concurrency, data, work / "perf.csv", args.seconds)
                _stream_settled(stream, REQUEST_STREAM)
                rows_of = _logged_requests(redis_server.url, stream)
                for watched in (False, True):
                    run = _monitor_run(redis_server.url, rows_of, work, f"b{batch}{'-watch' if watched else ''}", profile if watched else None)
                    monitor_runs[(batch, watched)] = run
                    print(f"monitor over batch-{batch} requests{' with drift and quality' if watched else ''}: {run['rows_s']:,.0f} rows/s", flush=True)
            client.close()

    def median(model, batch, concurrency, key):
        return statistics.median(r[key] for r in results[(model, batch, concurrency)])

    checked = max(checks) <= 1e-5
    every_request_logged = all(logged[f"{step} sent"] + logged[f"{step} dropped"] == answered for step in ("logged_transform", "logged_scorer"))
    table = [
        "| batch | concurrency | figure (median of rounds) | logging off (plain) | keys only (keyed) | logging on (logged) | keyed / plain | logged / plain |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for batch, concurrency in points:
        for key, label in (("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("infer_s", "rows/s")):
            off, keyed, on = (median(m, batch, concurrency, key) for m in MODELS)
            form = "{:,.0f}" if key == "infer_s" else "{:,.3f}"
            table.append(f"| {batch} | {concurrency} | {label} | {form.format(off)} | {form.format(keyed)} | {form.format(on)} | "
                         f"{keyed / off:.3f} | {on / off:.3f} |")
    compute = ["| batch | concurrency | model | " + " | ".join(f"{s} us" for s in STEPS) + " | all steps us |", "|---:|---:|---|---:|---:|---:|---:|"]
    for batch, concurrency in points:
        for model in MODELS:
            values = [median(model, batch, concurrency, s) for s in STEPS]
            compute.append(f"| {batch} | {concurrency} | {model} | " + " | ".join(f"{v:,.2f}" for v in values) + f" | {sum(values):,.2f} |")
    rounds = ["| model | batch | concurrency | " + " | ".join(f"round {i + 1} rows/s, p99 ms" for i in range(args.rounds)) + " |",
              "|---|---:|---:|" + "---|" * args.rounds]
    for (model, batch, concurrency), runs in results.items():
        rounds.append(f"| {model} | {batch} | {concurrency} | " + " | ".join(f"{r['infer_s']:,.0f}, {r['p99_ms']:.3f}" for r in runs) + " |")
    p99_ratio = median("logged", 1, 1, "p99_ms") / median("plain", 1, 1, "p99_ms")
    best = {m: max(median(m, b, c, "infer_s") for b, c in points if b == 1024) for m in MODELS}
    throughput_ratio = best["logged"] / best["plain"]
    ensemble_best = max(best.values())
    monitor_table = [
        "| requests logged at | monitor | requests | rows | windows | seconds | monitor rows/s | / ensemble best rows/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (batch, watched), run in monitor_runs.items():
        monitor_table.append(f"| batch {batch} | {'join + drift + quality (--profile)' if watched else 'join (part 1)'} | {run['requests']:,} | "
                             f"{run['rows']:,} | {run['windows']} | {run['seconds']:.2f} | {run['rows_s']:,.0f} | {run['rows_s'] / ensemble_best:.2f} |")
    monitor_ratio = monitor_runs[(1024, False)]["rows_s"] / ensemble_best
    watched_ratio = monitor_runs[(1024, True)]["rows_s"] / ensemble_best
    verdicts = [
        f"- p99 at batch 1 (concurrency 1) with logging within 1.1x of without: {p99_ratio:.3f}x, {'met' if p99_ratio <= 1.1 else 'MISSED'}",
        f"- Best throughput at batch 1024 with logging within 0.95x of without: {best['logged']:,.0f} / {best['plain']:,.0f} rows/s = "
        f"{throughput_ratio:.3f}x, {'met' if throughput_ratio >= 0.95 else 'MISSED'}",
        f"- Monitor >= 2x the ensemble's best rows/s ({ensemble_best:,.0f}): {monitor_runs[(1024, False)]['rows_s']:,.0f} rows/s = {monitor_ratio:.2f}x, "
        f"{'met' if monitor_ratio >= 2 else 'MISSED'}; with drift and quality on (issue 18, no target): "
        f"{monitor_runs[(1024, True)]['rows_s']:,.0f} rows/s = {watched_ratio:.2f}x",
        f"- Every request the logged ensemble answered ({answered:,}) logged or counted as dropped by both steps: "
        f"{'yes' if every_request_logged else 'NO'} ({', '.join(f'{k} {v:,.0f}' for k, v in logged.items())})",
        f"- Served probabilities of both ensembles equal the offline PyTorch model within 1e-5 before and after: {'yes' if checked else 'NO'} "
        f"(max |difference| {max(checks):.2e}); the monitor's sinks hold one row per row logged and the labels reported: yes",
    ]
    body = "\n".join([
        header("Request logging on the CPU ensemble, and the monitor's throughput"),
        f"tritonserver 2.51, one KIND_CPU instance per step, dynamic batching; DLRM (dim 16) trained on {args.train_rows:,} rows; "
        f"perf_analyzer 2.44 over gRPC on loopback ({args.seconds:g} s windows), 2048 held-out rows as input data, packed; redis-server "
        "(Debian's, no persistence) on loopback, on the same cores as the server and the client. `logged` is the same ensemble exported "
        "with `request_log` (every request, both steps logging; maxlen 20,000); `keyed` with `request_log` at sampling 1e-9 (the request "
        f"key made and routed to the scorer, nothing sent). {args.rounds} rounds, the order rotated each round; the medians are compared. "
        "Monitor: one consumer (`Monitor.drain`, 1,000 entries a read, label window 600 s) over every request the logged ensemble wrote "
        "in a perf_analyzer run, a label reported for each; timed from its first read to the last acknowledgement; then again (a new "
        "consumer group) with drift and quality on (`--profile`: a profile of the 4,096 held-out rows and their offline answers, "
        "windows of 10,000 rows, AUC over the last 10,000 labelled rows).\n",
        *table, "", "Server compute time per row of each step, microseconds (Triton's compute input + infer + output around each point; median of rounds):", "",
        *compute, "", *monitor_table, "", *verdicts, "", "Each round:", "", *rounds,
    ])
    print(body)
    if not args.no_write:
        write_section("feedback", body)
    return 0 if checked and every_request_logged else 1


if __name__ == "__main__":
    sys.exit(main())
