"""The C++/CUDA benchmark tools under benchmarks/cpp build, and the LRU clock simulation's table
holds what it claims (small sizes; the figures in RESULTS.md come from the full run)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CPP = ROOT / "benchmarks" / "cpp"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_the_probe_variants_bench_compiles(tmp_path):
    binary = tmp_path / "gpv"
    done = subprocess.run(["nvcc", "-O1", "-std=c++17", "-arch=sm_90", "-o", str(binary), str(CPP / "gpu_probe_variants.cu")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert binary.stat().st_size > 0


def _lru_clock_sim(tmp_path: Path) -> Path:
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler on PATH")
    binary = tmp_path / "lru_clock_sim"
    done = subprocess.run([compiler, "-O2", "-std=c++17", f"-I{ROOT / 'csrc'}", "-o", str(binary), str(CPP / "lru_clock_sim.cpp"),
                           str(ROOT / "csrc" / "gpu_cache" / "set_cache_sim.cpp")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return binary


def test_the_lru_clock_simulation_prints_hit_rates_that_grow_with_the_cache(tmp_path):
    binary = _lru_clock_sim(tmp_path)
    done = subprocess.run([str(binary), "20000", "200000"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if re.match(r"\| \d", line)]
    assert len(rows) == 3 * 3 * 2  # alphas x cache shares x admission
    table: dict[tuple[str, str], list[list[float]]] = {}
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        alpha, _share, admission, *rates = cells
        values = [float(r) for r in rates]
        assert len(values) == 6 and all(0.0 < v < 1.0 for v in values), line
        table.setdefault((alpha, admission), []).append(values)
    for key, by_share in table.items():  # 1%, 5%, 10% of the rows, in that order: more rows, more hits, every clock
        for clock in range(6):
            rates = [r[clock] for r in by_share]
            assert rates == sorted(rates) and rates[0] < rates[-1], (key, clock, rates)
    # a more skewed trace hits more, at every size and clock
    for admission in ("no", "yes"):
        assert all(a < b for a, b in zip(table[("0.90", admission)][0], table[("1.20", admission)][0]))


def test_the_lru_clock_simulation_refuses_sizes_too_small(tmp_path):
    binary = _lru_clock_sim(tmp_path)
    done = subprocess.run([str(binary), "10", "100"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "rows: expected >= 100" in done.stderr


def test_the_gpu_cache_bench_refuses_a_chunk_count_below_one(capsys):
    # --chunks sets the GPU tier's chunks a lookup is cut into for the run (recorded in the command
    # line RESULTS.md shows); a bad count is refused by name before anything touches the GPU.
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_gpu_cache
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    with pytest.raises(SystemExit):
        bench_gpu_cache.main(["--chunks", "0"])
    assert "--chunks 0: expected >= 1" in capsys.readouterr().err
