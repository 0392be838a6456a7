"""The DLRM, its split into store + scorer, the scorer artifact and TorchScorerModel (no Triton)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embedding_cache import EmbeddingStore, read_store_info
from tritonrec.integrity import file_entry, write_manifest
from tritonrec.scorer.artifact import ScorerFormatError, read_scorer_info
from tritonrec.serving.scorer_model import TorchScorerModel
from tritonrec.scorer.dlrm import DLRM, DLRMConfig, predict, roc_auc, save_dlrm
from tritonrec.serving.requests import RequestError


def test_dlrm_shapes_follow_the_spec():
    model = DLRM(13, [10] * 26)
    linears = [m for m in model.dense.bottom if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(13, 512), (512, 256), (256, 16)]
    top = [m for m in model.dense.top if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in top] == [(16 + 27 * 26 // 2, 512), (512, 256), (256, 1)]
    out = model(torch.zeros(5, 13), torch.zeros(5, 26, dtype=torch.int64))
    assert out.shape == (5, 1) and bool(((out > 0) & (out < 1)).all())


def test_interaction_is_the_pairwise_dot_products():
    dense = DLRM(2, [4, 4, 4], DLRMConfig(dim=3, bottom=(4,), top=(4,))).dense
    x = torch.randn(2, 2)
    e = torch.randn(2, 3, 3)
    vectors = torch.cat([dense.bottom(x).unsqueeze(1), e], dim=1)
    pairs = [vectors[:, i] @ vectors[:, j].T for i in range(4) for j in range(i)]
    expected = torch.stack([torch.diagonal(p) for p in pairs], dim=1)
    got = torch.bmm(vectors, vectors.transpose(1, 2))[:, dense.pair_rows, dense.pair_cols]
    torch.testing.assert_close(got, expected)


def test_roc_auc_matches_pair_counting():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(0, 20, 300).astype(float)  # many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(labels, scores) == pytest.approx(pairs / (pos.size * neg.size))
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc(np.ones(3), np.arange(3.0))


def test_store_and_scorer_reproduce_the_model(criteo_trained):
    pipeline = criteo_trained["pipeline"]
    metadata, tables = read_store_info(pipeline.store_dir)
    assert metadata["plan_fingerprint"] == pipeline.plan.fingerprint
    assert [t.name for t in tables] == pipeline.plan.packed_outputs["int64"]
    info = read_scorer_info(pipeline.scorer_dir)
    assert info.plan_fingerprint == pipeline.plan.fingerprint and info.n_dense == 13 and info.dim == 16
    ids, dense = criteo_trained["ids"][:300], criteo_trained["dense"][:300]
    with EmbeddingStore(pipeline.store_dir) as store:
        embeddings = np.stack([store.lookup(t, ids[:, j]) for j, t in enumerate(info.tables)], axis=1)
    scorer = TorchScorerModel(pipeline.scorer_dir)
    got = scorer.execute([{"dense": dense, "embeddings": embeddings}])[0]["probability"].numpy().reshape(-1)
    np.testing.assert_allclose(got, criteo_trained["expected"][:300], atol=1e-6, rtol=0)


def test_scorer_batches_requests_and_rejects_bad_ones(criteo_trained):
    scorer = TorchScorerModel(criteo_trained["pipeline"].scorer_dir, max_batch_size=64)
    dense = criteo_trained["dense"][:10]
    embeddings = np.zeros((10, 26, 16), dtype=np.float32)
    results = scorer.execute([
        {"dense": dense[:3], "embeddings": embeddings[:3]},
        {"dense": dense[:3].astype(np.float64), "embeddings": embeddings[:3]},
        {"dense": dense[:3], "embeddings": embeddings[:3, :25]},
        {"dense": dense[:3]},
        {"dense": dense[:2], "embeddings": embeddings[:3]},
        {"dense": np.zeros((65, 13), np.float32), "embeddings": np.zeros((65, 26, 16), np.float32)},
        {"dense": dense[3:10], "embeddings": embeddings[3:10]},
    ])
    assert results[0]["probability"].shape == (3, 1) and results[6]["probability"].shape == (7, 1)
    alone = scorer.execute([{"dense": dense, "embeddings": embeddings}])[0]["probability"]
    torch.testing.assert_close(torch.cat([results[0]["probability"], results[6]["probability"]]), alone)
    messages = [str(r) for r in results[1:6]]
    assert all(isinstance(r, RequestError) for r in results[1:6])
    assert "input 'dense' has dtype float64: expected FP32" in messages[0]
    assert "input 'embeddings' has shape [3, 25, 16]: expected [batch, 26, 16]" in messages[1]
    assert "this model takes ['dense', 'embeddings']" in messages[2]
    assert "input 'embeddings' has 3 rows, input 'dense' has 2" in messages[3]
    assert "65 rows: the maximum batch size is 64" in messages[4]


def test_damaged_scorers_are_refused(criteo_trained, tmp_path):
    with pytest.raises(ScorerFormatError, match="scorer.json: no such file"):
        read_scorer_info(tmp_path)
    (tmp_path / "scorer.json").write_text("{not json")
    with pytest.raises(ScorerFormatError, match="not valid JSON"):
        read_scorer_info(tmp_path)
    data = json.loads((criteo_trained["pipeline"].scorer_dir / "scorer.json").read_text())
    del data["n_dense"]
    (tmp_path / "scorer.json").write_text(json.dumps(data))
    with pytest.raises(ScorerFormatError, match="damaged"):
        read_scorer_info(tmp_path)
    data["n_dense"] = 13
    (tmp_path / "scorer.json").write_text(json.dumps(data))
    with pytest.raises(ScorerFormatError, match="model.pt: missing"):
        TorchScorerModel(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"not a model")
    with pytest.raises(ScorerFormatError, match=r"model.pt: 11 bytes, \S*scorer.json says \d+: truncated or damaged"):
        TorchScorerModel(tmp_path)
    # a file that matches its (re-sealed) manifest but is no TorchScript model
    write_manifest(tmp_path / "scorer.json", {**data, "files": {"model": file_entry(tmp_path, "model.pt")}})
    with pytest.raises(ScorerFormatError, match="not a loadable TorchScript model"):
        TorchScorerModel(tmp_path)


def test_save_dlrm_refuses_tables_of_other_sizes(criteo_trained, tmp_path):
    plan = criteo_trained["pipeline"].plan
    sizes = [plan.categorical_codes()[c][0] for c in plan.packed_outputs["int64"]]
    sizes[4] += 1
    with pytest.raises(ValueError, match=f"table for 'C5' has {sizes[4]} rows; the plan encodes {sizes[4] - 1} codes"):
        save_dlrm(DLRM(13, sizes), plan, tmp_path / "s", tmp_path / "c")


def test_predict_is_the_model_in_batches(criteo_trained):
    model = criteo_trained["pipeline"].model
    dense, ids = criteo_trained["dense"][:100], criteo_trained["ids"][:100]
    np.testing.assert_allclose(predict(model, dense, ids, batch_size=7), criteo_trained["expected"][:100], atol=1e-6, rtol=0)


def test_small_batches_run_on_one_thread(criteo_trained):
    before = torch.get_num_threads()
    try:
        scorer = TorchScorerModel(criteo_trained["pipeline"].scorer_dir, threads=2, parallel_rows=32)
        dense, ids = criteo_trained["dense"], criteo_trained["ids"]
        embeddings = np.stack([w[ids[:64, j]] for j, w in enumerate(criteo_trained["pipeline"].model.table_weights())], axis=1)
        one = scorer.execute([{"dense": dense[:1], "embeddings": embeddings[:1]}])[0]["probability"]
        assert torch.get_num_threads() == 1
        many = scorer.execute([{"dense": dense[:64], "embeddings": embeddings}])[0]["probability"]
        assert torch.get_num_threads() == 2
        np.testing.assert_allclose(one.numpy(), many[:1].numpy(), atol=1e-6, rtol=0)
        with pytest.raises(ValueError, match="threads 0: expected >= 1"):
            TorchScorerModel(criteo_trained["pipeline"].scorer_dir, threads=0)
    finally:
        torch.set_num_threads(before)
