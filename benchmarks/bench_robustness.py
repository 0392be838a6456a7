"""Bad input and a long soak against a stock `tritonrec serve`: 0 crashes, 0 hangs, 0 wrong answers.

A DLRM is trained on Criteo-shaped data and exported as the packed ensemble (`tritonrec export`),
then served by the CLI as a user would run it (`tritonrec serve REPO --http`: loopback, admin APIs
behind a key, the supervisor's canaries every 2 s; HTTP on so the fuzzer's HTTP cases reach it).

1. **Fuzz**: :class:`tritonrec.serving.fuzz.Fuzzer` sends ``--fuzz-cases`` random cases (bad dtypes,
   shapes, names, values, empty and oversized batches, truncated bodies over gRPC and HTTP) over
   the ensemble and each step; each answer is compared with the in-process models, each case is
   followed by a probe that must get its first answer again.
2. **Maximum throughput**: 8 threads, closed loop, ``--max-seconds``, requests of 1..64 rows drawn
   from a pool of 512 with in-process answers (every answer checked).
3. **Soak**: 8 threads paced to ``--load`` (0.8) of that maximum for ``--soak-seconds`` (600);
   every answer checked; resident memory (VmRSS) of tritonserver and each Python stub at the start
   and the end; the supervisor's canary counters read at the end.

Baseline for the soak's rate: the maximum measured in step 2 of the same run.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, write_section  # noqa: E402

TRITONREC = str(Path(sys.executable).parent / "tritonrec")
THREADS = 8


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _processes(server_pid: int, repo: Path) -> dict[int, str]:
    """pid -> short name for tritonserver and the processes of its group (the Python stubs, named by model)."""
    import re

    from tritonrec.serving.server import process_group_members

    out = {}
    for pid in sorted(process_group_members(server_pid)):
        cmdline = _read(Path(f"/proc/{pid}/cmdline")).replace("\0", " ")
        model = re.search(re.escape(str(repo.resolve())) + r"/([^/ ]+)", cmdline)
        out[pid] = "tritonserver" if pid == server_pid else f"Python stub of {model.group(1) if model else '?'}"
    return out


def _start_cli(repo: Path) -> tuple[subprocess.Popen, dict[str, str], int]:
    process = subprocess.Popen([TRITONREC, "serve", str(repo), "--http", "--canary-interval", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    while True:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("tritonrec serve did not start: " + "".join(lines) + process.stderr.read())
        lines.append(line)
        if line.startswith("Ctrl-C"):
            break
    endpoints = {p[0]: p[1] for p in (line.split() for line in lines[1:]) if len(p) >= 2}
    from tritonrec.serving.server import child_processes

    (server,) = child_processes(process.pid, "tritonserver")
    return process, endpoints, server


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


class Load:
    """8 threads sending pooled requests to the ensemble; every answer checked."""

    def __init__(self, grpc_url: str, pool: list[tuple[dict[str, np.ndarray], np.ndarray]]) -> None:
        self.grpc_url, self.pool = grpc_url, pool
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.requests = self.rows = self.errors = self.wrong = self.timeouts = 0
        self.first_problem = ""

    def run(self, seconds: float, rate_per_thread: float | None) -> float:
        stop_at = time.monotonic() + seconds
        threads = [threading.Thread(target=self._worker, args=(i, stop_at, rate_per_thread)) for i in range(THREADS)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0

    def _worker(self, seed: int, stop_at: float, rate: float | None) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        from tritonrec.serving.client import infer

        client = grpcclient.InferenceServerClient(self.grpc_url)
        rng = np.random.default_rng(seed)
        next_at = time.monotonic()
        local = []
        try:
            while time.monotonic() < stop_at:
                if rate:
                    next_at += rng.exponential(1.0 / rate)  # Poisson arrivals at the paced rate
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                tensors, expected = self.pool[int(rng.integers(0, len(self.pool)))]
                t0 = time.perf_counter()
                problem = ""
                try:
                    got = infer(client, "criteo", tensors, ["probability"])["probability"].reshape(-1)
                    if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-5, rtol=0):
                        problem = "wrong"
                except InferenceServerException as e:
                    problem = "timeout" if "Deadline" in str(e) else "error"
                    if not self.first_problem:
                        self.first_problem = str(e)[:300]
                local.append(time.perf_counter() - t0)
                with self.lock:
                    self.requests += 1
                    self.rows += expected.shape[0]
                    self.errors += problem == "error"
                    self.wrong += problem == "wrong"
                    self.timeouts += problem == "timeout"
        finally:
            client.close()
            with self.lock:
                self.latencies.extend(local)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fuzz-cases", type=int, default=10_000)
    parser.add_argument("--max-seconds", type=float, default=30.0, help="closed-loop run that measures the maximum")
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument("--load", type=float, default=0.8, help="soak rate as a fraction of the measured maximum")
    parser.add_argument("--train-rows", type=int, default=100_000)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    from tritonrec.export import export_ensemble
    from tritonrec.serving.fuzz import Fuzzer, ensemble_targets
    from tritonrec.pipeline.synthetic import CATEGORICAL, CONTINUOUS, CriteoGenerator
    from tritonrec.pipeline.train import train_pipeline

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-robustness-"))
    generator = CriteoGenerator()
    pipeline = train_pipeline(work / "trained", generator.sample(args.train_rows, seed=0))
    held = generator.sample(4_096, seed=1)
    columns = {c: held[c] for c in CONTINUOUS + CATEGORICAL}
    repo = work / "repo"
    export_ensemble(pipeline.workflow_dir, pipeline.store_dir, pipeline.scorer_dir, repo, "criteo", max_batch_size=256)
    targets = ensemble_targets(repo, "criteo", columns, pool_rows=4_096)
    ensemble = targets[0]
    rng = np.random.default_rng(3)
    pool = []
    for _ in range(512):
        tensors = ensemble.sample(rng, int(rng.integers(1, 65)))
        pool.append((tensors, ensemble.reference(tensors)["probability"].reshape(-1)))

    process, endpoints, server_pid = _start_cli(repo)
    ok = True
    try:
        # 1. fuzz
        fuzzer = Fuzzer(endpoints["gRPC"], targets, http_url=endpoints["HTTP"], alive=lambda: process.poll() is None, seed=11)
        report = fuzzer.run(args.fuzz_cases)
        fuzzer.close()
        print(report.summary(), flush=True)
        ok &= report.ok
        fuzz_rows = [(case, report.sent[case], report.answered[case], report.refused[case], report.lenient[case]) for case in sorted(report.sent)]

        # 2. maximum, closed loop
        maximum = Load(endpoints["gRPC"], pool)
        max_s = maximum.run(args.max_seconds, None)
        max_rate = maximum.requests / max_s
        print(f"maximum: {max_rate:.0f} requests/s ({maximum.rows / max_s:.0f} rows/s)", flush=True)
        ok &= maximum.errors == maximum.wrong == maximum.timeouts == 0

        # 3. soak
        procs = _processes(server_pid, repo)
        rss_start = {pid: _rss_kib(pid) for pid in procs}
        soak = Load(endpoints["gRPC"], pool)
        soak_s = soak.run(args.soak_seconds, args.load * max_rate / THREADS)
        rss_end = {pid: _rss_kib(pid) if Path(f"/proc/{pid}").exists() else 0 for pid in procs}
        alive = process.poll() is None and _rss_kib(server_pid) > 0
        canary = urllib.request.urlopen(endpoints["canary"], timeout=10).read().decode()
        canary_failures = sum(float(line.split()[-1]) for line in canary.splitlines() if line.startswith("tritonrec_canary_failures_total"))
        canary_requests = sum(float(line.split()[-1]) for line in canary.splitlines() if line.startswith("tritonrec_canary_requests_total"))
        ok &= soak.errors == soak.wrong == soak.timeouts == 0 and alive and canary_failures == 0
        lat = np.array(soak.latencies) * 1e3
        print(f"soak: {soak.requests} requests in {soak_s:.0f} s, errors {soak.errors}, wrong {soak.wrong}, timeouts {soak.timeouts}", flush=True)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    ok &= process.returncode == 0

    fuzz_table = "\n".join(f"| `{c}` | {s} | {a} | {r} | {lz} |" for c, s, a, r, lz in fuzz_rows)
    rss_table = "\n".join(f"| {procs[pid]} | {rss_start[pid] / 1024:.1f} | {rss_end[pid] / 1024:.1f} | {(rss_end[pid] - rss_start[pid]) / 1024:+.1f} |"
                          for pid in procs)
    body = header("Robustness: fuzz and soak against a stock `tritonrec serve` (`bench_robustness.py`)") + f"""
Served: `tritonrec serve REPO --http` (loopback, admin APIs behind a key, canaries every 2 s) on the
packed ensemble `criteo` (transform -> embedding lookup -> DLRM scorer, max batch 256, one CPU
instance each), trained on {args.train_rows:,} Criteo-shaped rows; the client threads share the
machine's cores with the server. Answers checked against the same models in process. Result: **{'0 crashes, 0 hangs, 0 wrong answers' if ok else 'FAILURES: see below'}**.

### Fuzz: {sum(report.sent.values()):,} cases in {report.seconds:.0f} s, each followed by a probe ({report.probes:,} probes)

{report.summary().splitlines()[0]}.

| case | sent | answered (= reference) | refused with a message | served by Triton's lenient batch check (= the bytes' answer) |
|---|---|---|---|---|
{fuzz_table}

### Soak: 8 threads, {soak_s:.0f} s at {args.load:.0%} of the maximum

| run | requests | rows | requests/s | errors | wrong | timeouts | p50 ms | p99 ms | max ms |
|---|---|---|---|---|---|---|---|---|---|
| maximum (closed loop, {max_s:.0f} s; the baseline) | {maximum.requests:,} | {maximum.rows:,} | {max_rate:.0f} | {maximum.errors} | {maximum.wrong} | {maximum.timeouts} | {np.percentile(np.array(maximum.latencies) * 1e3, 50):.2f} | {np.percentile(np.array(maximum.latencies) * 1e3, 99):.2f} | {max(maximum.latencies) * 1e3:.1f} |
| soak (Poisson arrivals, target {args.load * max_rate:.0f}/s) | {soak.requests:,} | {soak.rows:,} | {soak.requests / soak_s:.0f} | {soak.errors} | {soak.wrong} | {soak.timeouts} | {np.percentile(lat, 50):.2f} | {np.percentile(lat, 99):.2f} | {lat.max():.1f} |

Canaries during the run: {canary_requests:.0f} sent, {canary_failures:.0f} failed. Server alive at the end: {alive};
`tritonrec serve` exited {process.returncode} on SIGTERM.

| process | RSS at soak start, MiB | at end, MiB | change |
|---|---|---|---|
{rss_table}
"""
    if soak.first_problem:
        body += f"\nFirst error: `{soak.first_problem}`\n"
    print(body)
    if not args.no_write:
        write_section("robustness", body)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
