"""The GPU tier (CUDA): lookups of device keys equal the host store's rows, on hits and misses,
under every eviction policy, fp16 storage, updates, several streams, torch tensors, and
capacities from the smallest (4,096 rows) to over 1 GB; and the cache's decisions against its host twin's."""

from __future__ import annotations

import numpy as np
import pytest

from embedding_cache import EmbeddingStore, GpuCacheOptions, _core, build_store
from test_cache_policy import key_of_tag

pytestmark = pytest.mark.gpu
def _cupy():
    """cupy, imported per test: the module must collect where cupy is not installed."""
    return pytest.importorskip("cupy")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rng = np.random.default_rng(0)
    keys = rng.choice(10**9, size=50_000, replace=False).astype(np.int64)
    rows = rng.normal(size=(50_000, 64)).astype(np.float32)
    path = build_store(tmp_path_factory.mktemp("gpu") / "s", {"t": (keys, rows), "v": (keys[:100], rows[:100, :8])}, missing={"t": "zeros", "v": [2.0] * 8})
    return path, keys, rows


def _reference(keys_all, rows_all, query):
    position = {int(k): i for i, k in enumerate(keys_all)}
    out = np.zeros((query.size, rows_all.shape[1]), dtype=np.float32)
    for j, k in enumerate(query.tolist()):
        if k in position:
            out[j] = rows_all[position[k]]
    return out


def _in_threads(target, count: int = 4) -> None:
    """Runs target(t) on ``count`` threads at once, t = 0 .. count - 1, and waits for them all."""
    import threading

    threads = [threading.Thread(target=target, args=(t,)) for t in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.parametrize("admission", [False, True])
@pytest.mark.parametrize("eviction", ["lru", "lfu"])
@pytest.mark.parametrize("capacity_rows", [1, 10_000, 100_000])  # 1: one row's bytes, rounded up to 4,096 rows (256 sets)
def test_lookups_equal_the_host_rows(table, eviction, capacity_rows, admission):
    cupy = _cupy()
    path, keys, rows = table
    rng = np.random.default_rng(capacity_rows)
    with EmbeddingStore(path, device=0, gpu_cache_bytes=capacity_rows * 300, gpu_eviction=eviction, gpu_admission=admission) as store:
        for _ in range(4):
            hot = rng.choice(keys[:2_000], size=3_000)
            cold = rng.choice(keys, size=2_000)
            absent = rng.integers(2 * 10**9, 3 * 10**9, size=200)
            query = rng.permutation(np.concatenate([hot, cold, absent])).astype(np.int64)
            got = store.lookup("t", cupy.asarray(query))
            assert isinstance(got, cupy.ndarray) and got.shape == (query.size, 64) and got.dtype == cupy.float32
            np.testing.assert_array_equal(cupy.asnumpy(got), _reference(keys, rows, query))
        stats = store.stats()["t"]["tiers"]["gpu"]
        assert stats["hits"] > 0 and stats["misses"] > 0 and stats["hits"] + stats["misses"] == 4 * 5_200


# 1, 1 and 4 sixteen-byte moves a lane; 264: rows wider than 8 moves a lane (the vector loop); 12: the scalar copy
@pytest.mark.parametrize("dim", [8, 32, 128, 264, 12])
def test_a_million_keys_with_misses_in_one_call(tmp_path, dim):
    """Warps loop over the keys (the grid is capped) and meet hits and misses in one step: every row
    right (an earlier kernel hung here: a vote behind `found &&` left the missing keys' lanes out)."""
    cupy = _cupy()
    rng = np.random.default_rng(dim)
    keys = rng.choice(10**12, size=300_000, replace=False).astype(np.int64)
    rows = rng.normal(size=(keys.size, dim)).astype(np.float32)
    path = build_store(tmp_path / "s", {"t": (keys, rows)}, missing="zeros")
    query = np.where(rng.random(1 << 20) < 0.3, rng.integers(10**12, 2 * 10**12, 1 << 20), rng.choice(keys, 1 << 20))
    position = np.full(query.size, -1)
    present = np.isin(query, keys)
    position[present] = np.searchsorted(np.sort(keys), query[present])
    expected = np.zeros((query.size, dim), np.float32)
    expected[present] = rows[np.argsort(keys)][position[present]]
    with EmbeddingStore(path, device=0, gpu_cache_bytes=200_000 * (dim * 4 + 16)) as store:
        for _ in range(3):  # cold, then partly cached, then as cached as the capacity allows
            np.testing.assert_array_equal(cupy.asnumpy(store.lookup("t", cupy.asarray(query))), expected)
        stats = store.stats()["t"]["tiers"]["gpu"]
        assert stats["hits"] > 0 and stats["misses"] > 0


def test_the_missing_key_policy_applies_on_the_gpu(table):
    cupy = _cupy()
    path, keys, rows = table
    with EmbeddingStore(path, device=0, gpu_cache_bytes=1 << 20) as store:
        query = np.array([keys[3], 7, keys[5], 7], dtype=np.int64)
        for _ in range(2):  # a second time from the cache: absent keys are never cached
            got = cupy.asnumpy(store.lookup("v", cupy.asarray(query)))
            np.testing.assert_array_equal(got[[0, 2]], rows[[3, 5], :8])
            np.testing.assert_array_equal(got[[1, 3]], np.full((2, 8), 2.0, np.float32))


def test_fp16_storage_of_an_fp16_table_is_exact(tmp_path):
    cupy = _cupy()
    rng = np.random.default_rng(1)
    keys = np.arange(20_000, dtype=np.int64) * 7
    rows = rng.normal(size=(20_000, 32)).astype(np.float16).astype(np.float32)
    path = build_store(tmp_path / "s", {"t": (keys, rows)}, dtype="float16")
    with EmbeddingStore(path, device=0, gpu_cache_bytes=5_000 * 100, gpu_cache_dtype="float16") as store:
        query = rng.choice(keys, size=30_000)
        for _ in range(3):
            np.testing.assert_array_equal(cupy.asnumpy(store.lookup("t", cupy.asarray(query))), rows[query // 7])


@pytest.mark.parametrize("admission", [False, True])
@pytest.mark.parametrize("eviction", ["lru", "lfu"])
def test_the_gpu_cache_decides_as_its_host_twin(eviction, admission):
    # One key a call, each miss inserted at once, as simulate_set_cache does: then every hit and miss
    # must agree, including the LRU clock (lru_clock of the misses so far: a tick per 256 misses here),
    # eviction, admission and aging (counts halved every 4,096 misses, by CAS on the GPU).
    cupy = _cupy()
    rng = np.random.default_rng(5)
    keys = rng.choice(2**62, size=40_000, replace=False).astype(np.int64)
    weights = np.arange(1, keys.size + 1, dtype=np.float64) ** -0.7
    trace = keys[rng.choice(keys.size, size=16_000, p=weights / weights.sum())]
    capacity = 4_096
    expected = _core.simulate_set_cache(trace, capacity, 16, eviction, 1, admission, 1)
    cache = _core.GpuCache(capacity, 8, _core.GpuRowDtype.float32, eviction, 0, admission, 1)
    stream = cupy.cuda.get_current_stream()
    device_keys, row = cupy.asarray(trace), cupy.zeros((1, 8), cupy.float32)
    out, miss_index, miss_count = cupy.empty((1, 8), cupy.float32), cupy.empty(1, cupy.int32), cupy.empty(1, cupy.int32)
    got, misses = np.zeros(trace.size, dtype=np.uint8), 0
    for i in range(trace.size):
        tick = _core.lru_clock(misses, capacity)
        key = device_keys[i : i + 1]
        cache.find(key.data.ptr, 1, out.data.ptr, miss_index.data.ptr, miss_count.data.ptr, tick, stream.ptr)
        if int(miss_count.get()[0]):
            misses += 1
            cache.insert(key.data.ptr, row.data.ptr, 1, tick, stream.ptr)
        else:
            got[i] = 1
    assert misses > 2 * capacity and 0.2 < expected.mean() < 0.9  # the counts were aged twice
    mismatches = np.flatnonzero(got != expected)
    assert mismatches.size == 0, f"{mismatches.size} differences, the first at accesses {mismatches[:10].tolist()}"


def test_an_insert_given_an_older_tick_keeps_the_rows_a_newer_lookup_touched():
    # Sets full of rows of tick 1, a hot set inserted at tick 2 and then hit at tick 5 (another stream's
    # lookup, whose clock ran ahead); then new keys inserted at tick 3 (an insert given its clock
    # before that lookup) must evict the tick-1 rows, never the hot ones (taken mod 256 they looked
    # 254 ticks old). 512 hot and 512 new keys over 256 sets: at most ~12 a set, below 16 ways.
    cupy = _cupy()
    rng = np.random.default_rng(3)
    old, hot, new = np.split(rng.choice(2**62, size=8_192 + 1_024, replace=False).astype(np.int64), [8_192, 8_704])
    cache = _core.GpuCache(4_096, 8, _core.GpuRowDtype.float32, "lru", 0, False, 1)
    stream = cupy.cuda.get_current_stream()

    def insert(keys, tick):
        device_keys = cupy.asarray(keys)
        cache.insert(device_keys.data.ptr, cupy.zeros((keys.size, 8), cupy.float32).data.ptr, keys.size, tick, stream.ptr)

    def hits(keys, tick):
        device_keys, out = cupy.asarray(keys), cupy.empty((keys.size, 8), cupy.float32)
        miss_index, miss_count = cupy.empty(keys.size, cupy.int32), cupy.empty(1, cupy.int32)
        cache.find(device_keys.data.ptr, keys.size, out.data.ptr, miss_index.data.ptr, miss_count.data.ptr, tick, stream.ptr)
        return keys.size - int(miss_count.get()[0])

    insert(old, 1)
    insert(hot, 2)
    assert hits(hot, 5) == hot.size
    insert(new, 3)
    assert hits(hot, 5) == hot.size
    assert hits(new, 5) == new.size


def test_keys_of_the_empty_tag_and_the_int64_extremes_are_served_exactly(tmp_path):
    # A key whose 56-bit tag is the empty slot's is never cached (it misses every time, its row comes
    # from the host), and the keys once used as the empty marker (INT64_MIN) or at the edges are cached
    # like any other.
    cupy = _cupy()
    empty = [key_of_tag((1 << 56) - 1, high) for high in (0, 7, 255)]
    edges = [np.iinfo(np.int64).min, np.iinfo(np.int64).max, -1, 0, 1]
    keys = np.array(empty + edges, dtype=np.int64)
    rows = np.arange(keys.size * 8, dtype=np.float32).reshape(-1, 8)
    path = build_store(tmp_path / "s", {"t": (keys, rows)})
    with EmbeddingStore(path, device=0, gpu_cache_bytes=1) as store:
        for _ in range(3):
            np.testing.assert_array_equal(cupy.asnumpy(store.lookup("t", cupy.asarray(keys))), rows)
        stats = store.stats()["t"]["tiers"]["gpu"]
    assert stats["misses"] == 3 * len(empty) + len(edges) and stats["hits"] == 2 * len(edges)


def test_keys_copied_for_a_lookup_on_a_stream_of_their_own_are_read_after_their_copy(table):
    # Keys that are not contiguous (every other one, a cupy view and a torch view) and host keys,
    # looked up on a non-blocking stream while the current stream is busy: the lookup copies them
    # (contiguous, or to the device) on its own stream, so it never reads a copy before it is
    # written (it did when they were copied on the current stream).
    cupy = _cupy()
    torch = pytest.importorskip("torch")
    path, keys, rows = table
    with EmbeddingStore(path, device=0, gpu_cache_bytes=1 << 22) as store:
        stream = cupy.cuda.Stream(non_blocking=True)
        busy = cupy.ones((4_096, 4_096), cupy.float32)
        for size in (0, 1, 2, 3, 5, 40_000):  # every other key (and every fourth from the second) of `size`
            query = np.random.default_rng(size).choice(keys, size=size)
            device_query = cupy.asarray(query)
            cupy.cuda.get_current_stream().synchronize()
            for _ in range(20):  # some tens of ms of work queued on the current stream
                busy = busy @ busy / 4_096
            got = store.lookup("t", device_query[::2], stream=stream)
            stream.synchronize()
            np.testing.assert_array_equal(cupy.asnumpy(got), _reference(keys, rows, query[::2]))
            for _ in range(20):
                busy = busy @ busy / 4_096
            np.testing.assert_array_equal(store.lookup("t", query[1::4], stream=stream), _reference(keys, rows, query[1::4]))
            torch_stream = torch.cuda.Stream()
            with torch.cuda.stream(torch_stream):
                strided = torch.from_numpy(query).cuda()[1::2]
            torch_stream.synchronize()
            got = store.lookup("t", strided, stream=torch_stream)
            torch_stream.synchronize()
            np.testing.assert_array_equal(got.cpu().numpy(), _reference(keys, rows, query[1::2]))
        cupy.cuda.get_current_stream().synchronize()


def test_an_update_is_seen_by_the_next_lookup(table, tmp_path):
    cupy = _cupy()
    path, keys, rows = table
    with EmbeddingStore(path, device=0, gpu_cache_bytes=1 << 24) as store:
        query = cupy.asarray(keys[:1000])
        store.lookup("t", query)  # now cached
        new = np.full((10, 64), 9.0, np.float32)
        store.update("t", keys[:10], new)
        got = cupy.asnumpy(store.lookup("t", query))
        np.testing.assert_array_equal(got[:10], new)
        np.testing.assert_array_equal(got[10:], rows[10:1000])
        store.erase("t", keys[10:20])
        assert not cupy.asnumpy(store.lookup("t", query))[10:20].any()


def test_several_streams_and_torch_tensors(table):
    cupy = _cupy()
    torch = pytest.importorskip("torch")
    path, keys, rows = table
    with EmbeddingStore(path, device=0, gpu_cache_bytes=1 << 22) as store:
        streams = [cupy.cuda.Stream(non_blocking=True) for _ in range(3)]
        queries = [np.random.default_rng(i).choice(keys, size=20_000) for i in range(3)]
        outs = [store.lookup("t", cupy.asarray(q), stream=s) for q, s in zip(queries, streams)]
        for q, o, s in zip(queries, outs, streams):
            s.synchronize()
            np.testing.assert_array_equal(cupy.asnumpy(o), _reference(keys, rows, q))
        t = torch.from_numpy(queries[0]).cuda()
        got = store.lookup("t", t, stream=torch.cuda.current_stream())
        assert isinstance(got, torch.Tensor) and got.is_cuda
        np.testing.assert_array_equal(got.cpu().numpy(), _reference(keys, rows, queries[0]))


@pytest.mark.parametrize("async_insert", [False, True])
def test_threads_looking_up_at_once_each_get_their_own_rows(table, async_insert):
    # Four threads, each on a stream of its own, with misses every call (a cache of a fifth of the
    # keys) and keys that exist nowhere: their misses share two pinned stagings and the host tiers.
    cupy = _cupy()
    path, keys, rows = table
    absent = np.arange(10**9, 10**9 + 500, dtype=np.int64)
    with EmbeddingStore(path, device=0, gpu_cache_bytes=10_000 * 300, gpu_async_insert=async_insert) as store:
        errors = []

        def caller(t: int) -> None:
            rng = np.random.default_rng(t)
            stream = cupy.cuda.Stream(non_blocking=True)
            try:
                for size in (1, 2, 3_000, 40_000, 0, 25_000):
                    query = np.concatenate([rng.choice(keys, size), rng.choice(absent, size // 10)])
                    got = store.lookup("t", cupy.asarray(query), stream=stream)
                    stream.synchronize()
                    np.testing.assert_array_equal(cupy.asnumpy(got), _reference(keys, rows, query))
            except BaseException as e:  # noqa: BLE001 - raised in the main thread
                errors.append(e)

        _in_threads(caller)
        assert not errors, errors[0]
        gpu = store.stats()["t"]["tiers"]["gpu"]
        assert gpu["hits"] + gpu["misses"] == 4 * sum(s + s // 10 for s in (1, 2, 3_000, 40_000, 0, 25_000))


def test_the_lru_clock_counts_every_lookups_misses(table):
    # The clock a lookup gets is read in C++ once the call has its staging (not before a caller waits
    # for one, which left it many ticks behind the other callers' with four at once): lru_clock of
    # every miss counted so far, whichever thread or stream counted it.
    cupy = _cupy()
    path, keys, _ = table
    with EmbeddingStore(path, device=0, gpu_cache_bytes=4_096 * 300) as store:
        cache = store._gpu._tables["t"]
        assert cache.lru_tick == _core.lru_clock(0, cache.capacity_rows) == 1
        _in_threads(lambda i: store.lookup("t", cupy.asarray(keys[i * 10_000:(i + 1) * 10_000])))
        misses = store.stats()["t"]["tiers"]["gpu"]["misses"]
        assert misses == 40_000  # keys never asked before
        assert cache.lru_tick == _core.lru_clock(misses, cache.capacity_rows) > 100


@pytest.mark.parametrize(("async_insert", "beside"), [(False, False), (True, False), (False, True)])
def test_a_traced_lookup_marks_every_chunks_steps_in_order(table, monkeypatch, async_insert, beside):
    # The trace (tools/profile_miss_path.py's profile) of a call of 3 chunks, every chunk with misses:
    # the host's steps in the order the call takes them, each chunk listed, read and sent (with
    # `beside`, a chunk sent after the next is listed, while it is read), its GPU work timed before
    # the call's streams were done; untraced calls leave the last trace as it was.
    from embedding_cache import gpu

    monkeypatch.setattr(gpu, "_SEND_BESIDE_READ", beside)
    monkeypatch.setattr(gpu, "_CHUNKS", 3)
    monkeypatch.setattr(gpu, "_MIN_CHUNK_ROWS", 1_000)
    cupy = _cupy()
    path, keys, rows = table
    query = keys[np.random.default_rng(11).permutation(keys.size)[:6_000]]  # never asked before: all miss
    with EmbeddingStore(path, device=0, gpu_cache_bytes=4_096 * 300, gpu_async_insert=async_insert) as store:
        lookup = store._gpu._lookup
        assert lookup.trace is False and lookup.last_trace() == []
        lookup.trace = True
        got = store.lookup("t", cupy.asarray(query))
        np.testing.assert_array_equal(cupy.asnumpy(got), _reference(keys, rows, query))
        marks = lookup.last_trace()
        host = [(what, chunk) for what, chunk, _ in marks if not what.startswith("gpu")]
        steps = [(w, c) for c in range(3) for w in ("listed", "read", "sent")]
        if beside:
            steps = [("listed", 0), ("read", 0), ("listed", 1), ("sent", 0), ("read", 1), ("listed", 2), ("sent", 1), ("read", 2), ("sent", 2)]
        assert host == [("staging", -1), ("queued", -1), *steps, ("end", -1), ("stream done", -1)]
        times = [us for what, _, us in marks if not what.startswith("gpu")]
        assert times == sorted(times) and times[0] >= 0
        gpu_steps = {(what, chunk): us for what, chunk, us in marks if what.startswith("gpu")}
        assert set(gpu_steps) == {(w, c) for c in range(3) for w in ("gpu listed", "gpu copied", "gpu scattered", "gpu inserted")}
        assert all(0 <= us <= times[-1] + 50 for us in gpu_steps.values())
        for c in range(3):
            assert gpu_steps["gpu listed", c] <= gpu_steps["gpu copied", c] <= gpu_steps["gpu scattered", c]
        lookup.trace = False
        store.lookup("t", cupy.asarray(query[:10]))
        assert lookup.last_trace() == marks


@pytest.mark.parametrize("async_insert", [False, True])
@pytest.mark.parametrize("copy_stream", [False, True])
def test_the_lookups_device_memory_stays_bounded_over_many_calls(table, async_insert, copy_stream, monkeypatch):
    # Each call takes its device memory from the tier's stream-ordered pool and frees it in stream
    # order (with async_insert on the insert stream, which the callers' streams never wait for; with
    # copy_stream the rows' memory is taken on the copy stream): the pool must reuse it, not grow by
    # a call's memory every call (about 5 MB here).
    from embedding_cache import gpu

    monkeypatch.setattr(gpu, "_COPY_STREAM", copy_stream)
    cupy = _cupy()
    path, keys, rows = table
    rng = np.random.default_rng(9)
    with EmbeddingStore(path, device=0, gpu_cache_bytes=4_096 * 300, gpu_async_insert=async_insert) as store:
        sizes = []
        for call in range(80):
            query = rng.choice(keys, 20_000)  # a 4,096-row cache: most of them miss
            got = store.lookup("t", cupy.asarray(query))
            if call % 20 == 19:
                np.testing.assert_array_equal(cupy.asnumpy(got), _reference(keys, rows, query))
            sizes.append(store._gpu._lookup.pool_bytes)
        assert store.stats()["t"]["tiers"]["gpu"]["misses"] > 60 * 15_000
        assert sizes[-1] <= 2 * sizes[9] + (64 << 20), sizes[9::10]


def test_a_cache_over_one_gigabyte(tmp_path):
    cupy = _cupy()
    rng = np.random.default_rng(4)
    keys = np.arange(200_000, dtype=np.int64)
    rows = rng.normal(size=(200_000, 128)).astype(np.float32)
    path = build_store(tmp_path / "s", {"t": (keys, rows)})
    with EmbeddingStore(path, device=0, gpu_cache_bytes=int(1.1 * (1 << 30))) as store:
        assert store.stats()["t"]["tiers"]["gpu"]["bytes"] > 1 << 30
        query = rng.choice(keys, size=100_000)
        for _ in range(2):
            np.testing.assert_array_equal(cupy.asnumpy(store.lookup("t", cupy.asarray(query))), rows[query])
        assert store.stats()["t"]["tiers"]["gpu"]["misses"] <= 100_000


def test_bad_device_arguments(table):
    cupy = _cupy()
    path, _, _ = table
    with pytest.raises(ValueError, match="give both"):
        EmbeddingStore(path, device=0)
    with pytest.raises(ValueError, match="device 99: this process sees"):
        EmbeddingStore(path, device=99, gpu_cache_bytes=1 << 20)
    with pytest.raises(ValueError, match="gpu_eviction 'fifo'"):
        EmbeddingStore(path, device=0, gpu_cache_bytes=1 << 20, gpu_eviction="fifo")
    with EmbeddingStore(path) as store, pytest.raises(ValueError, match="opened without a GPU tier"):
        store.lookup("t", cupy.arange(3, dtype=cupy.int64))
    with EmbeddingStore(path, device=0, gpu_cache_bytes=1 << 20) as store, pytest.raises(TypeError, match="expected device int64 keys"):
        store.lookup("t", cupy.arange(3, dtype=cupy.int32))


def test_an_update_is_not_undone_by_an_insert_still_queued_on_another_stream(table):
    cupy = _cupy()
    path, keys, rows = table
    with EmbeddingStore(path, device=0, gpu_cache_bytes=1 << 26) as store:
        first, second = cupy.cuda.Stream(non_blocking=True), cupy.cuda.Stream(non_blocking=True)
        store.lookup("t", cupy.asarray(keys), stream=first)  # every key misses: a large insert is queued on `first`
        new = np.full((100, 64), -3.0, np.float32)
        store.update("t", keys[:100], new)
        got = store.lookup("t", cupy.asarray(keys[:1000]), stream=second)
        second.synchronize()
        np.testing.assert_array_equal(cupy.asnumpy(got)[:100], new)
        np.testing.assert_array_equal(cupy.asnumpy(got)[100:], rows[100:1000])


def test_the_embedding_lookup_model_on_gpu_ids(tmp_path):
    cupy = _cupy()
    from tritonrec.serving.lookup_model import EmbeddingLookupModel

    rng = np.random.default_rng(8)
    tables = {name: (np.arange(5_000, dtype=np.int64), rng.normal(size=(5_000, 16)).astype(np.float32)) for name in ("a", "b", "c")}
    path = build_store(tmp_path / "s", tables, missing={"a": "zeros", "b": "error", "c": "zeros"})
    ids = rng.integers(0, 5_000, size=(300, 3))
    bad = ids[:2].copy()
    bad[1, 1] = 10**6  # absent from the strict table b
    with EmbeddingLookupModel.open(path, ["a", "b", "c"], device=0, gpu_cache=GpuCacheOptions(1 << 20)) as model:
        results = model.execute([{"ids": cupy.asarray(ids[:100])}, {"ids": cupy.asarray(bad)}, {"ids": cupy.asarray(ids[100:])}])
        got = cupy.asnumpy(cupy.concatenate([results[0]["embeddings"], results[2]["embeddings"]]))
        expected = np.stack([tables[t][1][ids[:, j]] for j, t in enumerate("abc")], axis=1)
        np.testing.assert_array_equal(got, expected)
        assert "1 key(s) not in table 'b': [1000000]" in str(results[1])
        counters = model.take_counter_deltas()
        assert counters[("a", "gpu")][0] >= 300 and ("a", "host") in counters


def _bf16(rows: np.ndarray) -> np.ndarray:
    """float32 rows rounded to bfloat16 (nearest even) and back, as torch rounds them."""
    torch = pytest.importorskip("torch")
    return torch.from_numpy(rows).to(torch.bfloat16).to(torch.float32).numpy()


@pytest.mark.parametrize("storage", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("out_dtype", ["float32", "float16"])
def test_storage_and_output_dtypes(table, storage, out_dtype):
    # misses are the host's float32 rows, hits the stored rows; either way in the output dtype
    cupy = _cupy()
    path, keys, rows = table
    stored = {"float32": rows, "float16": rows.astype(np.float16).astype(np.float32), "bfloat16": _bf16(rows)}[storage]
    query = np.random.default_rng(3).choice(keys[:5_000], size=8_000)
    with EmbeddingStore(path, device=0, gpu_cache_bytes=1 << 24, gpu_cache_dtype=storage) as store:
        first = store.lookup("t", cupy.asarray(query), out_dtype=out_dtype)
        second = store.lookup("t", cupy.asarray(query), out_dtype=out_dtype)
        assert first.dtype == second.dtype == cupy.dtype(out_dtype) and second.shape == (query.size, 64)
        index = np.searchsorted(keys[:5_000][np.argsort(keys[:5_000])], query)
        order = np.argsort(keys[:5_000])[index]
        np.testing.assert_array_equal(cupy.asnumpy(first), rows[order].astype(out_dtype))
        np.testing.assert_array_equal(cupy.asnumpy(second), stored[order].astype(out_dtype))
        assert store.stats()["t"]["tiers"]["gpu"]["hits"] >= query.size


def test_numpy_keys_go_through_the_gpu_tier_and_come_back_as_numpy(table):
    path, keys, rows = table
    query = np.concatenate([keys[:500], [5 * 10**9]])
    with EmbeddingStore(path, device=0, gpu_cache_bytes=1 << 22) as store:
        for _ in range(2):
            got = store.lookup("t", query)
            assert isinstance(got, np.ndarray) and got.dtype == np.float32
            np.testing.assert_array_equal(got, _reference(keys, rows, query))
        out = np.empty((query.size, 64), dtype=np.float16)
        assert store.lookup("t", query, out=out, out_dtype="float16") is out
        np.testing.assert_array_equal(out, _reference(keys, rows, query).astype(np.float16))
        gpu = store.stats()["t"]["tiers"]["gpu"]
        assert gpu["hits"] + gpu["misses"] == 3 * query.size and gpu["hits"] >= 2 * 500


@pytest.mark.parametrize("chunks", [None, (16, 7)])  # (16, 7): each call cut into 16 chunks of 188 key rows
@pytest.mark.parametrize("async_insert", [False, True])
def test_several_tables_in_one_call(tmp_path, async_insert, chunks, monkeypatch):
    cupy = _cupy()
    torch = pytest.importorskip("torch")
    if chunks is not None:
        from embedding_cache import gpu

        monkeypatch.setattr(gpu, "_CHUNKS", chunks[0])
        monkeypatch.setattr(gpu, "_MIN_CHUNK_ROWS", chunks[1])
    rng = np.random.default_rng(11)
    tables = {name: (rng.choice(10**8, 20_000, replace=False).astype(np.int64), rng.normal(size=(20_000, 24)).astype(np.float32))
              for name in ("a", "b", "c", "d")}
    path = build_store(tmp_path / "s", tables, missing={"a": "zeros", "b": [1.5] * 24, "c": "zeros", "d": "zeros"})
    names = list(tables)
    with EmbeddingStore(path) as host_only, EmbeddingStore(path, device=0, gpu_cache_bytes=1 << 21, gpu_async_insert=async_insert) as store:
        for step in range(4):
            ids = np.stack([rng.choice(tables[t][0][: 2_000 * (step + 1)], size=3_000) for t in names], axis=1)
            ids[::97, 1] = -5  # absent from b: its default vector
            expected = host_only.lookup_columns(names, ids)
            got = store.lookup_columns(names, cupy.asarray(ids))
            assert isinstance(got, cupy.ndarray) and got.shape == (3_000, 4, 24)
            np.testing.assert_array_equal(cupy.asnumpy(got), expected)
            got_torch = store.lookup_columns(names, torch.from_numpy(ids).cuda())
            assert isinstance(got_torch, torch.Tensor)
            np.testing.assert_array_equal(got_torch.cpu().numpy(), expected)
        counters = store.counters()
        assert all(counters[t]["gpu"][0] == 8 * 3_000 and 0 < counters[t]["gpu"][1] < 8 * 3_000 for t in names)
        with pytest.raises(TypeError, match=r"expected device int64 keys of shape \(n, 4\)"):
            store.lookup_columns(names, cupy.zeros((5, 3), dtype=cupy.int64))
        with pytest.raises(ValueError, match="found: only for host keys"):
            store.lookup_columns(names, cupy.zeros((5, 4), dtype=cupy.int64), found=np.zeros((5, 4), np.uint8))


def test_lookups_stay_exact_while_another_stream_inserts(table):
    # A small cache: inserts of cold keys on one stream keep evicting the hot keys that lookups on
    # another stream are reading. Each hit is re-checked after its row is copied, so a lookup gets
    # either the whole true row or a miss (then read from the host), never a row being rewritten.
    cupy = _cupy()
    path, keys, rows = table
    hot = keys[:256]
    hot_query = cupy.asarray(np.tile(hot, 400))
    expected = np.tile(rows[:256], (400, 1))
    with EmbeddingStore(path, device=0, gpu_cache_bytes=512 * 300, gpu_async_insert=True) as store:
        reader, writer = cupy.cuda.Stream(non_blocking=True), cupy.cuda.Stream(non_blocking=True)
        for step in range(12):
            cold = cupy.asarray(keys[1_000 + 4_000 * step : 1_000 + 4_000 * (step + 1)])
            store.lookup("t", cold, stream=writer)  # misses: inserts queued on the tier's stream
            got = store.lookup("t", hot_query, stream=reader)
            reader.synchronize()
            np.testing.assert_array_equal(cupy.asnumpy(got), expected)


def test_rows_read_before_an_update_are_not_cached_after_it(table):
    # An update landing while a lookup reads its misses from the host (another thread's update, here
    # made from inside the host tier's completion of the keys the host table lacks) must not be
    # undone by that lookup inserting the old rows.
    cupy = _cupy()
    path, keys, rows = table
    new = np.full((5, 64), 7.0, np.float32)
    query = np.concatenate([keys[:50], [-1]])  # -1 exists nowhere: the host tier completes it
    with EmbeddingStore(path, device=0, gpu_cache_bytes=1 << 22) as store:
        complete = store._host.complete
        updated = []

        def complete_then_update(*args, **kwargs):
            complete(*args, **kwargs)
            if not updated:
                updated.append(True)
                store.update("t", keys[:5], new)

        store._host.complete = complete_then_update
        first = cupy.asnumpy(store.lookup("t", cupy.asarray(query)))
        assert updated
        np.testing.assert_array_equal(first[:50], rows[:50])  # began before the update: the old rows
        store._host.complete = complete
        second = cupy.asnumpy(store.lookup("t", cupy.asarray(query)))
        np.testing.assert_array_equal(second[:5], new)
        np.testing.assert_array_equal(second[5:50], rows[5:50])
        np.testing.assert_array_equal(second[50], np.zeros(64, np.float32))


@pytest.mark.parametrize("async_insert", [False, True])
@pytest.mark.parametrize("out_dtype", ["float32", "float16"])
@pytest.mark.parametrize(("taper", "stream_rows", "copy_stream", "beside"), [(False, False, False, False), (True, True, True, True)])
def test_every_size_around_the_chunk_boundaries(tmp_path, monkeypatch, async_insert, out_dtype, taper, stream_rows, copy_stream, beside):
    # Calls cut into 3 chunks of at least 5 key rows (even, or tapered: the ends half the middle, the
    # missed rows streamed into the staging past the CPU's caches, copied on the staging's own
    # stream, each chunk sent while the pool reads the next): sizes at, below and past the chunk
    # sizes, two tables, hits, misses and keys that exist nowhere in some chunks only, against the host store.
    cupy = _cupy()
    from embedding_cache import gpu

    monkeypatch.setattr(gpu, "_CHUNKS", 3)
    monkeypatch.setattr(gpu, "_MIN_CHUNK_ROWS", 5)
    monkeypatch.setattr(gpu, "_TAPER", taper)
    monkeypatch.setattr(gpu, "_STREAM_ROWS", stream_rows)
    monkeypatch.setattr(gpu, "_COPY_STREAM", copy_stream)
    monkeypatch.setattr(gpu, "_SEND_BESIDE_READ", beside)
    rng = np.random.default_rng(5)
    keys = rng.choice(10**9, 5_000, replace=False).astype(np.int64)
    tables = {"a": (keys, rng.normal(size=(5_000, 16)).astype(np.float32)), "b": (keys[::-1].copy(), rng.normal(size=(5_000, 16)).astype(np.float32))}
    path = build_store(tmp_path / "s", tables, missing={"a": "zeros", "b": [0.5] * 16})
    with EmbeddingStore(path) as host_only, EmbeddingStore(path, device=0, gpu_cache_bytes=1 << 20, gpu_async_insert=async_insert) as store:
        for repeat in range(2):  # the second time partly from the cache
            for n in (0, 1, 2, 4, 5, 6, 9, 10, 11, 14, 15, 16, 17, 100, 4_099):
                ids = rng.choice(keys[: 300 * (repeat + 1)], size=(n, 2))
                ids[n // 2:, 0][::3] = -7  # absent from a, in the later chunks only
                expected = host_only.lookup_columns(["a", "b"], ids).astype(out_dtype)
                got = cupy.asnumpy(store._lookup_device(["a", "b"], cupy.asarray(ids), None, None, None, out_dtype, columns=True))
                np.testing.assert_array_equal(got, expected, err_msg=f"n={n}")


@pytest.mark.parametrize(("async_insert", "copy_stream", "crowded_copy_stream"),
                         [(False, False, True), (True, False, True), (False, True, False), (True, True, False), (False, True, True)])
def test_calls_at_once_are_cut_into_the_crowded_chunks_and_stay_exact(tmp_path, monkeypatch, async_insert, copy_stream, crowded_copy_stream):
    # Four threads over two stagings, each call at a barrier with the others: a call that starts
    # while another is in flight is cut into 2 chunks (not tapered), a lone one into 4 tapered, chunks
    # of at least 5 key rows; sizes around both cuts, hits, misses and keys that exist nowhere, against
    # the host store. A lone caller's calls are never crowded. With a copy stream for every call, for
    # lone calls only (a staging's calls then switch between it and their own stream) and none.
    import threading

    cupy = _cupy()
    from embedding_cache import gpu

    monkeypatch.setattr(gpu, "_CHUNKS", 4)
    monkeypatch.setattr(gpu, "_CROWDED_CHUNKS", 2)
    monkeypatch.setattr(gpu, "_MIN_CHUNK_ROWS", 5)
    monkeypatch.setattr(gpu, "_TAPER", True)
    monkeypatch.setattr(gpu, "_COPY_STREAM", copy_stream)
    monkeypatch.setattr(gpu, "_CROWDED_COPY_STREAM", crowded_copy_stream)
    rng = np.random.default_rng(8)
    keys = rng.choice(10**9, 5_000, replace=False).astype(np.int64)
    path = build_store(tmp_path / "s", {"t": (keys, rng.normal(size=(5_000, 16)).astype(np.float32))}, missing="zeros")
    sizes = (0, 1, 2, 5, 9, 10, 11, 19, 20, 21, 30, 100, 4_099)
    with EmbeddingStore(path) as host_only, EmbeddingStore(path, device=0, gpu_cache_bytes=1 << 20, gpu_async_insert=async_insert) as store:
        errors, at_once = [], threading.Barrier(4)

        def caller(t: int) -> None:
            local = np.random.default_rng(t)
            stream = cupy.cuda.Stream(non_blocking=True)
            for n in sizes:
                query = local.choice(np.concatenate([keys[: 500 + 100 * t], [-7, -8]]), n)
                at_once.wait()
                try:
                    got = cupy.asnumpy(store.lookup("t", cupy.asarray(query), stream=stream))
                    np.testing.assert_array_equal(got, host_only.lookup("t", query), err_msg=f"caller {t}, n={n}")
                except BaseException as e:  # noqa: BLE001 - raised in the main thread
                    errors.append(e)

        _in_threads(caller)
        assert not errors, errors[0]
        assert store._gpu._lookup.crowded_calls > 0
        with EmbeddingStore(path, device=0, gpu_cache_bytes=1 << 20, gpu_async_insert=async_insert) as alone:
            for n in sizes:
                query = rng.choice(keys, n)
                np.testing.assert_array_equal(cupy.asnumpy(alone.lookup("t", cupy.asarray(query))), host_only.lookup("t", query), err_msg=f"n={n}")
            assert alone._gpu._lookup.crowded_calls == 0


def test_a_tier_lookups_options_out_of_range_are_refused():
    _cupy()
    for bad in (-1, 5):  # crowded_chunks: 0 (as a lone call) up to chunks
        with pytest.raises(ValueError, match="crowded_chunks"):
            _core.GpuTierLookup(0, chunks=4, crowded_chunks=bad)
    with pytest.raises(ValueError, match="chunks"):
        _core.GpuTierLookup(0, chunks=0)


@pytest.mark.parametrize("beside", [False, True])
def test_a_missing_key_error_in_a_later_chunk_leaves_the_tier_serving(tmp_path, monkeypatch, beside):
    # The error policy raises from the host tier's completion in the middle of a call (its third
    # chunk; with `beside`, after the second chunk was sent while the third was read); the call's
    # queued work finishes, its staging and the host table are released, the next calls are exact.
    cupy = _cupy()
    from embedding_cache import gpu

    monkeypatch.setattr(gpu, "_SEND_BESIDE_READ", beside)
    monkeypatch.setattr(gpu, "_CHUNKS", 4)
    monkeypatch.setattr(gpu, "_MIN_CHUNK_ROWS", 100)
    rng = np.random.default_rng(6)
    keys = np.arange(0, 20_000, 2, dtype=np.int64)
    rows = rng.normal(size=(keys.size, 8)).astype(np.float32)
    path = build_store(tmp_path / "s", {"t": (keys, rows)}, missing="error")
    with EmbeddingStore(path, device=0, gpu_cache_bytes=1 << 20) as store:
        for _ in range(3):
            query = rng.choice(keys, 1_000)
            query[600] = 7  # odd: exists nowhere, in the third chunk (rows 500-749)
            with pytest.raises(KeyError, match="not in table 't'"):
                store.lookup("t", cupy.asarray(query))
            query[600] = keys[0]
            np.testing.assert_array_equal(cupy.asnumpy(store.lookup("t", cupy.asarray(query))), rows[query // 2])
        store.update("t", keys[:1], rows[:1] + 1)  # a write is not held back by the failed calls' reads
        np.testing.assert_array_equal(cupy.asnumpy(store.lookup("t", cupy.asarray(keys[:1]))), rows[:1] + 1)


def test_bad_output_arguments(table):
    cupy = _cupy()
    path, keys, _ = table
    with EmbeddingStore(path, device=0, gpu_cache_bytes=1 << 20) as store:
        query = cupy.asarray(keys[:10])
        with pytest.raises(ValueError, match="out_dtype 'int8'"):
            store.lookup("t", query, out_dtype="int8")
        with pytest.raises(ValueError, match=r"out: expected a C-contiguous float16 device array of shape \(10, 64\)"):
            store.lookup("t", query, out=cupy.empty((10, 64), cupy.float32), out_dtype="float16")
        with pytest.raises(ValueError, match="gpu_cache_dtype 'int8'"):
            EmbeddingStore(path, device=0, gpu_cache_bytes=1 << 20, gpu_cache_dtype="int8")
        np.testing.assert_array_equal(cupy.asnumpy(store.lookup("t", query)), store.lookup("t", keys[:10], found=np.empty(10, np.uint8)))
