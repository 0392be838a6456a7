#!/usr/bin/env bash
# Sets up everything tritonrec needs, idempotently, into .venv at the repository root:
#   1. a virtual environment with the pinned NVTabular + Triton stack (requirements/),
#   2. tritonrec itself, built from source (embedding_cache._core and tritonrec._native via scikit-build-core + CMake),
#   3. perf_analyzer (from the tritonclient 2.44.0 wheel) wired to the server wheel's libraries.
# and, with root and apt-get, Debian's librocksdb-dev and redis-server.
# Each step is skipped when its inputs have not changed since it last succeeded.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv="$root/.venv"
python_bin=${PYTHON:-python3}
log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv with $($python_bin --version 2>&1)"
  "$python_bin" -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip --disable-pip-version-check -q)

# 0. System libraries: RocksDB (the embedding store's persistent tier), from Debian.
if [ ! -f /usr/include/rocksdb/db.h ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing librocksdb-dev"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq librocksdb-dev >/dev/null
  else
    log "librocksdb-dev is missing and cannot be installed here (needs root and apt-get): building without the RocksDB tier"
  fi
fi

# 0b. Redis (the request log and label streams of the feedback loop; tests start their own), from Debian.
if ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing redis-server"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    log "redis-server is missing and cannot be installed here (needs root and apt-get): the Redis tests will be skipped"
  fi
fi

# 0c. promtool (checks and unit-tests deploy/prometheus/'s rules), from Debian's prometheus package:
# the binary alone, into the venv (installing the package would start a Prometheus server).
if [ ! -x "$venv/bin/promtool" ] && ! command -v promtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  log "installing promtool from Debian's prometheus package"
  mkdir -p "$venv/bin"
  promdir=$(mktemp -d)
  if (cd "$promdir" && { apt-get download prometheus >/dev/null 2>&1 || { [ "$(id -u)" = 0 ] && apt-get update -qq && apt-get download prometheus >/dev/null; }; } \
      && dpkg-deb -x prometheus_*.deb x && cp x/usr/bin/promtool "$venv/bin/promtool"); then
    :
  else
    log "promtool could not be fetched (apt-get download prometheus): the Prometheus rule tests will be skipped"
  fi
  rm -rf "$promdir"
fi

# 1. Dependencies, keyed by the requirement files' contents.
deps_hash=$(cat requirements/constraints.txt requirements/dev.txt | sha256sum | cut -c1-16)
if [ ! -f "$venv/.deps-$deps_hash" ]; then
  log "installing pinned dependencies (a few minutes on a fresh machine)"
  "${pip[@]}" install -c requirements/constraints.txt -r requirements/dev.txt
  rm -f "$venv"/.deps-*
  touch "$venv/.deps-$deps_hash"
fi

# 2. tritonrec from source, keyed by the sources' contents.
src_hash=$( (find pyproject.toml CMakeLists.txt csrc tritonrec embedding_cache backends model_repository_templates \
              -type f -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum
             ls /usr/include/rocksdb/db.h 2>/dev/null || true) | sha256sum | cut -c1-16)
if [ ! -f "$venv/.build-$src_hash" ]; then
  log "building and installing tritonrec (C++/CUDA core)"
  "${pip[@]}" install --no-build-isolation --no-deps "$root"
  rm -f "$venv"/.build-*
  touch "$venv/.build-$src_hash"
fi

# 3. perf_analyzer: the 2.44 binary runs on glibc 2.36 (the 2.60 wheel needs 2.38). It needs
#    libb64.so.0d and libcudart.so.12, both bundled (renamed) in the nvidia-pytriton wheel.
tools="$venv/tools"
if [ ! -x "$tools/perf_analyzer.bin" ]; then
  log "installing perf_analyzer 2.44.0"
  tmp=$(mktemp -d)
  "${pip[@]}" download --no-deps --only-binary=:all: -d "$tmp" tritonclient==2.44.0
  mkdir -p "$tools/lib"
  "$py" - "$tmp" "$tools" <<'PYEOF'
import pathlib, sys, zipfile
tmp, tools = map(pathlib.Path, sys.argv[1:3])
wheel = next(tmp.glob("tritonclient-2.44.0-*.whl"))
with zipfile.ZipFile(wheel) as z:
    data = z.read("tritonclient-2.44.0.data/data/bin/perf_analyzer")
(tools / "perf_analyzer.bin").write_bytes(data)
(tools / "perf_analyzer.bin").chmod(0o755)
PYEOF
  rm -rf "$tmp"
fi
libs=$("$py" -c 'import pathlib, pytriton; print(pathlib.Path(pytriton.__file__).resolve().parent.parent / "nvidia_pytriton.libs")')
ln -sf "$(ls "$libs"/libb64-*.so.0d | head -1)" "$tools/lib/libb64.so.0d"
ln -sf "$(ls "$libs"/libcudart-*.so.12* | head -1)" "$tools/lib/libcudart.so.12"
cat > "$venv/bin/perf_analyzer" <<WRAP
#!/usr/bin/env bash
export LD_LIBRARY_PATH="$tools/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$tools/perf_analyzer.bin" "\$@"
WRAP
chmod +x "$venv/bin/perf_analyzer"
"$venv/bin/perf_analyzer" --version >/dev/null 2>&1 || "$venv/bin/perf_analyzer" --help >/dev/null 2>&1 || { log "perf_analyzer does not run"; exit 1; }
log "ready: $venv"
