"""The GPU tier (CUDA): lookups of device keys equal the host store's rows, on hits and misses,
under every eviction policy, fp16 storage, updates, several streams, torch tensors, and
capacities from one set of rows to over 1 GB."""

from __future__ import annotations

import numpy as np
import pytest

from embedding_cache import EmbeddingStore, build_store

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


@pytest.mark.parametrize("admission", [False, True])
@pytest.mark.parametrize("eviction", ["lru", "lfu"])
@pytest.mark.parametrize("capacity_rows", [32, 4_096, 100_000])
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
    from tritonrec.embeddings import EmbeddingLookupModel

    rng = np.random.default_rng(8)
    tables = {name: (np.arange(5_000, dtype=np.int64), rng.normal(size=(5_000, 16)).astype(np.float32)) for name in ("a", "b", "c")}
    path = build_store(tmp_path / "s", tables, missing={"a": "zeros", "b": "error", "c": "zeros"})
    ids = rng.integers(0, 5_000, size=(300, 3))
    bad = ids[:2].copy()
    bad[1, 1] = 10**6  # absent from the strict table b
    with EmbeddingLookupModel.open(path, ["a", "b", "c"], device=0, gpu_cache_bytes=1 << 20) as model:
        results = model.execute([{"ids": cupy.asarray(ids[:100])}, {"ids": cupy.asarray(bad)}, {"ids": cupy.asarray(ids[100:])}])
        got = cupy.asnumpy(cupy.concatenate([results[0]["embeddings"], results[2]["embeddings"]]))
        expected = np.stack([tables[t][1][ids[:, j]] for j, t in enumerate("abc")], axis=1)
        np.testing.assert_array_equal(got, expected)
        assert "1 key(s) not in table 'b': [1000000]" in str(results[1])
        counters = model.take_counter_deltas()
        assert counters[("a", "gpu")][0] >= 300 and ("a", "host") in counters
