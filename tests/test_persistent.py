"""The RocksDB tier: persistence, a host memory budget with frequency-aware caching, failures."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys

import numpy as np
import pytest

from embedding_cache import EmbeddingStore, StoreFormatError, build_store
from embedding_cache import _core


def test_this_build_has_the_rocksdb_tier():
    assert _core.has_rocksdb, "scripts/setup.sh installs librocksdb-dev; the build must include the tier"


@pytest.fixture
def persistent_store(tmp_path):
    rng = np.random.default_rng(5)
    keys = rng.permutation(np.arange(20_000, dtype=np.int64) * 13)
    rows = rng.normal(size=(20_000, 16))
    path = build_store(tmp_path / "s", {"emb": (keys, rows), "small": (np.arange(10), np.ones((10, 2)))}, persistent=True, missing={"small": "error"})
    return path, keys, rows.astype(np.float32)


def test_layout_and_full_load(persistent_store):
    path, keys, rows = persistent_store
    assert (path / "rocksdb").is_dir() and not list((path / "tables").glob("*.npy"))
    with EmbeddingStore(path) as store:
        np.testing.assert_array_equal(store.lookup("emb", keys), rows)
        assert [(t.name, t.rows) for t in store.tables] == [("emb", 20_000), ("small", 10)]
        stats = store.stats()["emb"]["tiers"]
        assert stats["host"]["rows"] == 20_000 and stats["rocksdb"]["rows"] == 20_000 and stats["rocksdb"]["bytes"] > 0


@pytest.mark.parametrize("budget_rows", [1, 500, 5_000])
def test_budget_smaller_than_the_data_returns_true_rows(persistent_store, budget_rows):
    path, keys, rows = persistent_store
    reference = dict(zip(keys.tolist(), rows))
    rng = np.random.default_rng(budget_rows)
    budget = budget_rows * (16 * 4 + 24) + 10 * (2 * 4 + 24)
    with EmbeddingStore(path, host_budget_bytes=budget) as store:
        for _ in range(20):
            query = np.where(rng.random(3000) < 0.9, keys[np.minimum(rng.zipf(1.2, 3000), keys.size) - 1], rng.integers(-(10**9), 0, 3000))
            got = store.lookup("emb", query)
            expected = np.stack([reference.get(int(q), np.zeros(16, np.float32)) for q in query])
            np.testing.assert_array_equal(got, expected)
        tiers = store.stats()["emb"]["tiers"]
        assert tiers["host"]["rows"] <= budget // (16 * 4 + 24)  # the most the budget can hold
        assert tiers["rocksdb"]["hits"] > 0 and tiers["rocksdb"]["misses"] > 0
        with pytest.raises(KeyError, match=r"1 key\(s\) not in table 'small': \[99\]"):
            store.lookup("small", np.array([1, 99]))


def test_host_tier_hit_rate_near_the_static_optimum(tmp_path):
    """10% of the rows in host memory, Zipf(1.05) lookups: the host tier's hit rate over the second
    half is >= 0.95 of the static optimum (the most frequent 10% pinned)."""
    n, dim = 50_000, 8
    keys = np.arange(n, dtype=np.int64)
    path = build_store(tmp_path / "s", {"t": (keys, np.zeros((n, dim)))}, persistent=True)
    rng = np.random.default_rng(0)
    weights = np.arange(1, n + 1, dtype=np.float64) ** -1.05
    cdf = np.cumsum(weights) / weights.sum()
    scramble = rng.permutation(n)  # popularity unrelated to key order
    lookups = scramble[np.minimum(np.searchsorted(cdf, rng.random(600_000)), n - 1)]
    budget_rows = n // 10
    with EmbeddingStore(path, host_budget_bytes=budget_rows * (dim * 4 + 24), threads=1) as store:
        half = lookups.size // 2
        for start in range(0, lookups.size, 4000):
            if start == half:
                before = store.stats()["t"]["tiers"]["host"]
            store.lookup("t", lookups[start : start + 4000])
        after = store.stats()["t"]["tiers"]["host"]
    hit_rate = (after["hits"] - before["hits"]) / (lookups.size - half)
    optimum = np.isin(lookups[half:], scramble[:budget_rows]).mean()
    assert hit_rate >= 0.95 * optimum, (hit_rate, optimum)


def test_updates_and_erases_persist_across_processes(persistent_store):
    path, keys, rows = persistent_store
    with EmbeddingStore(path, host_budget_bytes=100 * 88) as store:
        store.update("emb", np.array([keys[0], 7]), np.full((2, 16), 2.5))
        assert store.erase("emb", np.array([keys[1], keys[1], -5])) == 1
        assert store.tables[0].rows == 20_000  # one added, one erased
    code = (
        "import numpy as np, sys; from embedding_cache import EmbeddingStore\n"
        f"s = EmbeddingStore({str(path)!r})\n"
        f"np.save(sys.stdout.buffer, s.lookup('emb', np.array([{int(keys[0])}, 7, {int(keys[1])}, {int(keys[2])}])))"
    )
    result = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, timeout=120, check=True)
    got = np.load(io.BytesIO(result.stdout))
    np.testing.assert_array_equal(got[:2], np.full((2, 16), 2.5, np.float32))
    np.testing.assert_array_equal(got[2], np.zeros(16, np.float32))
    np.testing.assert_array_equal(got[3], rows[2])


def test_update_during_budgeted_lookups_is_seen_whole(persistent_store):
    path, keys, _ = persistent_store
    with EmbeddingStore(path, host_budget_bytes=1000 * 88) as store:
        hot = keys[:50]
        store.lookup("emb", np.repeat(hot, 20))  # make them resident
        store.update("emb", hot, np.full((50, 16), 9.0))
        assert (store.lookup("emb", hot) == 9.0).all()


def test_budget_needs_a_persistent_store(tmp_path):
    path = build_store(tmp_path / "s", {"t": (np.arange(3), np.zeros((3, 2)))})
    with pytest.raises(ValueError, match="host_budget_bytes needs a store with a persistent tier"):
        EmbeddingStore(path, host_budget_bytes=1000)


def test_missing_rocksdb_directory_is_named(persistent_store):
    path, _, _ = persistent_store
    shutil.rmtree(path / "rocksdb")
    with pytest.raises(StoreFormatError, match=r"rocksdb: missing"):
        EmbeddingStore(path)


def test_a_build_without_rocksdb_refuses_such_stores(persistent_store, monkeypatch):
    from embedding_cache import _core as core_module

    monkeypatch.setattr(core_module, "has_rocksdb", False)
    with pytest.raises(StoreFormatError, match=r"store.json: this store keeps its rows in RocksDB, but this build of embedding_cache has no RocksDB tier"):
        EmbeddingStore(persistent_store[0])
    with pytest.raises(RuntimeError, match="no RocksDB tier"):
        build_store(persistent_store[0].parent / "other", {"t": (np.arange(3), np.zeros((3, 2)))}, persistent=True)


def test_a_persistent_build_that_fails_on_a_full_disk_leaves_no_store(tmp_path):
    code = (
        "import resource, signal, numpy as np\n"
        "from embedding_cache import build_store\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "try:\n"
        f"    build_store({str(tmp_path / 'store')!r}, {{'t': (np.arange(200000), np.ones((200000, 16)))}}, persistent=True)\n"
        "except OSError as e:\n"
        "    print('OSError', e)\n"
    )
    result = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.startswith("OSError"), (result.stdout, result.stderr)
    assert not list(tmp_path.iterdir())


def test_lookup_columns_reads_through_under_a_budget(tmp_path):
    rng = np.random.default_rng(9)
    tables = {name: (np.arange(3_000, dtype=np.int64), rng.normal(size=(3_000, 8))) for name in ("a", "b", "c")}
    path = build_store(tmp_path / "s", tables, persistent=True, missing={"a": "zeros", "b": "error", "c": [1.0] * 8})
    ids = rng.integers(0, 3_000, size=(5_000, 3))
    ids[7, 0] = ids[9, 2] = 10**9  # absent from a (zeros) and c (vector)
    with EmbeddingStore(path, host_budget_bytes=60_000) as store:
        found = np.empty(ids.shape, dtype=np.uint8)
        out = store.lookup_columns(["a", "b", "c"], ids, found=found)
        counters = store.counters()
    for j, name in enumerate("abc"):
        expected = tables[name][1][np.minimum(ids[:, j], 2_999)].astype(np.float32)
        if name == "a":
            expected[7] = 0
        if name == "c":
            expected[9] = 1
        np.testing.assert_array_equal(out[:, j], expected)
    assert found.sum() == ids.size - 2 and found[7, 0] == 0 and found[9, 2] == 0
    assert counters["a"]["rocksdb"][0] > 0  # the budget holds a fraction: the rest came from RocksDB
    assert counters["a"]["host"][0] == 5_000
    with EmbeddingStore(path) as store, pytest.raises(KeyError, match=r"1 key\(s\) not in table 'b': \[1000000000\]"):
        bad = ids.copy()
        bad[3, 1] = 10**9
        store.lookup_columns(["a", "b", "c"], bad)


# ------------------------------------------------------------------------ primary and secondaries
_OTHER_PROCESS_UPDATE = (
    "import numpy as np, sys, time; from embedding_cache import EmbeddingStore\n"
    "s = EmbeddingStore(sys.argv[1])\n"
    "s.update('emb', np.array([int(k) for k in sys.argv[2:]]), np.full((len(sys.argv) - 2, 16), 4.5))\n"
    "print('written', flush=True)\n"
    "sys.stdin.read()\n"  # holds the primary open (and its LOCK) until the test closes stdin
)


def test_one_primary_and_any_number_of_secondaries_share_a_store(persistent_store):
    path, keys, rows = persistent_store
    with EmbeddingStore(path) as primary:
        with pytest.raises(StoreFormatError, match=r"lock.*another process has it open as the primary: open this one with role='secondary'"):
            EmbeddingStore(path)
        secondaries = [EmbeddingStore(path, role="secondary"), EmbeddingStore(path, role="secondary", host_budget_bytes=50 * 88)]
        for s in secondaries:
            assert s.role == "secondary" and s.verified_bytes > 0
            np.testing.assert_array_equal(s.lookup("emb", keys[:300]), rows[:300])
            with pytest.raises(PermissionError, match="read-only secondary: only the primary writes"):
                s.update("emb", keys[:1], np.zeros((1, 16)))
            with pytest.raises(PermissionError, match="read-only secondary"):
                s.erase("emb", keys[:1])
        with pytest.raises(PermissionError, match="catch_up is for a store opened with role='secondary'"):
            primary.catch_up()
        log_dirs = [s._tier.secondary_dir for s in secondaries]
        assert all(d.is_dir() for d in log_dirs)
        for s in secondaries:
            s.close()
        assert not any(d.exists() for d in log_dirs)  # their info-log directories are removed


@pytest.mark.parametrize("budget", [None, 50 * 88])
def test_a_secondary_catches_up_with_the_primary_of_another_process(persistent_store, budget):
    """The primary (another process) overwrites rows and adds one; after catch_up every row the
    secondary returns is the primary's, those its host tier held before included."""
    path, keys, rows = persistent_store
    secondary = EmbeddingStore(path, role="secondary", host_budget_bytes=budget)
    changed = [int(keys[0]), int(keys[1]), 123_456_789]
    secondary.lookup("emb", np.repeat(keys[:2], 50))  # resident in the host tier
    writer = subprocess.Popen([sys.executable, "-P", "-c", _OTHER_PROCESS_UPDATE, str(path), *map(str, changed)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "written"
        before = secondary.lookup("emb", np.array(changed))
        np.testing.assert_array_equal(before, np.stack([rows[0], rows[1], np.zeros(16, np.float32)]))
        counted = secondary.counters()["emb"]
        assert secondary.catch_up() is True
        assert secondary.counters()["emb"] == counted  # cumulative across the rebuilt tiers
        np.testing.assert_array_equal(secondary.lookup("emb", np.array(changed)), np.full((3, 16), 4.5, np.float32))
        np.testing.assert_array_equal(secondary.lookup("emb", keys[2:500]), rows[2:500])
        assert secondary.catch_up() is False  # nothing new
    finally:
        writer.communicate("", timeout=60)
        secondary.close()
