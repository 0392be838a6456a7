#!/usr/bin/env bash
# Runs on the GPU machine (the device tool), from the repository root: builds tritonrec into the
# machine's Python, then the named stages, copying logs and benchmarks/RESULTS.md to $OUT after each.
#   bash tools/device_run.sh tests gpu-cache triton
# SKIP_BUILD=1 skips the build (a second call to a machine still warm from the first) but copies the tree's
# Python files over the installed package (a Python-only change is measured, not the last build's copy).
# .gl/rocksdb.tar.xz, when carried, gives the build a RocksDB tier (tools/pack_rocksdb_for_gpu.sh).
# Stages: ncu-cache (tools/profile_gpu_cache.py, then under ncu), host-path (tools/probe_host_path.py), miss-path (tools/profile_miss_path.py), miss-trace (its --trace), miss-ab (its --ab, then --contention), tests (the GPU tests, the store's property tests over every tier setup), gpu-plan (bench_gpu_plan.py), triton-tests (tests through tritonserver without nvtabular), gpu-cache (bench_gpu_cache.py), gpu-cache-misses (its lookups with misses only), triton (bench_gpu_lookup_triton.py;
# needs .gl/tri.tar.xz carried, see tools/pack_triton_for_gpu.sh), hit-rates (bench_cache_hit_rates.py), probe-variants (benchmarks/cpp/gpu_probe_variants.cu), gpu-ensemble (bench_gpu_ensemble.py; needs the tarball).
set -uo pipefail
export PYTHONFAULTHANDLER=1  # a crash prints every thread's Python stack
R=$(pwd)
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
save() { cp benchmarks/RESULTS.md "$OUT/RESULTS.md" 2>/dev/null; true; }
unpack_triton() {
  if [ ! -x /tmp/tri/bin/perf_analyzer ]; then
    tar -xJf .gl/tri.tar.xz -C /tmp
    printf '#!/bin/bash\nexport LD_LIBRARY_PATH=/tmp/tri/tools/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}\nexec /tmp/tri/tools/perf_analyzer.bin "$@"\n' >/tmp/tri/perf_analyzer
    chmod +x /tmp/tri/perf_analyzer && mkdir -p /tmp/tri/bin && mv /tmp/tri/perf_analyzer /tmp/tri/bin/
  fi
}
if [ -f .gl/rocksdb.tar.xz ]; then  # RocksDB from Debian's .deb files (tools/pack_rocksdb_for_gpu.sh)
  tar -xJf .gl/rocksdb.tar.xz -C /tmp
  export CMAKE_PREFIX_PATH=/tmp/rdb/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
  export LD_LIBRARY_PATH=/tmp/rdb/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
t0=$(date +%s)
if [ -n "${SKIP_BUILD:-}" ]; then  # the compiled parts of this machine's last build, this tree's Python files over it
  site=$(cd /tmp && python3 -P -c "import embedding_cache, os; print(os.path.dirname(os.path.dirname(embedding_cache.__file__)))")
  for f in $(find embedding_cache tritonrec -name '*.py' -o -name '*.pyi'); do mkdir -p "$site/$(dirname "$f")"; cp "$f" "$site/$f"; done
  echo "SKIP_BUILD: the last build's compiled parts, this tree's Python files (into $site)"
else python3 -m pip install --no-build-isolation --no-deps . >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }; fi
python3 -P -c "import embedding_cache as e; print('cuda', e.has_cuda, 'rocksdb', e._core.has_rocksdb, 'devices', e.cuda_device_count())"
echo "built in $(( $(date +%s) - t0 )) s"
for stage in "$@"; do
  t0=$(date +%s)
  case "$stage" in
    tests)
      (cd /tmp && timeout 330 python3 -P -m pytest -q -p no:cacheprovider "$R/tests/test_gpu.py" "$R/tests/test_gpu_cache.py" "$R/tests/test_tier_lookup_plan.py" \
        "$R/tests/test_cache_policy.py" "$R/tests/test_core.py" "$R/tests/test_dlpack.py" "$R/tests/test_store_properties.py" \
        "$R/tests/test_persistent.py") >"$OUT/tests.log" 2>&1
      tail -25 "$OUT/tests.log" ;;
    gpu-plan)
      timeout 240 python3 -P benchmarks/bench_gpu_plan.py >"$OUT/gpu-plan.log" 2>&1; tail -20 "$OUT/gpu-plan.log" ;;
    gpu-cache)
      timeout 420 python3 -P benchmarks/bench_gpu_cache.py >"$OUT/gpu-cache.log" 2>&1; tail -40 "$OUT/gpu-cache.log" ;;
    gpu-cache-misses)  # only the lookups with misses (section gpu-cache-misses); MISSES_ARGS, e.g. "--chunks 2"
      timeout 540 python3 -P benchmarks/bench_gpu_cache.py --misses-only ${MISSES_ARGS:-} >"$OUT/gpu-cache-misses.log" 2>&1; tail -45 "$OUT/gpu-cache-misses.log" ;;
    recheck-ab)  # the all-hit table with each way of ordering the lookup's re-check (rebuilds; ends on the default)
      for mode in 0 1 2; do
        python3 -m pip install --no-build-isolation --no-deps -C cmake.define.TRITONREC_RECHECK=$mode . >"$OUT/build-$mode.log" 2>&1 || tail -20 "$OUT/build-$mode.log"
        echo "-- TRITONREC_RECHECK=$mode"; timeout 120 python3 -P benchmarks/bench_gpu_cache.py --all-hit-only --no-write 2>&1 | grep -E "^\| (32|64|128) \| float(32|16) \| float" 
      done
      python3 -m pip install --no-build-isolation --no-deps . >"$OUT/build.log" 2>&1 ;;
    probe-variants)  # benchmarks/cpp/gpu_probe_variants.cu: the lookup kernel's design choices, all hits, vs a plain gather; ncu where present
      nvcc -O3 -std=c++17 -arch=sm_90 -lineinfo -o /tmp/gpv benchmarks/cpp/gpu_probe_variants.cu >"$OUT/probe-build.log" 2>&1 || tail -20 "$OUT/probe-build.log"
      timeout 300 /tmp/gpv ${PROBE_ARGS:-} >"$OUT/probe-variants.md" 2>&1; grep -E "GPU|gather|product|minB8|R3|R4" "$OUT/probe-variants.md" | head -120
      if command -v ncu >/dev/null; then
        timeout 200 ncu -k regex:probe --launch-skip 3 --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
          --section Occupancy --section WarpStateStats /tmp/gpv 1048576 1 >"$OUT/probe-ncu.txt" 2>&1; tail -60 "$OUT/probe-ncu.txt"
      else echo "no ncu on this machine"; ls /usr/local/cuda*/bin 2>/dev/null | grep -i -E "ncu|nsys" | head; fi ;;
    insert-ab)  # the insert kernel at each register budget (TRITONREC_INSERT_MIN_BLOCKS; rebuilds; ends on the default)
      for mb in ${INSERT_AB:-1 3 4 5 6 8}; do
        python3 -m pip install --no-build-isolation --no-deps -C cmake.define.TRITONREC_INSERT_MIN_BLOCKS=$mb . >"$OUT/build-ib$mb.log" 2>&1 || tail -20 "$OUT/build-ib$mb.log"
        so=$(cd /tmp && python3 -P -c "import embedding_cache._core as c; print(c.__file__)")
        regs=$(cuobjdump -res-usage "$so" 2>/dev/null | grep -A1 "insert_kernelIfE" | grep -o "REG:[0-9]*\|STACK:[0-9]*\|LOCAL:[0-9]*" | tr '\n' ' ')
        echo "-- TRITONREC_INSERT_MIN_BLOCKS=$mb ($regs)"; timeout 120 python3 -P tools/profile_gpu_cache.py 2>&1 | grep -E "insert"
      done
      python3 -m pip install --no-build-isolation --no-deps . >"$OUT/build.log" 2>&1 ;;
    ncu-cache)  # tools/profile_gpu_cache.py: the insert and lookup kernels timed, then profiled by ncu where it reads counters
      timeout 120 python3 -P tools/profile_gpu_cache.py >"$OUT/cache-kernels.log" 2>&1; cat "$OUT/cache-kernels.log"
      if command -v ncu >/dev/null; then
        timeout 400 ncu --clock-control none -k regex:"insert_kernel|lookup_kernel" --section SpeedOfLight --section MemoryWorkloadAnalysis \
          --section Occupancy --section WarpStateStats --section LaunchStats python3 -P tools/profile_gpu_cache.py --once >"$OUT/cache-ncu.txt" 2>&1
        grep -E "insert_kernel|lookup_kernel|Duration|Memory Throughput|DRAM Throughput|L2 Cache Throughput|Compute \(SM\)|Achieved Occupancy|Registers Per|Stall|Warp Cycles Per Issued|Block Limit|^ +(OPT|INF)" "$OUT/cache-ncu.txt" | head -150
      else echo "no ncu on this machine"; fi ;;
    host-path)  # tools/probe_host_path.py: host memory bandwidth, host tier reads by threads, the GPU pulling rows from host memory
      timeout 300 python3 -P tools/probe_host_path.py >"$OUT/host-path.md" 2>&1; cat "$OUT/host-path.md" ;;
    miss-path)  # tools/profile_miss_path.py: lookups with misses by the chunks a call is cut into, one and two callers
      timeout 300 python3 -P tools/profile_miss_path.py >"$OUT/miss-path.md" 2>&1; cat "$OUT/miss-path.md" ;;
    miss-trace)  # tools/profile_miss_path.py --trace: one caller's call step by step, then the reads beside the copies
      timeout 300 python3 -P tools/profile_miss_path.py --trace >"$OUT/miss-trace.md" 2>&1; cat "$OUT/miss-trace.md" ;;
    miss-ab)  # tools/profile_miss_path.py --ab (the variants interleaved, rounds on the same calls), then --contention
      timeout 420 python3 -P tools/profile_miss_path.py --ab >"$OUT/miss-ab.md" 2>"$OUT/miss-ab.err" || tail -40 "$OUT/miss-ab.err"
      timeout 120 python3 -P tools/profile_miss_path.py --contention >>"$OUT/miss-ab.md" 2>&1; cat "$OUT/miss-ab.md" ;;
    hit-rates)
      timeout 400 python3 -P benchmarks/bench_cache_hit_rates.py --gpu >"$OUT/hit-rates.log" 2>&1; tail -25 "$OUT/hit-rates.log" ;;
    triton-tests)  # tests through tritonserver that need no nvtabular (numpy 2 here); needs .gl/tri.tar.xz
      unpack_triton
      (cd /tmp && PATH=/tmp/tri/bin:$PATH PYTHONPATH=/tmp/tri/site timeout 240 python3 -P -m pytest -q -p no:cacheprovider \
        "$R/tests/test_strings_triton.py" "$R/tests/test_gpu_triton.py" "$R/tests/test_lists_triton.py") >"$OUT/triton-tests.log" 2>&1
      tail -15 "$OUT/triton-tests.log" ;;
    gpu-ensemble)  # needs .gl/tri.tar.xz
      unpack_triton
      PATH=/tmp/tri/bin:$PATH PYTHONPATH=/tmp/tri/site timeout 570 python3 -P benchmarks/bench_gpu_ensemble.py ${GPU_ENSEMBLE_ARGS:-} >"$OUT/gpu-ensemble.log" 2>&1
      tail -30 "$OUT/gpu-ensemble.log" ;;
    triton)
      unpack_triton
      PATH=/tmp/tri/bin:$PATH PYTHONPATH=/tmp/tri/site timeout 360 python3 -P benchmarks/bench_gpu_lookup_triton.py >"$OUT/triton.log" 2>&1
      tail -30 "$OUT/triton.log" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
  echo "== $stage: $(( $(date +%s) - t0 )) s"
  save
done
