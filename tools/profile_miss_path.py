"""The GPU tier's miss path, probed (issue 16), on the calls of ``bench_gpu_cache.py``'s
effective-rate table (1,048,576 device keys a call, dim 64 fp32, 0.90 and 0.98 set hit rates, misses
never asked before, lookup-stream inserts), every output checked. Run on the GPU machine.

- default (``tools/device_run.sh miss-path``): ``embedding_cache.gpu._CHUNKS`` at 1, 2, 4 and 8 (the
  product's tapering and streamed rows), one and two callers at once.
- ``--trace`` (``tools/device_run.sh miss-trace``): where one caller's call goes, step by step
  (``GpuTierLookup.trace``: the host's steps and each chunk's GPU work, median over the traced
  calls), at 2 and 4 chunks; then ``--contention``.
- ``--ab`` (``tools/device_run.sh miss-ab``): ``VARIANTS`` (chunks, tapered ends, rows streamed past
  the CPU's caches, copies on a stream of their own, ...: see ``Variant``) against one another, interleaved: every
  variant's store open at once, ``ROUNDS`` rounds each measuring every variant on the same calls in
  turn, so that a burst of the host's noise (calls 2-4x slower for seconds at a time on this host)
  falls on all variants alike; the median and best round of each, every round's last output checked;
  then the trace of the second variant (``device_run.sh miss-ab`` runs ``--contention`` after it).
- ``--contention``: the host reads of a call's misses timed alone and while pinned host-to-device
  copies run (they read the same host memory), and the copies' rate alone and beside the reads.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_gpu_cache import _FLOOR_CALLS, _concurrent, _floor_ms, _mixed_keys, _rows_of, _store_of  # noqa: E402

DIM, N, HOT, ROWS = 64, 1 << 20, 200_000, 4_000_000
CHUNKS = (1, 2, 4, 8)
TIMED = 12


# A GPU tier's cut of calls: (chunks, tapered ends, rows streamed past the CPU's caches, copies on a
# stream of their own, chunks of a call that starts while another is in flight (0: as a lone call),
# such a call's copies on that stream too (else on its own), a lone call's chunk sent while the pool
# reads the next)
Variant = tuple[int, bool, bool, bool, int, bool, bool]
# --ab: the thirteenth session's second A/B: the default against a lone call's sends beside its
# reads, with 4 and 8 chunks
VARIANTS: tuple[Variant, ...] = ((4, True, True, True, 2, False, False), (4, True, True, True, 2, False, True),
                                 (8, True, True, True, 2, False, True))


def _warm_store(cp, path: Path, variant: Variant, hot: np.ndarray):
    """A store over ``path`` with a GPU tier built for ``variant`` (see Variant), room for the hot
    keys and four calls' misses, the hot keys cached."""
    from embedding_cache import EmbeddingStore, gpu

    gpu._CHUNKS, gpu._TAPER, gpu._STREAM_ROWS, gpu._COPY_STREAM, gpu._CROWDED_CHUNKS, gpu._CROWDED_COPY_STREAM, gpu._SEND_BESIDE_READ = variant
    capacity = HOT + 4 * int(0.1 * N)
    store = EmbeddingStore(path, verify=False, device=0, gpu_cache_bytes=int(capacity * (DIM * 4 + 13) * 1.25))
    try:
        for _ in range(2):
            store.prefetch("t", cp.asarray(hot))
    except BaseException:
        store.close()
        raise
    return store


def _label(variant: Variant) -> str:
    chunks, taper, stream, copy, crowded, crowded_copy, beside = variant
    copy_label = (', copy stream' if crowded_copy else ', copy stream (lone calls)') if copy else ''
    return (f"{chunks}{' tapered' if taper else ''}{', streamed' if stream else ''}{copy_label}"
            f"{f', {crowded} when crowded' if crowded else ''}{', sent beside the reads' if beside else ''}")


def _fresh_call(cp, rng, hot: np.ndarray, cold: np.ndarray, cursor: int, misses: int):
    """One call's device keys: ``misses`` cold keys from ``cursor`` on (wrapping) among hot ones."""
    return cp.asarray(_mixed_keys(rng, hot, cold[np.arange(cursor, cursor + misses) % cold.size], N))


def probe(cp, path: Path, variant: Variant, rng, hot: np.ndarray, cold: np.ndarray, check_every: int = 1) -> list[str]:
    """Rows of the table for ``variant`` (see _warm_store): one and two callers at 0.90 and 0.98
    hits; every ``check_every``-th output checked."""
    label = _label(variant)
    cursor = 0
    lines = []
    with _warm_store(cp, path, variant, hot) as store:
        for hit in (0.90, 0.98):
            misses = int(round((1 - hit) * N))

            def calls(m: int) -> list:
                nonlocal cursor
                out = []
                for _ in range(m):
                    out.append(_fresh_call(cp, rng, hot, cold, cursor, misses))
                    cursor += misses
                return out

            for callers in (1, 2):
                warm, timed = calls(callers), calls(TIMED)
                seconds, missed, outs = _concurrent(cp, store, warm, timed, callers)
                ok = all(np.array_equal(cp.asnumpy(o), _rows_of(cp.asnumpy(k), DIM)) for o, k in zip(outs[::check_every], timed[::check_every]))
                lines.append(f"| {label} | {hit:.2f} | {callers} | {1 - missed / (TIMED * N):.4f} | {1e3 * seconds / TIMED:.3f} | "
                             f"{TIMED * N / seconds / 1e9:.2f} | {'yes' if ok else 'NO'} |")
    return lines


ROUNDS = 8


def interleaved(cp, path: Path, rng, hot: np.ndarray, cold: np.ndarray) -> list[str]:
    """The table of ``--ab``: each of ``VARIANTS`` in a store of its own, all open at once;
    ``ROUNDS`` rounds, each drawing fresh calls (misses never asked before) for 0.90 and 0.98 hits
    and one, two and four callers, which every variant then looks up in turn (the order rotating by
    round). Each (variant, workload) row gives the median and best round's ms a call; the last
    output of every round is checked against the rows."""
    from contextlib import ExitStack

    workloads = [(hit, callers) for hit in (0.90, 0.98) for callers in (1, 2, 4)]
    ms = {(v, w): [] for v in VARIANTS for w in workloads}
    hits = {(v, w): [] for v in VARIANTS for w in workloads}
    floors = {hit: [] for hit in (0.90, 0.98)}  # bench_gpu_cache._floor_ms each round, in the first variant's store
    ok = {v: True for v in VARIANTS}
    cursor = 0
    with ExitStack() as stack:
        stores = {v: stack.enter_context(_warm_store(cp, path, v, hot)) for v in VARIANTS}
        for r in range(ROUNDS):
            for hit, callers in workloads:
                misses = int(round((1 - hit) * N))
                if callers == 1:
                    sets = [cold[np.arange(cursor + i * misses, cursor + (i + 1) * misses) % cold.size] for i in range(_FLOOR_CALLS)]
                    floors[hit].append(_floor_ms(cp, stores[VARIANTS[0]], sets, DIM))
                    cursor += _FLOOR_CALLS * misses
                warm = [_fresh_call(cp, rng, hot, cold, cursor + i * misses, misses) for i in range(callers)]
                timed = [_fresh_call(cp, rng, hot, cold, cursor + (callers + i) * misses, misses) for i in range(TIMED)]
                cursor += (callers + TIMED) * misses
                expected = _rows_of(cp.asnumpy(timed[-1]), DIM)
                order = VARIANTS[r % len(VARIANTS):] + VARIANTS[: r % len(VARIANTS)]
                for v in order:
                    print(f"round {r}, {hit:.2f} hits, {callers} callers: {_label(v)}", file=sys.stderr, flush=True)
                    seconds, missed, outs = _concurrent(cp, stores[v], warm, timed, callers)
                    ms[v, (hit, callers)].append(1e3 * seconds / TIMED)
                    hits[v, (hit, callers)].append(1 - missed / (TIMED * N))
                    ok[v] = ok[v] and np.array_equal(cp.asnumpy(outs[-1]), expected)
    print("stores closed", file=sys.stderr, flush=True)
    lines = [f"{ROUNDS} rounds, every variant on the same calls in each ({TIMED} timed calls shared among the callers, "
             "fresh misses every round)", "",
             "| variant | hit rate (set) | callers | hit rate (measured, median) | ms a call, median of rounds | best round | "
             "G keys/s (median) | every round, ms | outputs checked |", "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for v in VARIANTS:
        for hit, callers in workloads:
            taken = ms[v, (hit, callers)]
            lines.append(f"| {_label(v)} | {hit:.2f} | {callers} | {np.median(hits[v, (hit, callers)]):.4f} | "
                         f"{np.median(taken):.3f} | {min(taken):.3f} | "
                         f"{N / np.median(taken) / 1e6:.2f} | {' '.join(f'{t:.2f}' for t in taken)} | {'yes' if ok[v] else 'NO'} |")
    for hit, taken in floors.items():
        lines.append(f"| host floor (the misses' reads and copies only, double-buffered) | {hit:.2f} | | | {np.median(taken):.3f} | "
                     f"{min(taken):.3f} | {N / np.median(taken) / 1e6:.2f} | {' '.join(f'{t:.2f}' for t in taken)} | |")
    return lines


TRACED = 10


def _trace_table(marks: list[list[tuple[str, int, float]]]) -> list[str]:
    """Median (over calls) of each step's time, in the order of the medians, with what it took since
    the step before on the same side (host or GPU)."""
    steps = {}
    for call in marks:
        for what, chunk, us in call:
            steps.setdefault((what, chunk), []).append(us)
    medians = sorted(((float(np.median(v)), what, chunk) for (what, chunk), v in steps.items()))
    lines = ["| step | chunk | us after the call began (median) | us since the step before, same side |", "|---|---:|---:|---:|"]
    last = {True: 0.0, False: 0.0}
    for us, what, chunk in medians:
        side = what.startswith("gpu")
        lines.append(f"| {what} | {'' if chunk < 0 else chunk} | {us:,.0f} | {us - last[side]:,.0f} |")
        last[side] = us
    return lines


def trace(cp, path: Path, rng, hot: np.ndarray, cold: np.ndarray, variants: tuple) -> None:
    """One caller's calls at 0.90 and 0.98 hits for each variant (see _warm_store): ms a call
    untraced, then each step traced."""
    for variant in variants:
        cursor = 0  # a new store: its GPU cache has seen none of the keys (3M of the 3.8M cold keys are used)
        with _warm_store(cp, path, variant, hot) as store:
            for hit in (0.90, 0.98):
                misses = int(round((1 - hit) * N))
                calls = []
                for _ in range(2 + TIMED + TRACED):
                    calls.append(_fresh_call(cp, rng, hot, cold, cursor, misses))
                    cursor += misses
                for q in calls[:2]:
                    store.lookup("t", q)
                cp.cuda.get_current_stream().synchronize()
                t0 = time.perf_counter()
                outs = [store.lookup("t", q) for q in calls[2 : 2 + TIMED]]
                cp.cuda.get_current_stream().synchronize()
                untraced = (time.perf_counter() - t0) / TIMED
                lookup, marks = store._gpu._lookup, []
                lookup.trace = True
                for q in calls[2 + TIMED :]:
                    outs.append(store.lookup("t", q))
                    marks.append(lookup.last_trace())
                lookup.trace = False
                ok = all(np.array_equal(cp.asnumpy(o), _rows_of(cp.asnumpy(k), DIM)) for o, k in zip(outs, calls[2:]))
                print(f"\n## chunks {_label(variant)}, {hit:.2f} hits, one caller: {1e3 * untraced:.3f} ms a call untraced "
                      f"({N / untraced / 1e9:.2f} G keys/s), {TRACED} calls traced (each waits for its stream at its end); "
                      f"output checked: {'yes' if ok else 'NO'}\n", *_trace_table(marks), sep="\n", flush=True)


def contention(cp, path: Path, cold: np.ndarray) -> None:
    """The host reads of a 0.90-hit call's misses (the host tier's thread pool, keys never read
    before) alone and while the device copies pinned rows of the same size; the copies' rate alone
    and while the reads run."""
    from embedding_cache import EmbeddingStore

    misses = int(round(0.1 * N))
    pinned = cp.cuda.alloc_pinned_memory(misses * DIM * 4)
    host = np.frombuffer(pinned, np.float32, misses * DIM).reshape(misses, DIM)
    host[:] = 1
    device = cp.empty_like(host)
    stream = cp.cuda.Stream(non_blocking=True)
    out, found = np.ones((misses, DIM), np.float32), np.ones(misses, np.uint8)
    cursor = cold.size

    def reads(m: int) -> float:
        nonlocal cursor
        taken = []
        for _ in range(m):
            keys = cold[cursor - misses : cursor]
            cursor -= misses
            t0 = time.perf_counter()
            store.lookup("t", keys, out=out, found=found)
            taken.append(time.perf_counter() - t0)
        return float(np.median(taken))

    def copies(m: int) -> tuple:
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record(stream)
        for _ in range(m):
            device.set(host, stream=stream)
        end.record(stream)
        return start, end

    with EmbeddingStore(path, verify=False) as store:
        reads(2)
        alone = reads(5)
        start, end = copies(40)
        end.synchronize()
        copy_alone = 40 * host.nbytes / (cp.cuda.get_elapsed_time(start, end) / 1e3)
        start, end = copies(40)  # about 20 ms of copies queued; the reads run while they do
        beside = reads(5)
        busy = not end.done
        end.synchronize()
        copy_beside = 40 * host.nbytes / (cp.cuda.get_elapsed_time(start, end) / 1e3)
        # the copy of rows the host has just read into the pinned buffer (as a call's last chunk is
        # copied), written with plain stores (left in the cores' caches) or streamed past them
        after = {}
        for streaming in (False, True):
            taken = []
            for _ in range(4):
                keys = cold[cursor - misses : cursor]
                cursor -= misses
                store._host.tables["t"].find(keys, host, found, store._host.pool, streaming=streaming)
                start, end = copies(1)
                end.synchronize()
                taken.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
            after[streaming] = host.nbytes / float(np.median(taken))
            read_s = []
            for _ in range(4):
                keys = cold[cursor - misses : cursor]
                cursor -= misses
                t0 = time.perf_counter()
                store._host.tables["t"].find(keys, host, found, store._host.pool, streaming=streaming)
                read_s.append(time.perf_counter() - t0)
            after[streaming, "read"] = float(np.median(read_s))
    print(f"\n## The host reads and the copies to the device, alone and at once ({misses:,} keys never read before, "
          f"{host.nbytes / 1e6:.1f} MB of rows)\n\n| | alone | at once |\n|---|---:|---:|\n"
          f"| host reads, ms a call's misses (median of 5) | {1e3 * alone:.3f} | {1e3 * beside:.3f} |\n"
          f"| pinned host-to-device copies, GB/s (40 of the rows) | {copy_alone / 1e9:.1f} | {copy_beside / 1e9:.1f} |\n\n"
          f"The copies were still running when the reads ended: {'yes' if busy else 'NO (the at-once read figure is partly alone)'}\n\n"
          f"Rows read by the host into the pinned buffer, then copied at once (median of 4), by how the reads write them:\n\n"
          f"| rows written | host read ms | the copy right after, GB/s |\n|---|---:|---:|\n"
          f"| plain stores (left in the cores' caches) | {1e3 * after[False, 'read']:.3f} | {after[False] / 1e9:.1f} |\n"
          f"| non-temporal stores (streamed to memory) | {1e3 * after[True, 'read']:.3f} | {after[True] / 1e9:.1f} |",
          flush=True)


def main() -> int:
    import cupy as cp

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", action="store_true", help="one caller's calls step by step, then --contention")
    parser.add_argument("--contention", action="store_true", help="the host reads and the copies, alone and at once")
    parser.add_argument("--ab", action="store_true", help="VARIANTS against one another, interleaved, "
                        "then the trace of the second")
    args = parser.parse_args()
    from embedding_cache import gpu

    product = (gpu._TAPER, gpu._STREAM_ROWS, gpu._COPY_STREAM, gpu._CROWDED_CHUNKS, gpu._CROWDED_COPY_STREAM, gpu._SEND_BESIDE_READ)  # the product's, before a variant sets its own
    rng = np.random.default_rng(5)
    path = _store_of(Path(tempfile.mkdtemp()) / "s", ROWS, DIM)
    hot = rng.permutation(ROWS)[:HOT].astype(np.int64)
    cold = np.setdiff1d(np.arange(ROWS, dtype=np.int64), hot)
    rng.shuffle(cold)
    if args.ab:
        print(*interleaved(cp, path, rng, hot, cold), sep="\n", flush=True)
        trace(cp, path, rng, hot, cold, variants=(VARIANTS[1],))
        return 0
    if args.trace or args.contention:
        if args.trace:
            trace(cp, path, rng, hot, cold, ((2, *product), (4, *product)))
        contention(cp, path, cold)  # from the end of cold: keys not read for at least a store's calls
        return 0
    print(f"# The GPU tier's miss path by chunks a call ({N:,} keys a call, dim {DIM} fp32, {ROWS:,} rows, {HOT:,} hot keys; "
          f"{TIMED} timed calls shared among the callers)\n")
    print("| chunks | hit rate (set) | callers | hit rate (measured) | ms a call | G keys/s | output checked |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for chunks in CHUNKS:
        print(*probe(cp, path, (chunks, *product), rng, hot, cold), sep="\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
