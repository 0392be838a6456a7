"""The ``tritonrec`` command: serve, export-transform, demo."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence


def _serve(args: argparse.Namespace) -> int:
    from tritonrec.serve import ServerError, TritonServer  # noqa: PLC0415

    try:
        server = TritonServer(
            args.model_repository,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            tritonserver=args.tritonserver,
        )
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        server.start(timeout_s=args.timeout)
    except ServerError as e:
        print(f"tritonrec serve: {e}", file=sys.stderr)
        return 1
    print(f"tritonserver ready: {server.model_repository}")
    print(f"  HTTP     {server.http_url}")
    print(f"  gRPC     {server.grpc_url}")
    print(f"  metrics  {server.metrics_url}")
    print(f"  log      {server.log_path}")
    print("Ctrl-C or SIGTERM stops it.", flush=True)
    while not stop.wait(0.5):
        if not server.is_running():
            print("tritonrec serve: tritonserver exited", file=sys.stderr)
            return 1
    code = server.stop()
    print(f"tritonserver stopped (exit code {code})")
    return 0


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
        )
    except (UnsupportedOpError, PlanLoadError, FileNotFoundError, ValueError, TypeError) as e:
        print(f"tritonrec export-transform: {e}", file=sys.stderr)
        return 1
    print(f"wrote {model_dir} ({args.layout} layout)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from tritonrec.pipeline.demo import DemoOptions, run_demo  # noqa: PLC0415

    return run_demo(
        DemoOptions(
            workdir=args.workdir,
            train_rows=args.train_rows,
            eval_rows=args.eval_rows,
            requests=args.requests,
            keep_serving=args.keep_serving,
            seed=args.seed,
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tritonrec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run tritonserver on a model repository with tritonrec's backends")
    serve.add_argument("model_repository")
    serve.add_argument("--http-port", type=int)
    serve.add_argument("--grpc-port", type=int)
    serve.add_argument("--metrics-port", type=int)
    serve.add_argument("--tritonserver", help="path of the tritonserver binary (default: PATH, then the bundled one)")
    serve.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    serve.set_defaults(func=_serve)

    export = sub.add_parser("export-transform", help="compile a fitted NVTabular workflow into a Triton model")
    export.add_argument("workflow", help="directory of a saved nvtabular.Workflow (or of a saved plan)")
    export.add_argument("repository", help="model repository to write into")
    export.add_argument("--name", required=True, help="model name")
    export.add_argument("--layout", choices=("per-column", "packed"), default="per-column")
    export.add_argument("--max-batch-size", type=int, default=16384)
    export.add_argument("--instances", type=int, default=1, help="CPU instances")
    export.set_defaults(func=_export_transform)

    demo = sub.add_parser("demo", help="fit, compile, export and serve the Criteo-shaped workflow, then check it")
    demo.add_argument("--workdir", default="demo-output", help="where data, workflow and repository go")
    demo.add_argument("--train-rows", type=int, default=200_000)
    demo.add_argument("--eval-rows", type=int, default=20_000)
    demo.add_argument("--requests", type=int, default=300, help="timed requests per batch size and layout")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--keep-serving", action="store_true", help="leave the server up until Ctrl-C")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
