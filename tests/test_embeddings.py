"""EmbeddingLookupModel: ids [batch, n_tables] -> embeddings [batch, n_tables, dim] (no Triton)."""

from __future__ import annotations

import numpy as np
import pytest

from embedding_cache import EmbeddingStore, build_store
from tritonrec.serving.fingerprint import FingerprintMismatchError
from tritonrec.serving.lookup_model import EmbeddingLookupModel
from tritonrec.serving.requests import RequestError


@pytest.fixture
def lookup(criteo_trained):
    pipeline = criteo_trained["pipeline"]
    model = EmbeddingLookupModel.open(
        pipeline.store_dir, pipeline.plan.packed_outputs["int64"], max_batch_size=100, fingerprint=pipeline.plan.fingerprint
    )
    yield model
    model.close()


def test_lookup_returns_the_model_rows(criteo_trained, lookup):
    ids = criteo_trained["ids"][:50]
    got = lookup.execute([{"ids": ids}])[0]["embeddings"]
    weights = criteo_trained["pipeline"].model.table_weights()
    expected = np.stack([weights[j][ids[:, j]] for j in range(26)], axis=1)
    assert got.shape == (50, 26, 16) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)


def test_requests_are_looked_up_together_and_split_back(criteo_trained, lookup):
    ids = criteo_trained["ids"][:30]
    results = lookup.execute([{"ids": ids[:10]}, {"ids": ids[10:11]}, {"ids": ids[11:]}])
    np.testing.assert_array_equal(np.concatenate([r["embeddings"] for r in results]), lookup.execute([{"ids": ids}])[0]["embeddings"])


def test_bad_requests_name_the_input_and_spare_the_others(criteo_trained, lookup):
    ids = criteo_trained["ids"][:5]
    results = lookup.execute([
        {"ids": ids.astype(np.int32)},
        {"ids": ids[:, :25]},
        {"ids": ids, "extra": ids},
        {"ids": np.zeros((101, 26), np.int64)},
        {"ids": ids},
    ])
    assert "input 'ids' has dtype INT32: expected INT64" in str(results[0])
    assert "input 'ids' has shape [5, 25]: expected [batch, 26]" in str(results[1])
    assert "this model takes exactly ['ids']" in str(results[2])
    assert "101 rows: the maximum batch size is 100" in str(results[3])
    assert all(isinstance(r, RequestError) for r in results[:4])
    assert results[4]["embeddings"].shape == (5, 26, 16)


def test_counters_count_keys_per_table_and_tier(criteo_trained, lookup):
    lookup.take_counter_deltas()
    lookup.execute([{"ids": criteo_trained["ids"][:7]}, {"ids": criteo_trained["ids"][7:10]}])
    deltas = lookup.take_counter_deltas()
    assert set(deltas) == {(t, "host") for t in lookup.tables}
    assert all(v == (10, 0) for v in deltas.values())
    assert all(v == (0, 0) for v in lookup.take_counter_deltas().values())


def _store_without(pipeline, tmp_path, drop: int, policy: str):
    """The pipeline's store with code ``drop`` removed from table C1, under ``policy``."""
    with EmbeddingStore(pipeline.store_dir) as store:
        tables = {}
        for info in store.tables:
            keys = np.arange(info.rows, dtype=np.int64)
            if info.name == "C1":
                keys = keys[keys != drop]
            tables[info.name] = (keys, store.lookup(info.name, keys))
        metadata = store.metadata
    return build_store(tmp_path / f"store_{policy}", tables, missing={"C1": policy, **{n: "zeros" for n in tables if n != "C1"}}, metadata=metadata)


def test_missing_ids_follow_the_policy(criteo_trained, tmp_path):
    pipeline = criteo_trained["pipeline"]
    tables = pipeline.plan.packed_outputs["int64"]
    ids = np.full((4, 26), 3, dtype=np.int64)
    ids[1, 0] = 2  # absent from C1
    path = _store_without(pipeline, tmp_path, 2, "error")
    with EmbeddingLookupModel.open(path, tables) as model:
        results = model.execute([{"ids": ids[:1]}, {"ids": ids[1:3]}, {"ids": ids[3:]}])
        assert isinstance(results[1], RequestError)
        assert "1 key(s) not in table 'C1': [2]" in str(results[1])
        assert results[0]["embeddings"].shape == (1, 26, 16) and results[2]["embeddings"].shape == (1, 26, 16)
        assert model.take_counter_deltas()[("C1", "host")] == (4, 1)
    with EmbeddingLookupModel.open(path, tables, missing="zeros") as model:
        out = model.execute([{"ids": ids}])[0]["embeddings"]
        assert not out[1, 0].any() and out[0, 0].any()


def test_store_of_another_plan_is_refused(criteo_trained):
    pipeline = criteo_trained["pipeline"]
    with pytest.raises(FingerprintMismatchError, match=f"fingerprint '{pipeline.plan.fingerprint}'.*'feedbeef'"):
        EmbeddingLookupModel.open(pipeline.store_dir, ["C1"], fingerprint="feedbeef")


@pytest.mark.parametrize(
    ("tables", "kwargs", "message"),
    [
        (["C1", "nope"], {}, r"tables \['nope'\] are not in the store"),
        ([], {}, "at least one table"),
        (["C1"], {"missing": "ignore"}, "missing-key policy 'ignore'"),
    ],
)
def test_bad_arguments(criteo_trained, tables, kwargs, message):
    with pytest.raises(ValueError, match=message):
        EmbeddingLookupModel.open(criteo_trained["pipeline"].store_dir, tables, **kwargs)


def test_tables_of_different_dims_are_refused(tmp_path):
    path = build_store(tmp_path / "s", {"a": (np.arange(3), np.zeros((3, 4))), "b": (np.arange(3), np.zeros((3, 8)))})
    with pytest.raises(ValueError, match=r"different dims \[4, 8\]"):
        EmbeddingLookupModel.open(path, ["a", "b"])


# ------------------------------------------------------------------------------- multi-hot tables
def _multi_hot_store(tmp_path, missing="zeros"):
    rng = np.random.default_rng(0)
    rows = {name: rng.normal(size=(50, 4)).astype(np.float32) for name in ("user", "tags", "genres")}
    path = build_store(tmp_path / "mh", {name: (np.arange(50), r) for name, r in rows.items()}, missing=missing)
    return path, rows


def _lists(rng, n, high=50, max_len=5):
    lengths = rng.integers(0, max_len + 1, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return rng.integers(0, high, int(offsets[-1])), offsets


@pytest.mark.parametrize("list_layout,max_batch_size", [("padded", 64), ("offsets", 0)])
def test_multi_hot_tables_are_summed_or_averaged(tmp_path, list_layout, max_batch_size):
    from tritonrec.transform.plan import ListColumn
    from tritonrec.serving.lists import list_to_padded

    path, rows = _multi_hot_store(tmp_path)
    with EmbeddingLookupModel.open(path, ["user", "tags", "genres"], max_batch_size=max_batch_size,
                                   multi_hot={"tags": "sum", "genres": "mean"}, list_layout=list_layout) as model:
        second = "lengths" if list_layout == "padded" else "offsets"
        assert [s.name for s in model.inputs] == ["ids", "tags__values", f"tags__{second}", "genres__values", f"genres__{second}"]
        rng = np.random.default_rng(1)
        requests, expected = [], []
        for n in (3, 0, 20):
            user = rng.integers(0, 50, (n, 1))
            request, want = {"ids": user}, np.zeros((n, 3, 4), dtype=np.float64)
            want[:, 0] = rows["user"][user[:, 0]]
            for table, j in (("tags", 1), ("genres", 2)):
                values, offsets = _lists(rng, n)
                if list_layout == "padded":
                    request[f"{table}__values"], request[f"{table}__lengths"] = list_to_padded(ListColumn(values, offsets))
                else:
                    request[f"{table}__values"], request[f"{table}__offsets"] = values, offsets.astype(np.int32)
                for r in range(n):
                    picked = rows[table][values[offsets[r] : offsets[r + 1]]].astype(np.float64)
                    if picked.shape[0]:
                        want[r, j] = picked.sum(axis=0) if table == "tags" else picked.mean(axis=0)
            requests.append(request)
            expected.append(want)
        results = model.execute(requests)
        for result, want in zip(results, expected):
            assert result["embeddings"].dtype == np.float32 and result["embeddings"].shape == want.shape
            np.testing.assert_allclose(result["embeddings"], want, rtol=1e-5, atol=1e-6)


def test_bad_multi_hot_inputs_are_refused_by_name(tmp_path):
    path, _ = _multi_hot_store(tmp_path)
    with pytest.raises(ValueError, match="multi_hot combiner 'max' of table 'tags'"):
        EmbeddingLookupModel.open(path, ["tags"], multi_hot={"tags": "max"})
    with pytest.raises(ValueError, match="multi_hot table 'nope' is not one of the model's tables"):
        EmbeddingLookupModel.open(path, ["tags"], multi_hot={"nope": "sum"})
    with EmbeddingLookupModel.open(path, ["user", "tags"], max_batch_size=8, multi_hot={"tags": "mean"}) as model:
        good = {"ids": np.array([[1], [2]]), "tags__values": np.array([[1, 2], [3, 0]]), "tags__lengths": np.array([[2], [1]], dtype=np.int32)}
        bad = [
            ({"tags__lengths": np.array([[3], [1]], dtype=np.int32)}, "row 0 has length 3: expected 0 .. 2"),
            ({"tags__lengths": np.array([[2], [1]], dtype=np.int64)}, "'tags__lengths' has dtype INT64: expected INT32"),
            ({"tags__values": np.array([[1.0, 2.0], [3.0, 0.0]])}, "'tags__values' has dtype FP64: expected INT64"),
            ({"ids": np.array([[1]])}, "multi-hot table 'tags' has 2 rows, other inputs have 1"),
        ]
        for change, message in bad:
            results = model.execute([{**good, **change}, good])
            assert isinstance(results[0], RequestError) and message in str(results[0]), (message, results[0])
            assert results[1]["embeddings"].shape == (2, 2, 4)
        results = model.execute([{"ids": good["ids"]}, good])
        assert "this model takes exactly ['ids', 'tags__lengths', 'tags__values']" in str(results[0])


def test_strict_multi_hot_table_fails_only_the_request_holding_the_id(tmp_path):
    path, rows = _multi_hot_store(tmp_path, missing="error")
    with EmbeddingLookupModel.open(path, ["tags"], multi_hot={"tags": "sum"}, list_layout="offsets") as model:
        ok = {"tags__values": np.array([1, 2, 3]), "tags__offsets": np.array([0, 2, 3], dtype=np.int32)}
        holding = {"tags__values": np.array([4, 99]), "tags__offsets": np.array([0, 0, 2], dtype=np.int32)}
        results = model.execute([ok, holding, ok])
        assert isinstance(results[1], RequestError) and "1 key(s) not in table 'tags': [99]" in str(results[1])
        np.testing.assert_allclose(results[0]["embeddings"][0, 0], rows["tags"][1] + rows["tags"][2], rtol=1e-6)
        np.testing.assert_allclose(results[2]["embeddings"][1, 0], rows["tags"][3], rtol=1e-6)
