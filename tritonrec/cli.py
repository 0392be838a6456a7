"""The ``tritonrec`` command: serve, export, export-transform, query, perf, feedback, install-backends, demo."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tritonrec.serving.server import TritonServer


ADMIN_KEY_ENV = "TRITONREC_ADMIN_KEY"
_RESERVED_OPTIONS = ("--grpc-restricted-protocol", "--http-restricted-api", "--allow-http", "--http-address",
                     "--grpc-address", "--metrics-address", "--model-repository", "--backend-directory")


def _admin_key(args: argparse.Namespace) -> str | None:
    """The admin key: from ``--admin-key-file``, else ``$TRITONREC_ADMIN_KEY``, else a random one
    nobody is told (the admin APIs then stay closed); None with ``--allow-admin``."""
    import os  # noqa: PLC0415

    from tritonrec.serving.server import ServerError, check_admin_key, new_admin_key  # noqa: PLC0415

    if args.allow_admin:
        if args.admin_key_file:
            raise ServerError("--allow-admin opens the admin APIs to everyone: it takes no --admin-key-file")
        return None
    if args.admin_key_file:
        try:
            text = open(args.admin_key_file, encoding="utf-8").read()  # noqa: SIM115
        except (OSError, UnicodeDecodeError) as e:
            raise ServerError(f"--admin-key-file {args.admin_key_file}: cannot read it ({e.__class__.__name__})") from None
        return check_admin_key(text, f"--admin-key-file {args.admin_key_file}")
    if os.environ.get(ADMIN_KEY_ENV):
        return check_admin_key(os.environ[ADMIN_KEY_ENV], f"${ADMIN_KEY_ENV}")
    return new_admin_key()


def _serve(args: argparse.Namespace) -> int:
    from tritonrec.serving.server import ServerError, TritonServer, free_port  # noqa: PLC0415

    if args.http_port is not None and not args.http:
        print("tritonrec serve: --http-port needs --http (HTTP is off by default)", file=sys.stderr)
        return 2
    for option in args.tritonserver_args:
        name = option.split("=", 1)[0]
        if name in _RESERVED_OPTIONS:
            print(f"tritonrec serve: {name} after --: tritonrec serve sets it itself (see --host, --http, --allow-admin)", file=sys.stderr)
            return 2
    try:
        server = TritonServer(
            args.model_repository,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            tritonserver=args.tritonserver,
            extra_args=tuple(args.tritonserver_args),
            host=args.host,
            http=args.http,
            admin_key=_admin_key(args),
        )
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: stop.set())
        server.start(timeout_s=args.timeout)
    except ServerError as e:
        print(f"tritonrec serve: {e}", file=sys.stderr)
        return 1
    if args.check:
        return _check(server, args)
    from tritonrec.serving.supervise import Supervisor, SupervisorMetrics, SupervisorOptions  # noqa: PLC0415

    metrics = SupervisorMetrics()
    supervisor_port = args.supervisor_metrics_port or free_port(args.host)
    try:
        metrics.serve(supervisor_port, args.host)
    except OSError as e:
        server.stop()
        print(f"tritonrec serve: --supervisor-metrics-port {supervisor_port}: {e.strerror}", file=sys.stderr)
        return 1
    _announce(server, args, supervisor_port)
    options = SupervisorOptions(restarts=args.restart, canary_interval_s=args.canary_interval,
                                canary_timeout_s=args.canary_timeout, start_timeout_s=args.timeout)
    try:
        return Supervisor(server, options, metrics).run(stop)
    finally:
        metrics.close()
        if args.endpoints_file:
            from tritonrec.serving.endpoints import remove_endpoints  # noqa: PLC0415

            remove_endpoints(args.endpoints_file)


def _announce(server: TritonServer, args: argparse.Namespace, supervisor_port: int) -> None:
    """The banner, and the endpoints file when asked for (see :mod:`tritonrec.serving.endpoints`)."""
    from tritonrec.serving.endpoints import write_endpoints  # noqa: PLC0415
    from tritonrec.serving.server import ADMIN_CATEGORIES  # noqa: PLC0415

    canary = f"http://{args.host}:{supervisor_port}/metrics"
    print(f"tritonserver ready: {server.model_repository}")
    print(f"  gRPC     {server.grpc_url}")
    print(f"  HTTP     {server.http_url or 'off (--http serves it)'}")
    print(f"  metrics  {server.metrics_url}")
    print(f"  canary   {canary}")
    print(f"  log      {server.log_path}")
    print(f"  admin    {'open to every client (--allow-admin)' if args.allow_admin else 'restricted (' + ', '.join(ADMIN_CATEGORIES) + ')'}")
    if args.endpoints_file:
        endpoints = {"grpc": server.grpc_url, "http": server.http_url, "metrics": server.metrics_url, "canary": canary, "pid": os.getpid(),
                     "repository": str(server.model_repository)}
        print(f"  endpoints {write_endpoints(args.endpoints_file, endpoints)}")
    print("Ctrl-C or SIGTERM stops it.", flush=True)


def _check(server: TritonServer, args: argparse.Namespace) -> int:
    """``serve --check``: one canary per READY model, a line each, then stop; 0 when all pass."""
    from tritonclient.utils import InferenceServerException  # noqa: PLC0415

    from tritonrec.serving.canary import CanaryProber  # noqa: PLC0415

    prober = CanaryProber(server.grpc_url, args.canary_timeout, server.admin_headers())
    try:
        results = prober.probe_all()
    except InferenceServerException as e:
        print(f"tritonrec serve --check: the server did not list its models: {e.message()}", file=sys.stderr)
        results = None
    finally:
        prober.close()
        server.stop()
    if results is None:
        return 1
    if not results:
        print("tritonrec serve --check: no model is READY (nothing to probe)", file=sys.stderr)
        return 1
    for result in results:
        line = f"canary {result.model}: {'ok' if result.ok else 'FAILED: ' + result.reason} ({result.seconds * 1e3:.1f} ms)"
        print(line, file=sys.stdout if result.ok else sys.stderr, flush=True)
    return 0 if all(r.ok for r in results) else 1


def _input_dtypes(specs: list[str]) -> dict[str, str]:
    """``--input-dtype COLUMN=DTYPE`` options as a mapping; ValueError naming a malformed one."""
    out = {}
    for spec in specs:
        column, sep, dtype = spec.partition("=")
        if not sep or not column or not dtype:
            raise ValueError(f"--input-dtype {spec!r}: expected COLUMN=DTYPE, e.g. C1=int32")
        out[column] = dtype
    return out


def _request_log(args: argparse.Namespace) -> Any:
    """The RequestLogOptions of ``--log-redis`` and its options; None without it (ValueError naming a bad one)."""
    from tritonrec.serving.request_log import REQUEST_STREAM, RequestLogOptions  # noqa: PLC0415

    if args.log_redis is None:
        if args.log_sample != 1.0 or args.log_maxlen is not None or args.log_stream is not None:
            raise ValueError("--log-sample, --log-maxlen and --log-stream need --log-redis URL")
        return None
    return RequestLogOptions(args.log_redis, stream=args.log_stream or REQUEST_STREAM, sample=args.log_sample,
                             **({"maxlen": args.log_maxlen} if args.log_maxlen is not None else {}))


def _export_transform(args: argparse.Namespace) -> int:
    from tritonrec.export import export_transform  # noqa: PLC0415
    from tritonrec.transform.compile import UnsupportedOpError  # noqa: PLC0415
    from tritonrec.transform.plan import PlanLoadError  # noqa: PLC0415

    try:
        model_dir = export_transform(
            args.workflow,
            args.repository,
            args.name,
            layout=args.layout,
            max_batch_size=args.max_batch_size,
            instance_count=args.instances,
            instance_kind="KIND_GPU" if args.gpu else "KIND_CPU",
            hashing=args.hashing,
            null_string=args.null_string,
            input_dtypes=_input_dtypes(args.input_dtype),
            request_log=_request_log(args),
        )
    except (UnsupportedOpError, PlanLoadError, FileNotFoundError, ValueError, TypeError, ImportError) as e:
        print(f"tritonrec export-transform: {e}", file=sys.stderr)
        return 1
    print(f"wrote {model_dir} ({args.layout} layout)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from embedding_cache import GpuCacheOptions, HostOptions, StoreFormatError  # noqa: PLC0415
    from tritonrec.export import ServedScorer, export_ensemble  # noqa: PLC0415
    from tritonrec.scorer.artifact import ScorerFormatError  # noqa: PLC0415
    from tritonrec.transform.compile import UnsupportedOpError  # noqa: PLC0415
    from tritonrec.transform.plan import PlanLoadError  # noqa: PLC0415

    if (args.scorer is None) == (args.scorer_model is None):
        print("tritonrec export: give either --scorer DIR or --scorer-model NAME", file=sys.stderr)
        return 2
    scorer = args.scorer
    if args.scorer_model is not None:
        missing = [f"--{n}" for n in ("dense-input", "embeddings-input", "scorer-output") if getattr(args, n.replace("-", "_")) is None]
        if missing:
            print(f"tritonrec export: --scorer-model needs {', '.join(missing)}", file=sys.stderr)
            return 2
        scorer = ServedScorer(args.scorer_model, args.dense_input, args.embeddings_input, args.scorer_output, args.scorer_version)
    try:
        gpu_cache = None
        if args.gpu_cache_bytes:
            gpu_cache = GpuCacheOptions(args.gpu_cache_bytes, args.gpu_cache_dtype, args.gpu_eviction, args.gpu_admission,
                                        args.gpu_async_insert)
        model_dir = export_ensemble(
            args.workflow, args.store, scorer, args.repository, args.name,
            layout=args.layout, max_batch_size=args.max_batch_size, instance_count=args.instances,
            missing_key_policy=args.missing_key_policy, host=HostOptions(budget_bytes=args.host_budget_bytes),
            scorer_kind="KIND_GPU" if args.scorer_gpu else "KIND_CPU",
            transform_kind="KIND_GPU" if args.transform_gpu else "KIND_CPU",
            lookup_kind="KIND_GPU" if gpu_cache else "KIND_CPU", gpu_cache=gpu_cache,
            multi_hot_combiner=args.multi_hot_combiner, null_string=args.null_string, input_dtypes=_input_dtypes(args.input_dtype),
            cast_float64=args.cast_float64, output_name=args.output_name, request_log=_request_log(args),
        )
    except (UnsupportedOpError, PlanLoadError, StoreFormatError, ScorerFormatError, FileNotFoundError, ValueError, TypeError,
            ImportError) as e:
        print(f"tritonrec export: {e}", file=sys.stderr)
        return 1
    version = max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    print(f"wrote ensemble {model_dir} (version {version}, {args.layout} inputs) and its steps {args.name}_transform, {args.name}_embeddings"
          + ("" if args.scorer_model else f", {args.name}_scorer"))
    return 0


def _query(args: argparse.Namespace) -> int:
    from tritonclient.utils import InferenceServerException  # noqa: PLC0415

    from tritonrec.monitoring.sink import SinkError  # noqa: PLC0415
    from tritonrec.serving.endpoints import EndpointsError, read_endpoints  # noqa: PLC0415
    from tritonrec.serving.query import TRITON_GRPC_DEFAULT, QueryError, query  # noqa: PLC0415

    try:
        url = args.url or (read_endpoints(args.endpoints_file)["grpc"] if args.endpoints_file else TRITON_GRPC_DEFAULT)
        predictions = query(url, args.model, args.file, batch_size=args.batch_size, output=args.output, log_dir=args.log)
    except (QueryError, EndpointsError, SinkError) as e:
        print(f"tritonrec query: {e}", file=sys.stderr)
        return 1
    except InferenceServerException as e:
        hint = "" if args.url or args.endpoints_file else (
            f" (no --url or --endpoints-file: tried Triton's default {TRITON_GRPC_DEFAULT}; `tritonrec serve` picks free ports "
            "and writes them to its --endpoints-file)")
        print(f"tritonrec query: {e}{hint}", file=sys.stderr)
        return 1
    where = f" to {args.output}" if args.output else ""
    logged = f"; logged to the sink {args.log}" if args.log else ""
    print(f"scored {len(predictions):,} rows with {args.model}{where}{logged}")
    if not args.output:
        print(predictions.head(10).to_string())
    return 0


def _int_list(text: str) -> tuple[int, ...]:
    """``1,64,1024`` as integers (argparse ``type``)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers separated by commas, e.g. 1,64,1024") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers >= 1")
    return values


def _perf(args: argparse.Namespace) -> int:
    import tempfile  # noqa: PLC0415

    from tritonclient.utils import InferenceServerException  # noqa: PLC0415

    from tritonrec.serving.endpoints import EndpointsError, read_endpoints  # noqa: PLC0415
    from tritonrec.serving.perf import PerfError, PerfOptions, run_perf  # noqa: PLC0415
    from tritonrec.serving.query import TRITON_GRPC_DEFAULT, QueryError  # noqa: PLC0415

    try:
        endpoints = read_endpoints(args.endpoints_file) if args.endpoints_file else {}
        url = args.url or endpoints.get("grpc") or TRITON_GRPC_DEFAULT
        options = PerfOptions(batch_sizes=args.batch_sizes, concurrency=args.concurrency, rows=args.rows, request_count=args.request_count,
                              stability=args.stability, max_trials=args.max_trials, perf_analyzer=args.perf_analyzer)
        with tempfile.TemporaryDirectory(prefix="tritonrec-perf-") as scratch:
            report = run_perf(url, args.model, args.data, args.work_dir or scratch, options,
                              repository=args.repository or endpoints.get("repository"))
    except (PerfError, QueryError, EndpointsError) as e:
        print(f"tritonrec perf: {e}", file=sys.stderr)
        return 1
    except InferenceServerException as e:
        print(f"tritonrec perf: {e.message()} (server {url})", file=sys.stderr)
        return 1
    print(f"{args.model}: {report.rows:,} rows of {args.data}; answers checked: {report.checked}")
    print(report.table())
    if args.csv:
        import csv  # noqa: PLC0415
        import dataclasses  # noqa: PLC0415

        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[field.name for field in dataclasses.fields(report.points[0])])
            writer.writeheader()
            writer.writerows(dataclasses.asdict(p) for p in report.points)
    return 0


def _feedback(args: argparse.Namespace) -> int:
    from tritonrec.monitoring.labels import LabelError, report_labels  # noqa: PLC0415
    from tritonrec.serving.query import QueryError, read_rows  # noqa: PLC0415

    try:
        frame = read_rows(args.file)
        id_column = args.id_column
        if id_column == "request_id" and id_column not in frame.columns and "key" in frame.columns:
            id_column = "key"  # the request keys the ensemble returned
        for column in (id_column, args.label_column):
            if column not in frame.columns:
                raise LabelError(f"{args.file}: no column {column!r} (columns: {list(frame.columns)})")
        written = report_labels(args.redis, frame[id_column].tolist(), frame[args.label_column].tolist(), stream=args.stream)
    except (LabelError, QueryError) as e:
        print(f"tritonrec feedback: {e}", file=sys.stderr)
        return 1
    print(f"reported {written:,} labels to {args.stream} at {args.redis}")
    return 0


def _monitor(args: argparse.Namespace) -> int:
    import signal  # noqa: PLC0415

    import redis  # noqa: PLC0415

    from tritonrec.monitoring.monitor import Monitor  # noqa: PLC0415
    from tritonrec.monitoring.profile import ProfileError  # noqa: PLC0415
    from tritonrec.monitoring.sink import SinkError  # noqa: PLC0415

    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    registry = CollectorRegistry()
    try:
        watch = _monitor_watch(args, registry)
    except (ValueError, OSError) as e:  # a bad option or profile, an unwritable audit log, a damaged profile
        print(f"tritonrec monitor: {e}", file=sys.stderr)
        return 2
    try:
        monitor = Monitor(args.redis, args.sink, label_window_s=args.label_window, request_stream=args.request_stream,
                          label_stream=args.label_stream, group=args.group, consumer=args.consumer, count=args.count,
                          registry=registry, watch=watch)
    except (SinkError, ValueError) as e:
        print(f"tritonrec monitor: {f'--profile {args.profile}: ' if isinstance(e, ProfileError) else ''}{e}", file=sys.stderr)
        return 2
    except (redis.RedisError, OSError) as e:
        print(f"tritonrec monitor: redis {args.redis}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.metrics_port is not None:
        from prometheus_client import start_http_server  # noqa: PLC0415

        start_http_server(args.metrics_port, addr=args.metrics_address, registry=monitor.metrics.registry)
    stopping = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.append(True))
    print(f"tritonrec monitor: {args.redis} ({args.request_stream}, {args.label_stream}) -> {args.sink}"
          + (f"; metrics on {args.metrics_address}:{args.metrics_port}" if args.metrics_port is not None else ""), flush=True)
    monitor.run(lambda: bool(stopping))
    if watch is not None and watch.action is not None:
        watch.action.close(timeout_s=10)
    print(f"tritonrec monitor: stopped after {monitor.rows_written:,} rows; {monitor.pending_requests:,} requests read and not "
          "written (acknowledged later, after the next start)", flush=True)
    return 0


def _monitor_watch(args: argparse.Namespace, registry: Any) -> Any:
    """The Watch of ``--profile`` (None without it): drift, quality, alerts, ``--on-alert``, the audit log.
    ValueError naming a bad option; ProfileError / IntegrityError for a bad profile."""
    if args.profile is None:
        if args.on_alert is not None:
            raise ValueError("--on-alert needs --profile PROFILE: alerts come from comparing traffic with the training profile")
        return None
    from pathlib import Path  # noqa: PLC0415

    from tritonrec.monitoring.alerts import ActionRunner, AuditLog  # noqa: PLC0415
    from tritonrec.monitoring.profile import Profile  # noqa: PLC0415
    from tritonrec.monitoring.watch import Watch  # noqa: PLC0415

    profile = Profile.load(args.profile)
    audit = AuditLog(args.audit_log or Path(args.sink) / "_monitor_audit.jsonl")
    action = ActionRunner(args.on_alert, audit, cooldown_s=args.cooldown, timeout_s=args.action_timeout) if args.on_alert else None
    watch = Watch(profile, window_rows=args.window_rows, window_s=args.window_seconds, auc_drop=args.auc_drop, psi_alert=args.psi_alert,
                  js_alert=args.js_alert, oov_alert=args.oov_alert, dataset_share=args.drift_share,
                  alert_windows=args.alert_windows, quality_rows=args.quality_rows, quality_min_rows=min(args.quality_rows, 1000),
                  registry=registry, audit=audit, action=action)
    noisy = watch.noisy_columns()
    if noisy:
        listed = ", ".join(f"{c} {v:.3f}" for c, v in sorted(noisy.items(), key=lambda cv: -cv[1])[:5])
        print(f"tritonrec monitor: warning: in windows of {args.window_rows:,} rows, sampling alone gives a JS distance of {listed}"
              f"{' ...' if len(noisy) > 5 else ''} ({len(noisy)} columns at half of --js-alert {args.js_alert} or more): unchanged traffic "
              "may be flagged; use larger windows (--window-rows) or a profile of fewer top values (tritonrec profile --top)",
              file=sys.stderr, flush=True)
    return watch


def _add_monitor(sub: Any) -> None:
    """Subcommand ``monitor``."""
    from tritonrec.monitoring.labels import LABEL_STREAM  # noqa: PLC0415
    from tritonrec.serving.request_log import REQUEST_STREAM  # noqa: PLC0415

    monitor = sub.add_parser(
        "monitor", help="join the request and label streams into hourly parquet partitions (the next training data)",
        description="Consumes the request stream (logged by an ensemble exported with --log-redis) and the label stream "
                    "(tritonrec feedback) through a Redis consumer group, joins each request's features, prediction and "
                    "label, and writes the rows to SINK/date=YYYY-MM-DD/hour=HH/part-*.parquet, each request once, "
                    "acknowledging entries only after their rows are written. Stops on SIGTERM or Ctrl-C.")
    monitor.add_argument("--redis", required=True, metavar="URL", help="redis://HOST:PORT[/DB]")
    monitor.add_argument("--sink", required=True, metavar="DIR", help="the sink directory (created)")
    monitor.add_argument("--label-window", type=float, default=600.0, metavar="SECONDS",
                         help="how long a request waits for its label (and a label for its request) before it is written without")
    monitor.add_argument("--metrics-port", type=int, metavar="P", help="serve Prometheus metrics on this port")
    monitor.add_argument("--metrics-address", default="127.0.0.1", help="the metrics server's address (default loopback)")
    monitor.add_argument("--request-stream", default=REQUEST_STREAM, help="the request stream's key")
    monitor.add_argument("--label-stream", default=LABEL_STREAM, help="the label stream's key")
    monitor.add_argument("--group", default="tritonrec-monitor", help="the consumer group")
    monitor.add_argument("--consumer", default="monitor",
                         help="this monitor's name in the group; keep it across restarts (it reads its unacknowledged entries again)")
    monitor.add_argument("--count", type=int, default=1000, help="entries read per stream per step")
    watch = monitor.add_argument_group("drift, quality and alerts (with --profile)")
    watch.add_argument("--profile", metavar="PROFILE", help="the training profile (tritonrec profile) traffic is compared with")
    watch.add_argument("--window-rows", type=int, default=10_000, help="rows a window holds at most (default 10,000)")
    watch.add_argument("--window-seconds", type=float, default=300.0, help="seconds a window lasts at most (default 300)")
    watch.add_argument("--quality-rows", type=int, default=10_000, help="the last labelled rows the AUC covers, per model version")
    watch.add_argument("--psi-alert", type=float, default=0.25, help="a continuous column drifted at this PSI (default 0.25)")
    watch.add_argument("--js-alert", type=float, default=0.1, help="a categorical column drifted at this JS distance (default 0.1)")
    watch.add_argument("--oov-alert", type=float, default=0.05,
                       help="a categorical column drifted when its out-of-vocabulary rate is this much above the profile's (default 0.05)")
    watch.add_argument("--drift-share", type=float, default=0.5, help="dataset drift: this share of the columns drifted (default 0.5)")
    watch.add_argument("--auc-drop", type=float, default=0.02, help="the AUC alert: this far below the profile's validation AUC")
    watch.add_argument("--alert-windows", type=int, default=3, help="consecutive windows below it that raise the AUC alert")
    watch.add_argument("--on-alert", metavar="CMD", help="run CMD (no shell) when an alert is raised; env TRITONREC_ALERT, TRITONREC_ALERT_VALUES")
    watch.add_argument("--cooldown", type=float, default=3600.0, help="seconds after a start before CMD runs again (default 3600)")
    watch.add_argument("--action-timeout", type=float, default=3600.0, help="seconds CMD may run before it is killed (default 3600)")
    watch.add_argument("--audit-log", metavar="FILE", help="JSON lines of every decision (default SINK/_monitor_audit.jsonl)")
    monitor.set_defaults(func=_monitor)


def _profile(args: argparse.Namespace) -> int:
    from tritonrec.monitoring.profile import ProfileError, profile_files  # noqa: PLC0415
    from tritonrec.serving.query import QueryError  # noqa: PLC0415
    from tritonrec.serving.reference import NoReferenceError  # noqa: PLC0415
    from tritonrec.transform.plan import PlanLoadError  # noqa: PLC0415

    try:
        profile = profile_files(args.data, args.workflow, args.output, model=args.model, validation=args.validation, bins=args.bins, top=args.top)
    except (ProfileError, QueryError, NoReferenceError, PlanLoadError, OSError) as e:
        print(f"tritonrec profile: {e}", file=sys.stderr)
        return 1
    quality = (f"; validation AUC {profile.validation['auc']:.4f}, log loss {profile.validation['log_loss']:.4f} on "
               f"{profile.validation['rows']:,} rows" if profile.validation else "")
    print(f"profiled {profile.rows:,} rows: {len(profile.continuous)} continuous, {len(profile.categorical)} categorical columns"
          f"{quality} -> {args.output} (plan {profile.plan_fingerprint[:12]})")
    return 0


def _add_profile(sub: Any) -> None:
    """Subcommand ``profile``."""
    profile = sub.add_parser("profile", help="the training profile that tritonrec monitor measures drift and quality against",
                             description="Profiles the raw training rows for the workflow's plan: quantile bins of continuous "
                                         "columns, top values (Categorify's fit-time counts) and OOV rates of categorical ones; with "
                                         "--model and --validation, the validation predictions' distribution, AUC and log loss. "
                                         "Written as one sealed JSON file carrying the plan's fingerprint.")
    profile.add_argument("data", help="raw training rows, .parquet or .csv")
    profile.add_argument("--workflow", required=True, metavar="DIR", help="the fitted NVTabular workflow directory (or a plan directory)")
    profile.add_argument("--model", metavar="MODEL_DIR", help="an exported ensemble's directory (<repository>/<name>), run in process")
    profile.add_argument("--validation", metavar="FILE", help="validation rows with a 'label' column (with --model)")
    profile.add_argument("-o", "--output", required=True, metavar="PROFILE", help="the profile file to write (JSON)")
    profile.add_argument("--bins", type=int, default=10, help="quantile bins of a continuous column (default 10)")
    profile.add_argument("--top", type=int, default=100, help="most frequent values kept per categorical column (default 100)")
    profile.set_defaults(func=_profile)


def _add_feedback(sub: Any) -> None:
    """Subcommand ``feedback``."""
    from tritonrec.monitoring.labels import LABEL_STREAM  # noqa: PLC0415 - no redis import at module level

    feedback = sub.add_parser("feedback", help="publish delayed labels (clicks) from a file to the label stream")
    feedback.add_argument("file", help=".parquet or .csv with a request id column and a 0/1 label column")
    feedback.add_argument("--redis", required=True, metavar="URL", help="redis://HOST:PORT[/DB]")
    feedback.add_argument("--id-column", default="request_id",
                          help="the column of request ids (the client's ids, or the request keys the ensemble returned; "
                               "'key' is taken when request_id is absent)")
    feedback.add_argument("--label-column", default="label", help="the column of labels, 0 or 1")
    feedback.add_argument("--stream", default=LABEL_STREAM, help="the label stream's key")
    feedback.set_defaults(func=_feedback)


def _demo(args: argparse.Namespace) -> int:
    from tritonrec.pipeline.demo import DemoOptions, run_demo  # noqa: PLC0415

    import dataclasses  # noqa: PLC0415

    # every demo option has its flag of the same name
    return run_demo(DemoOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoOptions) if hasattr(args, f.name)}))


def _add_serve(sub: Any) -> None:
    """Subcommand ``serve``."""
    from tritonrec.serving.server import ADMIN_CATEGORIES  # noqa: PLC0415 - standard library only

    serve = sub.add_parser(
        "serve", help="run tritonserver on a model repository with tritonrec's backends, supervised",
        description="Runs tritonserver on MODEL_REPOSITORY with tritonrec's backends; secure by default: loopback "
                    f"only, gRPC only, the admin APIs ({', '.join(ADMIN_CATEGORIES)}) behind a key. Options after -- go to tritonserver.",
        usage="tritonrec serve MODEL_REPOSITORY [options] [-- TRITONSERVER_OPTION ...]",
    )
    serve.add_argument("model_repository", help="the model repository (e.g. written by tritonrec export)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    serve.add_argument("--http", action="store_true",
                       help="serve HTTP/JSON too (Triton 2.51's JSON parser can be crashed by one deeply nested body: "
                            "expose it only to trusted clients)")
    serve.add_argument("--http-port", type=int, help="HTTP port with --http (default: a free one)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port (default: a free one; the banner prints it)")
    serve.add_argument("--metrics-port", type=int, help="Triton's metrics port (default: a free one)")
    serve.add_argument("--allow-admin", action="store_true",
                       help="leave Triton's admin APIs (model loading, shared memory, trace, logging) open to every client")
    serve.add_argument("--admin-key-file",
                       help=f"file holding the admin key (else ${ADMIN_KEY_ENV}; else a random key: the admin APIs stay closed). "
                            "Clients send it in the header admin-key (HTTP) or triton-grpc-protocol-admin-key (gRPC)")
    serve.add_argument("--restart", type=int, default=0, metavar="N", help="restart tritonserver up to N times when it dies")
    serve.add_argument("--canary-interval", type=float, default=5.0, metavar="S",
                       help="seconds between canary requests to every model (0: none)")
    serve.add_argument("--canary-timeout", type=float, default=10.0, metavar="S", help="seconds a canary answer may take")
    serve.add_argument("--supervisor-metrics-port", type=int, help="port of the canary and restart metrics (default: a free one)")
    serve.add_argument("--check", action="store_true",
                       help="start, send one canary request to every model, stop; exit 1 when any fails")
    serve.add_argument("--tritonserver", help="path of the tritonserver binary (default: PATH, then the bundled one)")
    serve.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    serve.add_argument("--endpoints-file", metavar="FILE",
                       help="write the chosen addresses here as JSON once ready (tritonrec query --endpoints-file reads it); removed at exit")
    serve.set_defaults(func=_serve)


def _add_model_arguments(parser: argparse.ArgumentParser, name_help: str, layout: str, layout_help: str) -> None:
    """The arguments both exports take: workflow, repository, --name, --layout, --max-batch-size, --input-dtype, --log-*, --null-string."""
    parser.add_argument("workflow", help="directory of a saved nvtabular.Workflow (or of a saved plan)")
    parser.add_argument("repository", help="model repository to write into")
    parser.add_argument("--name", required=True, help=name_help)
    parser.add_argument("--layout", choices=("per-column", "packed"), default=layout, help=layout_help)
    parser.add_argument("--max-batch-size", type=int, default=16384, help="the models' max_batch_size (rows per batch)")
    parser.add_argument("--input-dtype", action="append", default=[], metavar="COLUMN=DTYPE",
                        help="the dtype clients send a raw column as (per-column layout; COLUMN may be a pattern, C*), cast to "
                             "the plan's: e.g. --input-dtype 'C*=int32' for Merlin's Criteo client; repeat for more")
    parser.add_argument("--log-redis", metavar="URL",
                        help="log every request to a Redis Stream at URL (redis://HOST:PORT[/DB]), off the request path: raw tensors, "
                             "answers and a request key the model returns (request_key)")
    parser.add_argument("--log-sample", type=float, default=1.0, metavar="SHARE", help="with --log-redis: share of requests logged, by request key")
    parser.add_argument("--log-maxlen", type=int, metavar="N", help="with --log-redis: trim the stream to about N entries (default 1,000,000)")
    parser.add_argument("--log-stream", metavar="KEY", help="with --log-redis: the stream's key (default tritonrec:requests)")
    parser.add_argument("--null-string", metavar="S",
                        help="a string column's value that means null, as NVTabular's missing value (Triton's BYTES has no "
                             "null): e.g. --null-string '' for clients that send missing categories as empty strings")


def _add_export_transform(sub: Any) -> None:
    """Subcommand ``export-transform``."""
    export = sub.add_parser("export-transform", help="compile a fitted NVTabular workflow into a Triton model")
    _add_model_arguments(export, "model name", "per-column",
                         "input layout: per-column (a tensor per column, NVTabular's own convention: a drop-in for a "
                         "merlin-systems transform model's clients) or packed (a tensor per dtype, faster)")
    export.add_argument("--instances", type=int, default=1, help="instances")
    export.add_argument("--gpu", action="store_true", help="KIND_GPU instances: the plan runs with cupy on the GPU")
    export.add_argument("--hashing", choices=("auto", "cpu"), default="auto",
                        help="auto: refuse hash ops of a workflow saved where cudf was installed (GPU hashing); "
                             "cpu: it ran on the CPU (pandas hashing)")
    export.set_defaults(func=_export_transform)


def _add_export(sub: Any) -> None:
    """Subcommand ``export``."""
    ensemble = sub.add_parser("export", help="export transform -> embedding lookup -> scorer as one Triton ensemble")
    _add_model_arguments(ensemble, "ensemble name (its steps: NAME_transform, NAME_embeddings, NAME_scorer)", "packed",
                         "the ensemble's input layout: packed (a tensor per dtype; each tensor costs the Python backend ~40 us, "
                         "so 39 Criteo columns as 2 tensors save ~1.5 ms a request) or per-column (what Merlin's clients send; "
                         "see --input-dtype)")
    ensemble.add_argument("--store", required=True, help="embedding store directory (trained against the workflow)")
    ensemble.add_argument("--scorer", help="tritonrec scorer directory (TorchScript + scorer.json)")
    ensemble.add_argument("--scorer-model", help="instead: a scoring model already in the repository")
    ensemble.add_argument("--dense-input", help="with --scorer-model: its input for the dense features")
    ensemble.add_argument("--embeddings-input", help="with --scorer-model: its input for the embeddings")
    ensemble.add_argument("--scorer-output", help="with --scorer-model: its probability output")
    ensemble.add_argument("--scorer-version", type=int, default=-1, help="with --scorer-model: version to call (-1: latest)")
    ensemble.add_argument("--instances", type=int, default=1, help="instances of each step")
    ensemble.add_argument("--host-budget-bytes", type=int, help="host memory for a store with a RocksDB tier")
    ensemble.add_argument("--missing-key-policy", choices=("store", "zeros", "error"), default="store",
                          help="ids no tier holds: each table's own policy, zero rows, or an error naming them")
    ensemble.add_argument("--scorer-gpu", action="store_true", help="KIND_GPU instances of the torch scorer")
    ensemble.add_argument("--transform-gpu", action="store_true", help="KIND_GPU instances of the transform (cupy plan)")
    ensemble.add_argument("--gpu-cache-bytes", type=int, help="KIND_GPU lookup instances with a GPU cache of this many bytes")
    ensemble.add_argument("--gpu-eviction", choices=("lru", "lfu"), default="lru", help="with --gpu-cache-bytes")
    ensemble.add_argument("--gpu-admission", action="store_true", help="with --gpu-cache-bytes: TinyLFU-style admission")
    ensemble.add_argument("--gpu-cache-dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                          help="with --gpu-cache-bytes: row storage of the GPU cache")
    ensemble.add_argument("--gpu-async-insert", action="store_true",
                          help="with --gpu-cache-bytes: insert missed rows off the lookup's stream")
    ensemble.add_argument("--cast-float64", action="store_true",
                          help="pass float64 dense outputs (Normalize without out_dtype) to the scorer as float32")
    ensemble.add_argument("--output-name", default="probability", help="the ensemble's output (Merlin's HugeCTR ensembles: OUTPUT0)")
    ensemble.add_argument("--multi-hot-combiner", choices=("sum", "mean"), default="mean",
                          help="how the lookup combines the vectors of a list (multi-hot) column's ids")
    ensemble.set_defaults(func=_export)


def _add_query(sub: Any) -> None:
    """Subcommand ``query``."""
    query = sub.add_parser("query", help="score a parquet or CSV file of raw rows through a served model")
    query.add_argument("file", help=".parquet or .csv of raw rows (a 'label' column is carried along)")
    where = query.add_mutually_exclusive_group()
    where.add_argument("--url", help="gRPC address of tritonserver (default: 127.0.0.1:8001, Triton's own default)")
    where.add_argument("--endpoints-file", metavar="FILE", help="read the gRPC address from the file `tritonrec serve --endpoints-file` writes")
    query.add_argument("--model", required=True, help="the served model's name (an ensemble or a transform)")
    query.add_argument("--batch-size", type=int, default=1024, help="rows per request")
    query.add_argument("--output", help="write the predictions here (.parquet or .csv)")
    query.add_argument("--log", metavar="DIR", help="append every request's rows (columns sent, predictions, labels, model version, times) "
                       "to the sink DIR, in tritonrec monitor's schema and hourly partitions")
    query.set_defaults(func=_query)


def _add_perf(sub: Any) -> None:
    """Subcommand ``perf``."""
    perf = sub.add_parser("perf", help="benchmark a served model with perf_analyzer on real rows, its answers checked first",
                          description="Writes perf_analyzer's --input-data from the rows of FILE (strings and lists included), checks "
                                      "the served answers for those rows against the model run in process, then measures each batch "
                                      "size and concurrency in count windows and prints the table.")
    perf.add_argument("model", help="the served model's name (an ensemble or a transform)")
    perf.add_argument("--data", required=True, metavar="FILE", help=".parquet or .csv of raw rows, as tritonrec query takes")
    where = perf.add_mutually_exclusive_group()
    where.add_argument("--url", help="gRPC address of tritonserver (default: 127.0.0.1:8001, Triton's own default)")
    where.add_argument("--endpoints-file", metavar="FILE",
                       help="read the gRPC address and the model repository from the file `tritonrec serve --endpoints-file` writes")
    perf.add_argument("--repository", metavar="DIR",
                      help="the model repository the server loaded, for the in-process reference (default: the endpoints file's; "
                           "without one, answers are checked against the same rows sent one at a time)")
    perf.add_argument("--batch-sizes", type=_int_list, default=(1, 64, 1024), metavar="B,B,...", help="rows per request, each measured")
    perf.add_argument("--concurrency", type=_int_list, default=(1,), metavar="C,C,...", help="requests in flight, each measured")
    perf.add_argument("--rows", type=int, default=1024, help="rows of FILE to send (perf_analyzer cycles through them)")
    perf.add_argument("--request-count", type=int, default=50, metavar="N", help="requests per measurement window (count windows)")
    perf.add_argument("--stability", type=float, default=25.0, metavar="PCT",
                      help="the last 3 windows' throughput and latency within this percentage of each other")
    perf.add_argument("--max-trials", type=int, default=10, help="windows per point before it is measured again with windows twice as large")
    perf.add_argument("--perf-analyzer", metavar="PATH", help="the perf_analyzer binary (default: PATH, then beside this Python)")
    perf.add_argument("--work-dir", metavar="DIR", help="keep the input data JSON and perf_analyzer's CSV reports here (default: a temporary directory)")
    perf.add_argument("--csv", metavar="FILE", help="also write the points as CSV")
    perf.set_defaults(func=_perf)


def _add_install_backends(sub: Any) -> None:
    """Subcommand ``install-backends``."""
    install = sub.add_parser("install-backends", help="put tritonrec's backends into another Triton install's backend directory")
    install.add_argument("backend_dir", help="the server's backend directory (NGC containers: /opt/tritonserver/backends)")
    install.set_defaults(func=_install_backends)


def _install_backends(args: argparse.Namespace) -> int:
    from tritonrec.serving.install import InstallError, install_backends  # noqa: PLC0415
    from tritonrec.serving.server import ServerError, project_backends, project_backends_dir  # noqa: PLC0415

    try:
        done = install_backends(args.backend_dir, project_backends_dir(), project_backends())
    except (InstallError, ServerError) as e:
        print(f"tritonrec install-backends: {e}", file=sys.stderr)
        return 1
    print(f"installed {', '.join(done.backends)} into {args.backend_dir} (Python stub: {done.stub_python or 'unknown version'})")
    print(f"start the server with their environment:\n  set -a; . {done.env_file}; set +a\n"
          f"  tritonserver --backend-directory {args.backend_dir} --model-repository MODEL_REPOSITORY")
    return 0


def _add_demo(sub: Any) -> None:
    """Subcommand ``demo``."""
    demo = sub.add_parser("demo", help="data -> fit -> train DLRM -> export the ensemble -> serve -> AUC, parity, latency")
    demo.add_argument("--workdir", default="demo-output", help="where data, workflow, model and repository go")
    demo.add_argument("--train-rows", type=int, default=500_000, help="synthetic rows to fit and train on")
    demo.add_argument("--eval-rows", type=int, default=20_000, help="held-out rows scored through the server")
    demo.add_argument("--requests", type=int, default=300, help="timed requests per batch size")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and the training")
    demo.add_argument("--epochs", type=int, default=1, help="DLRM training epochs")
    demo.add_argument("--host-budget", type=float, default=0.25,
                      help="host memory for embedding rows as a fraction of their size, the rest in RocksDB (0: all in memory)")
    demo.add_argument("--keep-serving", action="store_true", help="leave the server up until Ctrl-C")
    demo.set_defaults(func=_demo)


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help unless the help says its default or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "default" in (action.help or "") or action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """A subcommand's parser: ``--help`` shows every option's default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tritonrec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_serve, _add_export_transform, _add_export, _add_query, _add_perf, _add_feedback, _add_monitor, _add_profile,
                _add_install_backends, _add_demo):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if argv[:1] == ["serve"] and "--" in argv:
        # everything after the first -- goes to tritonserver, wherever tritonrec's own options are
        split = argv.index("--")
        argv, passthrough = argv[:split], argv[split + 1 :]
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        args.tritonserver_args = passthrough
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
