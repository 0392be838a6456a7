#!/usr/bin/env bash
# Packs the nvidia-pytriton wheel's tritonserver (Python 3.12 stub) and perf_analyzer from .venv into
# .gl/tri.tar.xz (~40 MB), for GPU machines without network (the device tool carries it). There:
#   tar -xJf .gl/tri.tar.xz -C /tmp
#   printf '#!/bin/bash\nexport LD_LIBRARY_PATH=/tmp/tri/tools/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}\nexec /tmp/tri/tools/perf_analyzer.bin "$@"\n' > /tmp/tri/perf_analyzer
#   chmod +x /tmp/tri/perf_analyzer; mkdir -p /tmp/tri/bin; mv /tmp/tri/perf_analyzer /tmp/tri/bin/
#   PATH=/tmp/tri/bin:$PATH PYTHONPATH=/tmp/tri/site python3 -P benchmarks/bench_gpu_lookup_triton.py
# (PYTHONPATH makes tritonrec.serving.server find the server as a bundled "pytriton" package.)
set -euo pipefail
cd "$(dirname "$0")/.."
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
out=.gl/tri
rm -rf "$out" && mkdir -p "$out/site/pytriton/tritonserver/python_backend_stubs" "$out/site/nvidia_pytriton.libs" "$out/tools"
touch "$out/site/pytriton/__init__.py"
cp -r "$site/pytriton/tritonserver/bin" "$site/pytriton/tritonserver/backends" "$out/site/pytriton/tritonserver/"
cp -r "$site/pytriton/tritonserver/python_backend_stubs/3.12" "$out/site/pytriton/tritonserver/python_backend_stubs/"
find "$site/nvidia_pytriton.libs" -maxdepth 1 -type f ! -name 'libpython3.13*' -exec cp {} "$out/site/nvidia_pytriton.libs/" \;
cp -rL .venv/tools/perf_analyzer.bin .venv/tools/lib "$out/tools/"
tar -C .gl -cJf .gl/tri.tar.xz tri
echo "wrote .gl/tri.tar.xz ($(du -h .gl/tri.tar.xz | cut -f1))"
