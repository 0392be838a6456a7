#!/usr/bin/env bash
# Packs Debian's RocksDB 7.8 shared library and headers (and the two libraries it needs that a
# CUDA image lacks: gflags, snappy) into .gl/rocksdb.tar.xz, for GPU machines without apt or
# network (the device tool carries it). tools/device_run.sh unpacks it under /tmp/rdb and builds
# the RocksDB tier against it (CMAKE_PREFIX_PATH; CMakeLists.txt falls back to the bare library).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download librocksdb7.8 librocksdb-dev libgflags2.2 libsnappy1v5 >/dev/null 2>&1)
mkdir -p "$tmp/rdb"
for f in "$tmp"/*.deb; do dpkg -x "$f" "$tmp/rdb"; done
rm -rf "$tmp/rdb/usr/share" "$tmp/rdb/usr/lib/x86_64-linux-gnu/librocksdb.a" "$tmp/rdb/usr/lib/x86_64-linux-gnu/cmake"
mkdir -p .gl
tar -C "$tmp" -cJf .gl/rocksdb.tar.xz rdb
echo "wrote .gl/rocksdb.tar.xz ($(du -h .gl/rocksdb.tar.xz | cut -f1))"
