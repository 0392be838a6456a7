"""Damaged artifacts of every kind are refused at load, naming the file and both checksums.

Each case is one a user met: flipped bytes inside a scorer's weights (served, max error 0.36),
in a store's rows (max error 0.995) or keys, a changed row count in store.json, flipped bytes
inside a RocksDB table file (loaded, then failed at request time only), and the same for the
transform plan. Through tritonserver each damaged model refuses to load, saying why.
"""

from __future__ import annotations

import json
import shutil
import urllib.request

import numpy as np
import pytest

from embedding_cache import EmbeddingStore, StoreFormatError, build_store
from tritonrec.integrity import SEAL, IntegrityError, check_seal, seal, verify_files, write_manifest
from tritonrec.scorer.artifact import ScorerFormatError, read_scorer_info
from tritonrec.serving.scorer_model import TorchScorerModel
from tritonrec.transform import PlanLoadError, TransformPlan

HEX = "[0-9a-f]{64}"


def flip(path, fraction=0.6, count=16):
    """Inverts ``count`` bytes of a file at ``fraction`` of its length, in place (size unchanged).
    A hard link is replaced first, so that the file it shares data with stays intact."""
    data = bytearray(path.read_bytes())
    at = int(len(data) * fraction)
    data[at : at + count] = bytes(b ^ 0xFF for b in data[at : at + count])
    path.unlink()
    path.write_bytes(bytes(data))


def edit_json(path, edit, reseal=False):
    data = json.loads(path.read_text())
    edit(data)
    path.unlink()
    if reseal:
        write_manifest(path, data)
    else:
        path.write_text(json.dumps(data, indent=1))


@pytest.fixture
def tables():
    rng = np.random.default_rng(3)
    return {"a": (np.arange(5000, dtype=np.int64) * 3, rng.normal(size=(5000, 8))), "b": (np.arange(10), np.ones((10, 8)))}


# ------------------------------------------------------------------------------ the helpers
def test_seal_detects_any_edit_and_nothing_else(tmp_path):
    manifest = {"format": "x", "rows": 10, "vector": [0.1, 1e-300, -2.5], "nested": {"a": [1, 2]}}
    sealed = seal(manifest)
    check_seal(sealed, tmp_path / "m.json")
    check_seal(json.loads(json.dumps(sealed, indent=3)), tmp_path / "m.json")  # formatting is not content
    check_seal({k: sealed[k] for k in reversed(list(sealed))}, tmp_path / "m.json")  # nor key order
    for edited in ({**sealed, "rows": 11}, {**sealed, "nested": {"a": [1, 3]}}, {**sealed, "extra": 1}):
        with pytest.raises(IntegrityError, match=rf"m.json: damaged or edited: its content has sha256 {HEX}, its {SEAL} says {HEX}"):
            check_seal(edited, tmp_path / "m.json")
    with pytest.raises(IntegrityError, match="written without checksums"):
        check_seal(manifest, tmp_path / "m.json")


def test_verify_files_names_the_file_and_both_digests(tmp_path):
    files = []
    for i in range(5):
        (tmp_path / f"{i}.bin").write_bytes(np.random.default_rng(i).bytes(100_000 + i))
        files.append(f"{i}.bin")
    manifest = tmp_path / "m.json"
    write_manifest(manifest, {"files": [{"file": f, "bytes": 0, "sha256": ""} for f in files]})
    from tritonrec.integrity import file_entry

    entries = [file_entry(tmp_path, f) for f in files]
    assert verify_files(tmp_path, entries, manifest, threads=3) == sum(100_000 + i for i in range(5))
    flip(tmp_path / "3.bin")
    with pytest.raises(IntegrityError, match=rf"3.bin: damaged: sha256 ({HEX}), \S*m.json says {entries[3]['sha256']}"):
        verify_files(tmp_path, entries, manifest)
    (tmp_path / "4.bin").unlink()
    with pytest.raises(IntegrityError, match=r"4.bin: missing \(listed in \S*m.json\)"):
        verify_files(tmp_path, entries, manifest)


# ------------------------------------------------------------------------------ stores
@pytest.mark.parametrize("part", ["rows", "keys"])
def test_flipped_bytes_in_a_store_file_are_refused(tmp_path, tables, part):
    path = build_store(tmp_path / "s", tables)
    original = json.loads((path / "store.json").read_text())["tables"][0]["keys" if part == "keys" else "values"]["sha256"]
    flip(path / "tables" / f"0.{part}.npy")
    with pytest.raises(StoreFormatError, match=rf"0.{part}.npy: damaged: sha256 {HEX}, \S*store.json says {original}"):
        EmbeddingStore(path)
    with EmbeddingStore(path, verify=False) as store:  # what used to be served: wrong rows, no error
        assert not np.array_equal(store.lookup("a", tables["a"][0]), tables["a"][1].astype(np.float32))


def test_a_changed_row_count_in_the_manifest_is_refused(tmp_path, tables):
    path = build_store(tmp_path / "s", tables)
    edit_json(path / "store.json", lambda d: d["tables"][0].update(rows=4999))
    with pytest.raises(StoreFormatError, match=rf"store.json: damaged or edited: its content has sha256 {HEX}"):
        EmbeddingStore(path)
    with pytest.raises(StoreFormatError, match="damaged or edited"):
        EmbeddingStore(path, verify=False)  # the seal is always checked
    # edited and re-sealed (by hand, on purpose): the files no longer match it
    edit_json(path / "store.json", lambda d: None, reseal=True)
    with pytest.raises(StoreFormatError, match=r"0.keys.npy: holds int64 \(5000,\), expected int64 \(4999,\)"):
        EmbeddingStore(path, verify=False)


@pytest.mark.parametrize("role", ["primary", "secondary"])
def test_flipped_bytes_in_a_rocksdb_table_file_are_refused_at_load(tmp_path, tables, role):
    path = build_store(tmp_path / "s", tables, persistent=True)
    with EmbeddingStore(path, role=role) as store:
        assert store.verified_bytes > 0
    sst = sorted((path / "rocksdb").glob("*.sst"))
    assert sst
    flip(sst[0], fraction=0.3)
    with pytest.raises(StoreFormatError, match=rf"{sst[0].name}: damaged: crc32c [0-9a-f]{{8}}, RocksDB's MANIFEST says [0-9a-f]{{8}}"):
        EmbeddingStore(path, role=role)
    with pytest.raises(StoreFormatError, match=rf"{sst[0].name}: damaged"):
        EmbeddingStore(path, role=role, host_budget_bytes=10_000)


def test_rocksdb_checksums_survive_writes_and_compactions(tmp_path, tables):
    """Files written after the build (flushes of updates, compactions) get checksums too."""
    path = build_store(tmp_path / "s", tables, persistent=True)
    rng = np.random.default_rng(0)
    with EmbeddingStore(path) as store:
        for _ in range(3):
            keys = rng.integers(0, 20_000, 2000)
            store.update("a", keys, rng.normal(size=(2000, 8)))
        store._tier.compact()
        expected = store.lookup("a", np.arange(20_000))
    with EmbeddingStore(path) as store:
        assert store.verified_bytes > 0
        np.testing.assert_array_equal(store.lookup("a", np.arange(20_000)), expected)


# ------------------------------------------------------------------------------ plans, scorers
def test_damaged_plan_files_and_manifest_are_refused(criteo_trained, tmp_path):
    plan_dir = criteo_trained["pipeline"].plan.save(tmp_path / "plan")
    manifest = json.loads((plan_dir / "manifest.json").read_text())
    ref = next(r for g in manifest["groups"] for s in g["steps"] for r in s["arrays"].values())
    copy = tmp_path / "copy"
    shutil.copytree(plan_dir, copy)
    flip(copy / ref["file"])
    with pytest.raises(PlanLoadError, match=rf"{ref['file']}: damaged: sha256 {HEX}, \S*manifest.json says {ref['sha256']}"):
        TransformPlan.load(copy)
    shutil.rmtree(copy)
    shutil.copytree(plan_dir, copy)
    edit_json(copy / "manifest.json", lambda d: d["output_schema"][0].update(dtype="float64"))
    with pytest.raises(PlanLoadError, match="manifest.json: damaged or edited"):
        TransformPlan.load(copy)


def test_flipped_bytes_in_a_scorer_weight_are_refused(criteo_trained, tmp_path):
    copy = tmp_path / "scorer"
    shutil.copytree(criteo_trained["pipeline"].scorer_dir, copy)
    recorded = json.loads((copy / "scorer.json").read_text())["files"]["model"]["sha256"]
    flip(copy / "model.pt")
    with pytest.raises(ScorerFormatError, match=rf"model.pt: damaged: sha256 {HEX}, \S*scorer.json says {recorded}"):
        TorchScorerModel(copy)
    with pytest.raises(ScorerFormatError, match="model.pt: damaged"):
        read_scorer_info(copy, verify=True)
    shutil.rmtree(copy)
    shutil.copytree(criteo_trained["pipeline"].scorer_dir, copy)
    edit_json(copy / "scorer.json", lambda d: d.update(n_dense=12))
    with pytest.raises(ScorerFormatError, match="scorer.json: damaged or edited"):
        read_scorer_info(copy)


# ------------------------------------------------------------------------------ served
@pytest.mark.triton
def test_damaged_models_refuse_to_load_in_tritonserver_and_say_why(criteo_trained, criteo_persistent_store, tmp_path, start_server):
    """Plan, RocksDB store and scorer each damaged in an exported repository: each model is
    unavailable with a reason naming its damaged file; the server itself stays up."""
    from embedding_cache import HostOptions
    from tritonrec.export import export_ensemble

    pipeline = criteo_trained["pipeline"]
    repo = tmp_path / "repo"
    export_ensemble(pipeline.plan, criteo_persistent_store, pipeline.scorer_dir, repo, "criteo", max_batch_size=64,
                    host=HostOptions(budget_bytes=1 << 20))
    manifest = json.loads((repo / "criteo_transform" / "1" / "plan" / "manifest.json").read_text())
    array = next(r["file"] for g in manifest["groups"] for s in g["steps"] for r in s["arrays"].values())
    flip(repo / "criteo_transform" / "1" / "plan" / array)
    sst = sorted((repo / "criteo_embeddings" / "1" / "store" / "rocksdb").glob("*.sst"))[0]
    flip(sst, fraction=0.3)
    flip(repo / "criteo_scorer" / "1" / "scorer" / "model.pt")
    with start_server(repo, extra_args=["--exit-on-error=false", "--strict-readiness=false"]) as server:
        request = urllib.request.Request(f"http://{server.http_url}/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=10) as r:
            index = {m["name"]: m for m in json.loads(r.read())}
    expected = {
        "criteo_transform": rf"{array}: damaged: sha256 {HEX}, \S*manifest.json says {HEX}",
        "criteo_embeddings": rf"{sst.name}: damaged: crc32c [0-9a-f]{{8}}, RocksDB's MANIFEST says [0-9a-f]{{8}}",
        "criteo_scorer": rf"model.pt: damaged: sha256 {HEX}, \S*scorer.json says {HEX}",
    }
    import re

    for model, reason in expected.items():
        assert index[model]["state"] == "UNAVAILABLE", index[model]
        assert re.search(reason, index[model].get("reason", "")), index[model]
