"""The host tier's hand-written index against abseil's flat_hash_map (Debian's libabsl-dev).

Builds benchmarks/cpp (CMake, -O3) and runs it: 1M and 10M random int64 keys -> row index, 1M
finds per call, uniform and Zipf(1.05), single thread, best of 3; both maps must return the same
rows. The hand-written index stays only if it wins (issue 3); bytes per key are reported too.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=1_000_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if not Path("/usr/lib/x86_64-linux-gnu/cmake/absl").is_dir() and not Path("/usr/include/absl").is_dir():
        print("bench_index: abseil is missing: apt-get install libabsl-dev", file=sys.stderr)
        return 1
    build = ROOT / "build" / "index_bench"
    cmake = shutil.which("cmake") or "cmake"
    subprocess.run([cmake, "-S", str(ROOT / "benchmarks" / "cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"], check=True, capture_output=True)
    subprocess.run([cmake, "--build", str(build), "-j2"], check=True, capture_output=True)
    result = subprocess.run([str(build / "index_bench"), str(args.queries)], capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        return 1
    rows = [line for line in result.stdout.splitlines() if line.startswith("|")]
    wins = all(float(line.split("|")[5]) >= 1.0 for line in rows)
    body = "\n".join([
        header("Host index vs abseil flat_hash_map"),
        f"{args.queries:,} finds per call, single thread, best of 3; random int64 keys; both maps return the same rows (checked).\n",
        "| keys | distribution | tritonrec KeyIndex M finds/s | absl::flat_hash_map M finds/s | absl time / ours | KeyIndex bytes/key | flat_hash_map bytes/key |",
        "|---:|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"- The hand-written index {'wins at every point and stays' if wins else 'LOSES at some point: replace it with absl::flat_hash_map'}.",
    ])
    print(body)
    if not args.no_write:
        write_section("host-index", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
