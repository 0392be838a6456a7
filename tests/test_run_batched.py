"""One execute of several requests of 0, 1, 2 and many rows, through every served model and every
store tier, against plain references: the plan's own transform, the DLRM's weight rows, the DLRM
itself. And run_batched's rules on their own (checks, retry one by one, refusals)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedding_cache import HostOptions
from tritonrec.pipeline.synthetic import CATEGORICAL, CONTINUOUS
from tritonrec.scorer.dlrm import predict
from tritonrec.serving.client import pack_request
from tritonrec.serving.lookup_model import EmbeddingLookupModel
from tritonrec.serving.requests import RequestError, row_slices, run_batched
from tritonrec.serving.scorer_model import TorchScorerModel
from tritonrec.serving.transform_model import TransformModel

SIZES = (0, 1, 2, 257, 1, 0, 40)
"""Rows of each request of one execute (every size alone too)."""


def _blocks(n_total: int) -> list[slice]:
    assert n_total >= sum(SIZES)
    return row_slices(SIZES)


@pytest.mark.parametrize("layout", ["packed", "per-column"])
def test_transform_model_equals_the_plan_at_every_request_size(criteo_trained, layout):
    plan = criteo_trained["pipeline"].plan
    columns = {c: criteo_trained["held_out"][c] for c in CONTINUOUS + CATEGORICAL}
    model = TransformModel(plan, layout, max_batch_size=512, output_layout="packed")
    blocks = _blocks(len(columns["I1"]))
    requests = [pack_request(model, {c: v[b] for c, v in columns.items()}) for b in blocks]
    together = model.execute(requests)
    for block, request, got in zip(blocks, requests, together):
        expected = plan.transform({c: v[block] for c, v in columns.items()})
        for d, names in plan.packed_outputs.items():
            want = np.stack([expected[c] for c in names], axis=1)  # (rows, len(names)), rows may be 0
            assert want.shape == (block.stop - block.start, len(names))
            np.testing.assert_array_equal(got[f"OUTPUT_{'INT64' if d == 'int64' else 'FP32'}"], want)
        alone = model.execute([request])[0]
        assert alone.keys() == got.keys() and all(np.array_equal(alone[k], got[k]) for k in got)


@pytest.mark.parametrize("tier", ["host", "rocksdb-with-host-budget"])
def test_lookup_model_equals_the_weights_at_every_request_size(criteo_trained, criteo_persistent_store, tier):
    pipeline = criteo_trained["pipeline"]
    tables = pipeline.plan.packed_outputs["int64"]
    store, options = (pipeline.store_dir, {}) if tier == "host" else (criteo_persistent_store, {"host": HostOptions(budget_bytes=64 << 10)})
    ids = criteo_trained["ids"]
    weights = pipeline.model.table_weights()
    blocks = _blocks(len(ids))
    with EmbeddingLookupModel.open(store, tables, max_batch_size=512, **options) as model:
        requests = [{"ids": np.ascontiguousarray(ids[b])} for b in blocks]
        together = model.execute(requests)
        for request, got in zip(requests, together):
            expected = np.stack([weights[j][request["ids"][:, j]] for j in range(len(tables))], axis=1)  # (rows, 26, 16)
            np.testing.assert_array_equal(got["embeddings"], expected)
            np.testing.assert_array_equal(model.execute([request])[0]["embeddings"], expected)


def test_scorer_model_equals_the_dlrm_at_every_request_size(criteo_trained):
    pipeline = criteo_trained["pipeline"]
    dense, ids = criteo_trained["dense"], criteo_trained["ids"]
    weights = pipeline.model.table_weights()
    blocks = _blocks(len(ids))
    model = TorchScorerModel(pipeline.scorer_dir, "cpu", max_batch_size=512, threads=1)
    requests = []
    for b in blocks:
        embeddings = np.stack([weights[j][ids[b, j]] for j in range(ids.shape[1])], axis=1)  # (rows, 26, 16)
        requests.append({"dense": torch.from_numpy(np.ascontiguousarray(dense[b])), "embeddings": torch.from_numpy(embeddings)})
    together = model.execute(requests)
    for block, request, got in zip(blocks, requests, together):
        expected = predict(pipeline.model, dense[block], ids[block])
        np.testing.assert_allclose(got["probability"].numpy().reshape(-1), expected, atol=1e-6, rtol=0)
        np.testing.assert_allclose(model.execute([request])[0]["probability"].numpy().reshape(-1), expected, atol=1e-6, rtol=0)


def test_run_batched_checks_each_request_and_retries_one_by_one():
    """A bad request is refused alone; a value some request holds makes the batch fail, and then
    only that request fails (refused), the others get their rows; run sees only good requests."""
    calls = []

    def check(request):
        if request["x"].ndim != 1:
            raise RequestError("input 'x': expected 1-D")
        return int(request["x"].shape[0])

    def run(batch, rows):
        calls.append(list(rows))
        merged = np.concatenate([r["x"] for r in batch])
        if (merged < 0).any():
            raise ArithmeticError("a negative value")
        return [{"y": merged[b] * 2} for b in row_slices(rows)]

    requests = [{"x": np.arange(3.0)}, {"x": np.zeros((1, 1))}, {"x": np.array([-1.0])}, {"x": np.empty(0)}, {"x": np.array([5.0])}]
    results = run_batched(requests, check, run, retry_on=(ArithmeticError,))
    assert isinstance(results[1], RequestError) and "expected 1-D" in str(results[1])
    assert isinstance(results[2], RequestError) and str(results[2]) == "a negative value"
    np.testing.assert_array_equal(results[0]["y"], [0.0, 2.0, 4.0])
    assert results[3]["y"].shape == (0,)
    np.testing.assert_array_equal(results[4]["y"], [10.0])
    assert calls == [[3, 1, 0, 1], [3], [1], [0], [1]]  # together, then one by one
    # one good request that fails is refused without a second run; other errors propagate
    calls.clear()
    assert str(run_batched([{"x": np.array([-2.0])}], check, run, retry_on=(ArithmeticError,))[0]) == "a negative value"
    assert calls == [[1]]
    with pytest.raises(ArithmeticError):
        run_batched([{"x": np.array([-2.0])}], check, run)
    assert run_batched([{"x": np.zeros((2, 2))}], check, run)[0].args == ("input 'x': expected 1-D",)
