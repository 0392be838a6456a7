"""Runs every CPU benchmark in turn; each rewrites its own section of benchmarks/RESULTS.md."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    codes = [subprocess.call([sys.executable, str(HERE / script), *sys.argv[1:]]) for script in ("bench_transform.py", "bench_triton.py", "bench_ensemble.py", "bench_host_store.py", "bench_rocksdb.py", "bench_index.py", "bench_verify.py", "bench_feedback.py", "bench_robustness.py")]
    sys.exit(max(codes))
