"""EmbeddingStore and build_store against a pure-numpy reference; format, bad input, concurrency."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedding_cache import EmbeddingStore, StoreFormatError, build_store, build_store_from_parquet
from embedding_cache import _core


def _reference(keys, rows, dtype):
    stored = rows.astype(dtype).astype(np.float32)
    return {int(k): stored[i] for i, k in enumerate(keys)}


def _expected(ref, queries, dim, default):
    return np.stack([ref.get(int(q), default) for q in queries]) if len(queries) else np.zeros((0, dim), np.float32)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 3000),
    dim=st.integers(1, 24),
    dtype=st.sampled_from(["float32", "float16"]),
    seed=st.integers(0, 2**32 - 1),
    missing_fraction=st.floats(0, 1),
)
def test_lookup_matches_numpy_reference(tmp_path_factory, n, dim, dtype, seed, missing_fraction):
    rng = np.random.default_rng(seed)
    keys = rng.choice(np.arange(-(2**40), 2**40, 7919), size=n, replace=False) if n else np.zeros(0, np.int64)
    rows = rng.normal(0, 3, size=(n, dim))
    path = build_store(tmp_path_factory.mktemp("s") / "store", {"t": (keys, rows)}, dtype=dtype)
    ref = _reference(keys, rows, dtype)
    queries = np.where(rng.random(500) < missing_fraction, rng.integers(-(2**62), 2**62, size=500), rng.choice(keys, size=500) if n else 1)
    with EmbeddingStore(path, threads=2) as store:
        got = store.lookup("t", queries.astype(np.int64))
        np.testing.assert_array_equal(got, _expected(ref, queries, dim, np.zeros(dim, np.float32)))
        stats = store.stats()["t"]
        hits = sum(int(q) in ref for q in queries)
        assert stats["lookups"] == 500 and stats["tiers"]["host"]["hits"] == hits and stats["tiers"]["host"]["misses"] == 500 - hits


def test_fp16_storage_rounds_exactly_like_numpy():
    specials = np.array([0.0, -0.0, 1.0, 65504.0, 65519.99, 65520.0, 1e9, -1e9, np.inf, -np.inf, 5.96e-8, 2.98e-8, 2.99e-8, 6.1e-5, 1e-10, 0.1, 1 / 3], dtype=np.float32)
    rng = np.random.default_rng(0)
    values = np.concatenate([specials, rng.normal(0, 1, 20000).astype(np.float32), (rng.normal(0, 1, 20000) * 1e-5).astype(np.float32), rng.normal(0, 3e4, 20000).astype(np.float32)])
    table = _core.HostTable(1, _core.RowDtype.float16)
    keys = np.arange(values.size, dtype=np.int64)
    table.insert_or_assign(keys, values.reshape(-1, 1))
    out = np.empty((values.size, 1), np.float32)
    found = np.empty(values.size, np.uint8)
    table.find(keys, out, found, _core.ThreadPool(2))
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(out[:, 0].view(np.uint32), expected.view(np.uint32))
    nan = np.array([[np.nan]], np.float32)
    table.insert_or_assign(np.array([-1], np.int64), nan)
    table.find(np.array([-1], np.int64), out[:1], found[:1], _core.ThreadPool(1))
    assert np.isnan(out[0, 0])


@pytest.fixture
def store_path(tmp_path):
    rng = np.random.default_rng(1)
    tables = {
        "users": (np.arange(100, dtype=np.int64) * 3, rng.normal(size=(100, 8))),
        "items": (np.arange(50, dtype=np.int64), rng.normal(size=(50, 4))),
        "strict": (np.arange(20, dtype=np.int64), rng.normal(size=(20, 2))),
    }
    return build_store(tmp_path / "store", tables, missing={"items": [1.0, 2.0, 3.0, 4.0], "strict": "error"}, metadata={"plan_fingerprint": "abc"})


def test_missing_key_policies(store_path):
    with EmbeddingStore(store_path) as store:
        np.testing.assert_array_equal(store.lookup("users", np.array([1, 2])), np.zeros((2, 8), np.float32))
        np.testing.assert_array_equal(store.lookup("items", np.array([1000]))[0], [1, 2, 3, 4])
        with pytest.raises(KeyError, match=r"12 key\(s\) not in table 'strict': \[100, 101, 102, 103, 104, 105, 106, 107, 108, 109\] \.\.\."):
            store.lookup("strict", np.arange(100, 112))
        assert store.metadata == {"plan_fingerprint": "abc"}
        assert [(t.name, t.rows, t.dim, t.dtype, t.missing) for t in store.tables] == [
            ("users", 100, 8, "float32", "zeros"), ("items", 50, 4, "float32", "vector"), ("strict", 20, 2, "float32", "error")
        ]


def test_update_and_erase_follow_the_reference(store_path):
    with EmbeddingStore(store_path) as store:
        before = store.lookup("users", np.array([0, 3]))
        new = np.full((2, 8), 7.5)
        store.update("users", np.array([3, 1_000_000]), new)
        got = store.lookup("users", np.array([0, 3, 1_000_000]))
        np.testing.assert_array_equal(got[0], before[0])
        np.testing.assert_array_equal(got[1:], new.astype(np.float32))
        assert store.erase("users", np.array([0, 0, 5, 1_000_000])) == 2
        np.testing.assert_array_equal(store.lookup("users", np.array([0, 1_000_000])), np.zeros((2, 8), np.float32))
        assert store.tables[0].rows == 99


def test_out_parameter(store_path):
    with EmbeddingStore(store_path) as store:
        out = np.full((3, 8), np.nan, np.float32)
        result = store.lookup("users", np.array([0, 3, 4]), out=out)
        assert result is out and not np.isnan(out).any()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda s: s.lookup("users", np.array([1.0, 2.0])), TypeError, "expected integer keys"),
        (lambda s: s.lookup("users", [1, 2]), TypeError, "expected a numpy array"),
        (lambda s: s.lookup("users", np.zeros((2, 2), np.int64)), ValueError, r"expected a 1-D array of keys, got shape \(2, 2\)"),
        (lambda s: s.lookup("users", np.array([1]), out=np.empty((1, 7), np.float32)), ValueError, r"out: expected shape \(1, 8\)"),
        (lambda s: s.lookup("users", np.array([1]), out=np.empty((1, 8), np.float64)), TypeError, "out: expected a float32"),
        (lambda s: s.lookup("users", np.array([1, 2]), out=np.empty((8, 2), np.float32).T), ValueError, "C-contiguous"),
        (lambda s: s.lookup("nope", np.array([1])), KeyError, r"no table 'nope'.*tables are \['items', 'strict', 'users'\]"),
        (lambda s: s.update("users", np.array([1]), np.zeros((1, 3))), ValueError, r"rows: expected rows of shape \(1, 8\)"),
        (lambda s: s.update("users", np.array([1]), np.zeros((1, 8), np.int64)), TypeError, "floating-point rows"),
        (lambda s: s.erase("users", np.array(["a"])), TypeError, "expected integer keys"),
    ],
)
def test_bad_input_is_named_and_the_store_stays_valid(store_path, call, error, message):
    with EmbeddingStore(store_path) as store:
        reference = store.lookup("users", np.array([0, 3]))
        with pytest.raises(error, match=message):
            call(store)
        np.testing.assert_array_equal(store.lookup("users", np.array([0, 3])), reference)


def test_zero_keys_and_closed_store(store_path):
    store = EmbeddingStore(store_path)
    assert store.lookup("users", np.zeros(0, np.int64)).shape == (0, 8)
    store.close()
    store.close()
    with pytest.raises(ValueError, match="is closed"):
        store.lookup("users", np.array([1]))
    with pytest.raises(ValueError, match="is closed"):
        store.stats()


def test_reopen_in_another_process(store_path):
    with EmbeddingStore(store_path) as store:
        expected = store.lookup("users", np.arange(0, 300, 3))
    code = (
        "import numpy as np, sys; from embedding_cache import EmbeddingStore\n"
        f"s = EmbeddingStore({str(store_path)!r}); np.save(sys.stdout.buffer, s.lookup('users', np.arange(0, 300, 3)))"
    )
    result = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, timeout=120, check=True)
    import io

    np.testing.assert_array_equal(np.load(io.BytesIO(result.stdout)), expected)


def test_lookups_during_updates_never_see_a_torn_row(tmp_path):
    dim, n = 64, 2000
    keys = np.arange(n, dtype=np.int64)
    path = build_store(tmp_path / "s", {"t": (keys, np.zeros((n, dim)))})
    stop = threading.Event()
    errors = []
    with EmbeddingStore(path, threads=2) as store:
        def reader():
            while not stop.is_set():
                rows = store.lookup("t", keys)
                first = rows[:, :1]
                if not (rows == first).all():  # every row is one version written whole
                    errors.append("torn row")
                    return
        def writer():
            for version in range(1, 200):
                store.update("t", keys, np.full((n, dim), float(version)))
            stop.set()
        threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors
        assert (store.lookup("t", keys) == 199.0).all()


# --------------------------------------------------------------------------------------- format
def test_build_refuses_bad_tables(tmp_path):
    with pytest.raises(ValueError, match=r"duplicate keys \[1\]"):
        build_store(tmp_path / "a", {"t": (np.array([1, 1]), np.zeros((2, 2)))})
    with pytest.raises(ValueError, match=r"expected rows of shape \(3, 2\)"):
        build_store(tmp_path / "a", {"t": (np.array([1, 2, 3]), np.zeros((2, 2)))})
    with pytest.raises(ValueError, match="dtype 'int8'"):
        build_store(tmp_path / "a", {"t": (np.array([1]), np.zeros((1, 2)))}, dtype="int8")
    with pytest.raises(ValueError, match=r"default vector has shape \(3,\)"):
        build_store(tmp_path / "a", {"t": (np.array([1]), np.zeros((1, 2)))}, missing=[1, 2, 3])
    assert not (tmp_path / "a").exists()
    build_store(tmp_path / "a", {"t": (np.array([1]), np.zeros((1, 2)))})
    with pytest.raises(FileExistsError):
        build_store(tmp_path / "a", {"t": (np.array([1]), np.zeros((1, 2)))})


def test_other_format_version_is_refused(store_path):
    manifest = json.loads((store_path / "store.json").read_text())
    manifest["format_version"] = 1
    (store_path / "store.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreFormatError, match=r"store.json: store format version 1; this embedding_cache reads version 2 .*rebuild"):
        EmbeddingStore(store_path)


def test_truncated_file_is_named(store_path):
    rows = store_path / "tables" / "0.rows.npy"
    rows.write_bytes(rows.read_bytes()[:-10])
    with pytest.raises(StoreFormatError, match=r"0.rows.npy: \d+ bytes, \S*store.json says \d+: truncated"):
        EmbeddingStore(store_path)


def test_damaged_file_is_named_when_verifying(store_path):
    keys = store_path / "tables" / "1.keys.npy"
    data = bytearray(keys.read_bytes())
    data[-1] ^= 0xFF
    keys.write_bytes(bytes(data))
    EmbeddingStore(store_path, verify=False).close()  # same size: only the checksum can tell
    with pytest.raises(StoreFormatError, match=r"1.keys.npy: damaged: sha256 [0-9a-f]{64}, \S*store.json says [0-9a-f]{64}"):
        EmbeddingStore(store_path)


def test_missing_file_and_missing_store(store_path, tmp_path):
    (store_path / "tables" / "2.keys.npy").unlink()
    with pytest.raises(StoreFormatError, match=r"2.keys.npy: missing"):
        EmbeddingStore(store_path)
    with pytest.raises(StoreFormatError, match="is not an embedding store"):
        EmbeddingStore(tmp_path / "nowhere")


def test_a_build_that_fails_on_a_full_disk_leaves_no_store(tmp_path):
    """The build runs with a 64 KiB file-size limit, so writing the rows fails like a full disk."""
    code = (
        "import resource, signal, numpy as np\n"
        "from embedding_cache import build_store\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
        "try:\n"
        f"    build_store({str(tmp_path / 'store')!r}, {{'t': (np.arange(10000), np.ones((10000, 16)))}})\n"
        "except OSError as e:\n"
        "    print('OSError', e.errno)\n"
    )
    result = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith("OSError"), result.stderr
    assert not (tmp_path / "store").exists()
    assert not list(tmp_path.iterdir())  # the staging directory is gone too
    with pytest.raises(StoreFormatError):
        EmbeddingStore(tmp_path / "store")


def test_build_from_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    keys = np.arange(30, dtype=np.int64) * 11
    vectors = rng.normal(size=(30, 5)).astype(np.float32)
    pq.write_table(pa.table({"id": keys, "emb": list(vectors)}), tmp_path / "t.parquet")
    path = build_store_from_parquet(tmp_path / "s", {"t": tmp_path / "t.parquet"}, key_column="id", vector_column="emb")
    with EmbeddingStore(path) as store:
        np.testing.assert_array_equal(store.lookup("t", keys), vectors)
    with pytest.raises(ValueError, match="no column 'key'"):
        build_store_from_parquet(tmp_path / "s2", {"t": tmp_path / "t.parquet"})


def test_cli_build_info_lookup(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pathlib import Path

    cli = str(Path(sys.executable).parent / "embedding-cache")
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    pq.write_table(pa.table({"key": np.array([5, 6, 7, 8]), "vector": list(vectors)}), tmp_path / "t.parquet")
    store = tmp_path / "store"
    built = subprocess.run([cli, "build", str(store), "--table", f"emb={tmp_path / 't.parquet'}", "--dtype", "float16", "--missing", "error"], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    info = subprocess.run([cli, "info", str(store)], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "emb" in info.stdout and "float16" in info.stdout and "error" in info.stdout
    assert re.search(r"checksums: [\d,]+ bytes verified", info.stdout)
    rows = store / "tables" / "0.rows.npy"
    rows.write_bytes(rows.read_bytes()[:-2] + b"\0\0")
    damaged = subprocess.run([cli, "info", str(store)], capture_output=True, text=True, timeout=120)
    assert damaged.returncode == 1 and "0.rows.npy: damaged: sha256" in damaged.stderr
    assert subprocess.run([cli, "info", str(store), "--no-verify"], capture_output=True, text=True, timeout=120).returncode == 0
    built = subprocess.run([cli, "build", str(store), "--overwrite", "--table", f"emb={tmp_path / 't.parquet'}", "--dtype", "float16",
                            "--missing", "error"], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    looked = subprocess.run([cli, "lookup", str(store), "emb", "6", "8"], capture_output=True, text=True, timeout=120)
    assert looked.stdout.splitlines() == ["6: 3 4 5", "8: 9 10 11"]
    missing = subprocess.run([cli, "lookup", str(store), "emb", "99"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "1 key(s) not in table 'emb': [99]" in missing.stderr
    bad = subprocess.run([cli, "info", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "not an embedding store" in bad.stderr


def test_cli_marks_absent_keys_and_stops_quietly_when_the_reader_does(tmp_path):
    from pathlib import Path

    cli = str(Path(sys.executable).parent / "embedding-cache")
    store = build_store(tmp_path / "s", {"emb": (np.arange(5), np.ones((5, 2)))})
    looked = subprocess.run([cli, "lookup", str(store), "emb", "4", "99"], capture_output=True, text=True, timeout=120)
    assert looked.returncode == 0, looked.stderr
    assert looked.stdout.splitlines() == ["4: 1 1", "99: 0 0  (absent: the table's missing-key policy, zeros)"]
    # `... | head -1`: the reader closes the pipe after one line of 30,000
    process = subprocess.Popen([cli, "lookup", str(store), "emb", *map(str, range(30_000))], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    first = process.stdout.readline()
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert first == b"0: 1 1\n"
    assert process.returncode == 0 and err == b"", err.decode()
    import os

    helped = subprocess.run([cli, "build", "--help"], capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert "(default: key)" in helped.stdout and "(default: zeros)" in helped.stdout


def test_fp16_tables_round_once_from_float64(tmp_path):
    # 1 + 2**-11 + 2**-40 in float64 rounds up to 1 + 2**-10 in fp16; through float32 it would
    # first become the tie 1 + 2**-11 and then round to even, 1.0.
    value = np.array([[1 + 2**-11 + 2**-40]])
    path = build_store(tmp_path / "s", {"t": (np.array([1]), value)}, dtype="float16")
    with EmbeddingStore(path) as store:
        assert store.lookup("t", np.array([1]))[0, 0] == np.float32(1 + 2**-10)
        store.update("t", np.array([2]), value)
        assert store.lookup("t", np.array([2]))[0, 0] == np.float32(1 + 2**-10)


def test_build_from_a_torch_module_and_state_dict(tmp_path):
    import torch

    from embedding_cache import build_store_from_state_dict

    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"users": torch.nn.Embedding(40, 6), "products": torch.nn.Embedding(25, 3), "dense": torch.nn.Linear(4, 2)})
    path = build_store_from_state_dict(tmp_path / "m", model)
    with EmbeddingStore(path) as store:
        assert sorted(t.name for t in store.tables) == ["products", "users"]
        np.testing.assert_array_equal(store.lookup("users", np.array([0, 39])), model["users"].weight.detach().numpy()[[0, 39]])
    path = build_store_from_state_dict(tmp_path / "s", model.state_dict(), {"emb": "products.weight"}, dtype="float16")
    with EmbeddingStore(path) as store:
        np.testing.assert_array_equal(store.lookup("emb", np.arange(25)), model["products"].weight.detach().numpy().astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match="tables: name the state_dict key"):
        build_store_from_state_dict(tmp_path / "x", model.state_dict())
    with pytest.raises(ValueError, match=r"'dense.bias' has shape \(2,\)"):
        build_store_from_state_dict(tmp_path / "x", model.state_dict(), {"d": "dense.bias"})
    with pytest.raises(KeyError, match="no 'nope.weight'"):
        build_store_from_state_dict(tmp_path / "x", model.state_dict(), {"d": "nope.weight"})


def test_lookups_release_the_gil(tmp_path):
    """While lookups run in one thread, Python code runs in another at close to full speed."""
    import time

    n, dim = 200_000, 64
    path = build_store(tmp_path / "s", {"t": (np.arange(n), np.zeros((n, dim)))})
    keys = np.random.default_rng(0).integers(0, n, 1_000_000)
    out = np.empty((keys.size, dim), np.float32)

    def spin(seconds):
        count, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            count += 1
        return count

    with EmbeddingStore(path, threads=1) as store:
        start = time.perf_counter()
        store.lookup("t", keys, out=out)
        per_call = time.perf_counter() - start
        alone = spin(0.3)
        started, stop = threading.Event(), threading.Event()

        def look():
            store.lookup("t", keys, out=out)
            started.set()
            while not stop.is_set():
                store.lookup("t", keys, out=out)

        worker = threading.Thread(target=look)
        worker.start()
        started.wait()
        beside = spin(0.3)  # the worker is inside its lookup loop for the whole spin
        stop.set()
        worker.join()
    assert per_call > 0.02  # long enough that a held GIL would starve the spinner
    assert beside > 0.3 * alone, (beside, alone)


def test_lookup_columns_equals_one_lookup_per_table(tmp_path):
    rng = np.random.default_rng(2)
    tables = {name: (rng.permutation(50_000)[:4_000].astype(np.int64), rng.normal(size=(4_000, 16))) for name in ("x", "y")}
    path = build_store(tmp_path / "s", tables, missing={"x": "zeros", "y": [0.5] * 16})
    ids = np.stack([rng.choice(tables["x"][0], 10_000), rng.integers(0, 50_000, 10_000)], axis=1)
    with EmbeddingStore(path, threads=2) as store:
        out = store.lookup_columns(["x", "y"], ids)
        np.testing.assert_array_equal(out[:, 0], store.lookup("x", ids[:, 0]))
        np.testing.assert_array_equal(out[:, 1], store.lookup("y", ids[:, 1]))
        assert out.shape == (10_000, 2, 16) and out.flags.c_contiguous
        with pytest.raises(ValueError, match=r"keys: expected an int64 array of shape \(n, 2\)"):
            store.lookup_columns(["x", "y"], ids[:, :1])
        with pytest.raises(KeyError, match="no table 'z'"):
            store.lookup_columns(["x", "z"], ids)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("max_rows", [0, 5_000])
def test_host_table_find_at_every_batch_size_around_its_pipeline(dtype, max_rows):
    """HostTable.find and find_columns resolve keys a few ahead of the one they copy (prefetching):
    every size from 0 past two pipeline depths, the pool's chunk edges, absent keys anywhere."""
    rng = np.random.default_rng(7)
    dim = 5
    keys = rng.permutation(1 << 20)[:3_000].astype(np.int64) * 977
    rows = rng.normal(size=(keys.size, dim)).astype(np.float32)
    table = _core.HostTable(dim, getattr(_core.RowDtype, dtype), slab_rows=256, expected_rows=keys.size, max_rows=max_rows)
    table.insert_or_assign(keys, rows)
    reference = _reference(keys, rows, dtype)
    pool = _core.ThreadPool(2)
    for n in [*range(0, 41), 4095, 4096, 4097, 9_001]:
        queries = np.where(rng.random(n) < 0.3, rng.integers(0, 1 << 40, n) * 2 + 1, rng.choice(keys, n)).astype(np.int64)
        expected = _expected(reference, queries, dim, np.zeros(dim, np.float32))
        out = np.full((n, dim), np.nan, np.float32)
        found = np.full(n, 9, np.uint8)
        hits = table.find(queries, out, found, pool)
        np.testing.assert_array_equal(out, expected, err_msg=f"n={n}")
        np.testing.assert_array_equal(found, [int(q) in reference for q in queries], err_msg=f"n={n}")
        assert hits == int(found.sum())
        columns = np.stack([queries, queries[::-1]], axis=1)
        out2 = np.full((n, 2, dim), np.nan, np.float32)
        found2 = np.full((n, 2), 9, np.uint8)
        counts = _core.find_columns([table, table], columns, out2, found2, pool)
        np.testing.assert_array_equal(out2[:, 0], expected, err_msg=f"n={n}")
        np.testing.assert_array_equal(out2[:, 1], expected[::-1], err_msg=f"n={n}")
        assert counts.tolist() == [hits, hits]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("dim", [5, 8, 64])
@pytest.mark.parametrize("offset", [0, 4])
def test_host_table_find_streaming_writes_the_same_rows(dtype, dim, offset):
    """find(streaming=True) (non-temporal stores, for the GPU tier's pinned staging) gives the rows
    and flags plain find gives: rows of 16-byte words (dim 8, 64) or not (dim 5), into a target that
    is 16-byte aligned or 4 bytes off (the fallback), fp16 rows converted as before."""
    rng = np.random.default_rng(dim)
    keys = rng.permutation(1 << 20)[:3_000].astype(np.int64)
    rows = rng.normal(size=(keys.size, dim)).astype(np.float32)
    table = _core.HostTable(dim, getattr(_core.RowDtype, dtype), slab_rows=256, expected_rows=keys.size)
    table.insert_or_assign(keys, rows)
    pool = _core.ThreadPool(2)
    for n in [0, 1, 2, 17, 4_097]:
        queries = np.where(rng.random(n) < 0.2, -1 - rng.integers(0, 1 << 40, n), rng.choice(keys, n)).astype(np.int64)
        plain, plain_found = np.full((n, dim), np.nan, np.float32), np.zeros(n, np.uint8)
        table.find(queries, plain, plain_found, pool)
        buffer = np.full(n * dim * 4 + 64, 0xFF, np.uint8)
        start = (-buffer.ctypes.data) % 16 + offset
        out = buffer[start : start + n * dim * 4].view(np.float32).reshape(n, dim)
        found = np.full(n, 9, np.uint8)
        assert table.find(queries, out, found, pool, streaming=True) == int(plain_found.sum())
        np.testing.assert_array_equal(out, plain, err_msg=f"n={n}")
        np.testing.assert_array_equal(found, plain_found)


@pytest.mark.parametrize("spin_us", [0, 200])
def test_a_pool_serves_calls_back_to_back_whether_its_workers_sleep_or_spin(spin_us, monkeypatch):
    """ThreadPool: chunks taken by atomic adds, workers that spin between calls (spin_us) or sleep:
    300 finds of 0 .. 5,000 keys in a row over 4 threads, each equal to the table's rows."""
    rng = np.random.default_rng(spin_us)
    dim = 8
    keys = rng.permutation(1 << 20)[:4_000].astype(np.int64)
    rows = rng.normal(size=(keys.size, dim)).astype(np.float32)
    table = _core.HostTable(dim, _core.RowDtype.float32, slab_rows=1024, expected_rows=keys.size, max_rows=0)
    table.insert_or_assign(keys, rows)
    pool = _core.ThreadPool(4, spin_us)
    assert pool.threads == 4 and pool.spin_us == spin_us
    for n in rng.integers(0, 5_000, 300):
        pick = rng.integers(0, keys.size, n)
        out, found = np.full((n, dim), np.nan, np.float32), np.zeros(n, np.uint8)
        assert table.find(keys[pick], out, found, pool) == n and found.all()
        np.testing.assert_array_equal(out, rows[pick])
    monkeypatch.setenv("TRITONREC_POOL_SPIN_US", "75")
    assert _core.ThreadPool(2).spin_us == 75 and _core.ThreadPool(2, 0).spin_us == 0


def test_only_a_store_with_a_gpu_tier_keeps_its_host_workers_spinning(tmp_path, monkeypatch):
    """The host pool spins between calls only for a GPU tier's pieces (store.GPU_POOL_SPIN_US);
    TRITONREC_POOL_SPIN_US overrides either way."""
    from embedding_cache import store as store_module
    from embedding_cache.host import HostTier
    from embedding_cache.options import HostOptions

    monkeypatch.delenv("TRITONREC_POOL_SPIN_US", raising=False)
    assert HostTier(tmp_path, [], tmp_path / "manifest.json", HostOptions(threads=2), None).pool.spin_us == 0
    assert HostTier(tmp_path, [], tmp_path / "manifest.json", HostOptions(threads=2), None, spin_us=store_module.GPU_POOL_SPIN_US).pool.spin_us == 100
    monkeypatch.setenv("TRITONREC_POOL_SPIN_US", "7")
    assert HostTier(tmp_path, [], tmp_path / "manifest.json", HostOptions(threads=2), None, spin_us=100).pool.spin_us == 7


def _tables_read_setup(rng, dtypes=("float32", "float16"), dims=(5, 64)):
    """Tables of the given row dtypes and dims, their keys and their stored rows (as read back)."""
    tables, content = [], []
    for dtype, dim in zip(dtypes, dims):
        keys = rng.permutation(1 << 24)[:20_000].astype(np.int64) * 3
        rows = rng.normal(size=(keys.size, dim)).astype(np.float32)
        table = _core.HostTable(dim, getattr(_core.RowDtype, dtype), slab_rows=1024, expected_rows=keys.size)
        table.insert_or_assign(keys, rows)
        tables.append(table)
        content.append((keys, rows.astype(dtype).astype(np.float32)))
    return tables, content


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("streaming", [False, True])
def test_a_read_of_several_tables_begun_on_the_pool_gives_each_tables_rows(threads, streaming):
    """TablesRead (a GPU tier's chunk read, begun on the pool's workers while the caller queues the
    last chunk's copies): every part's rows, flags and count against a plain reference, part sizes
    0, 1, 2, small and large in every mix (parts that share a chunk of the pool, empty parts between,
    a table read by two parts), fp32 and fp16 tables of different dims, absent keys; the calling
    thread works while the read runs; the tables' stats count the lookups at finish."""
    rng = np.random.default_rng(threads + 2 * streaming)
    tables, content = _tables_read_setup(rng)
    pool = _core.ThreadPool(threads)
    for sizes in [(0, 0), (1, 0), (0, 1), (1, 1), (2, 3), (0, 17, 0), (300, 1, 5000), (40_000, 0, 2), (7, 100_000)]:
        parts = [i % 2 for i in range(len(sizes))]  # tables 0, 1, 0: table 0 read by two parts
        queries, outs, founds, expected = [], [], [], []
        for t, n in zip(parts, sizes):
            keys, stored = content[t]
            pick = rng.integers(0, keys.size, n)
            absent = rng.random(n) < 0.25
            queries.append(np.where(absent, keys[pick] + 1, keys[pick]).astype(np.int64))  # keys are multiples of 3
            outs.append(np.full((n, stored.shape[1]), np.nan, np.float32))
            founds.append(np.full(n, 9, np.uint8))
            expected.append((np.where(absent[:, None], 0, stored[pick]).astype(np.float32), (~absent).astype(np.uint8)))
        before = [table.stats()["lookups"] for table in tables]
        read = _core.TablesRead([tables[t] for t in parts], queries, outs, founds, pool, streaming)
        busy = sum(range(10_000))  # the calling thread is free while the workers read
        hits = read.finish()
        assert busy == 49_995_000 and read.finish() == hits  # a second finish returns the same
        for p, (rows, flags) in enumerate(expected):
            np.testing.assert_array_equal(outs[p], rows, err_msg=f"sizes={sizes}, part {p}")
            np.testing.assert_array_equal(founds[p], flags, err_msg=f"sizes={sizes}, part {p}")
            assert hits[p] == int(flags.sum())
        for t, table in enumerate(tables):
            assert table.stats()["lookups"] - before[t] == sum(n for n, pt in zip(sizes, parts) if pt == t)


def test_a_write_waits_for_a_read_of_several_tables_and_is_seen_whole_after_it():
    """The read's tables are held from its start to its finish: a write batch begun meanwhile on
    another thread waits (nothing torn: the read gives the old rows, every one of them), then lands
    whole; a read dropped unfinished (an error on the caller's side) joins its workers and lets the
    writer in; bad arrays are refused with the input named."""
    rng = np.random.default_rng(12)
    tables, content = _tables_read_setup(rng, ("float32",), (64,))
    (table,), ((keys, old),) = tables, content
    pool = _core.ThreadPool(4)
    new = rng.normal(size=old.shape).astype(np.float32)
    out, found = np.zeros_like(old), np.zeros(keys.size, np.uint8)
    read = _core.TablesRead([table], [keys], [out], [found], pool)
    writer = threading.Thread(target=table.insert_or_assign, args=(keys, new))
    writer.start()
    writer.join(0.2)
    assert writer.is_alive()  # held back by the read
    assert read.finish() == [keys.size]
    writer.join(10)
    assert not writer.is_alive()
    np.testing.assert_array_equal(out, old)
    again = np.zeros_like(old)
    _core.TablesRead([table], [keys], [again], [found], pool).finish()
    np.testing.assert_array_equal(again, new)
    dropped = _core.TablesRead([table], [keys], [again], [found], pool)
    del dropped
    table.insert_or_assign(keys[:1], old[:1])  # not held by the dropped read
    with pytest.raises(ValueError, match="keys, out, found"):
        _core.TablesRead([table], [keys], [], [found], pool)
    with pytest.raises(ValueError, match=r"out\[0\]: expected shape"):
        _core.TablesRead([table], [keys], [out[:, :5].copy()], [found], pool)
    with pytest.raises(ValueError, match=r"found\[0\]"):
        _core.TablesRead([table], [keys], [out], [found[:3]], pool)
    with pytest.raises(TypeError, match="keys"):
        _core.TablesRead([table], [keys.astype(np.int32)], [out], [found], pool)
    table.insert_or_assign(keys[:1], old[:1])  # no lock left behind by the refused reads
