"""A workflow with a string column and a list column through a real tritonserver: padded values +
lengths when Triton batches, flat values + offsets with max_batch_size 0; outputs equal nvtabular's
own transform; bad lists get named errors and the server keeps serving."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from tritonrec.transform.plan import ListColumn

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    nvt = pytest.importorskip("nvtabular")
    from merlin.io import Dataset
    from nvtabular import ops

    rng = np.random.default_rng(0)
    n = 500
    frame = pd.DataFrame({
        "s": np.array([f"w{i}" for i in rng.integers(0, 30, n)], dtype=object),
        # the first row not empty: merlin infers a list column's dtype from it
        "tags": [list(rng.integers(0, 40, rng.integers(1 if i == 0 else 0, 6))) for i in range(n)],
        "x": rng.integers(0, 20, n),
    })
    out = tmp_path_factory.mktemp("lists_workflow")
    graph = (["s", "x"] >> ops.Categorify(out_path=str(out))) + (["tags"] >> ops.Categorify(out_path=str(out)) >> ops.ListSlice(-3))
    workflow = nvt.Workflow(graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow.fit(Dataset(frame, cpu=True))
        workflow.save(str(out / "workflow"))
    return nvt.Workflow.load(str(out / "workflow"))


def _rows(column: ListColumn) -> list[list[int]]:
    return [column.values[column.offsets[i] : column.offsets[i + 1]].tolist() for i in range(len(column))]


def test_strings_and_lists_through_triton(workflow, tmp_path, start_server):
    if int(np.__version__.split(".")[0]) >= 2:
        pytest.skip("string inputs need numpy < 2 in Triton 2.51's Python stub (the model refuses to load; see test_strings_triton)")
    from merlin.io import Dataset

    from tritonrec.serving.client import infer_http
    from tritonrec.export import export_transform
    from tritonrec.transform import compile_workflow
    from tritonrec.serving.client import pack_request, unpack_response
    from tritonrec.serving.transform_model import TransformModel

    plan = compile_workflow(workflow)
    export_transform(plan, tmp_path, "batched", max_batch_size=64)
    export_transform(plan, tmp_path, "flat", max_batch_size=0)
    assert "dynamic_batching" not in (tmp_path / "flat" / "config.pbtxt").read_text()
    rng = np.random.default_rng(1)
    n = 40
    rows = [list(rng.integers(0, 50, rng.integers(0, 8))) for _ in range(n)]  # 40..49 unseen
    s = np.array([f"w{i}" for i in rng.integers(0, 35, n)], dtype=object)
    x = rng.integers(0, 25, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = workflow.transform(Dataset(pd.DataFrame({"s": s, "tags": rows, "x": x}), cpu=True)).to_ddf().compute()
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    values = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
    columns = {"s": s, "tags": ListColumn(values, offsets), "x": x}
    log = tmp_path / "server.log"
    with start_server(tmp_path, log_path=log) as server:
        for name, list_layout, batch in (("batched", "padded", 64), ("flat", "offsets", 0)):
            model = TransformModel(plan, "per-column", batch, list_layout=list_layout)
            request = pack_request(model, columns)
            request = {k: v.reshape(-1, 1) if k == "s" else v for k, v in request.items()}
            got = unpack_response(model, infer_http(server.http_url, name, request, [o.name for o in model.outputs]))
            assert _rows(got["tags"]) == [list(v) for v in want["tags"]], name
            np.testing.assert_array_equal(got["s"], want["s"].to_numpy())
            np.testing.assert_array_equal(got["x"], want["x"].to_numpy())
            # a bad list: a named error, and the next request is served
            second = "tags__lengths" if list_layout == "padded" else "tags__offsets"
            broken = dict(request)
            if list_layout == "padded":
                broken[second] = request[second].copy()
                broken[second][3, 0] = request["tags__values"].shape[1] + 1
                message = "row 3 has length"
            else:
                broken[second] = request[second].copy()
                broken[second][2], broken[second][3] = broken[second][3] + 1, broken[second][2]
                message = "offsets decrease at row"
            with pytest.raises(RuntimeError, match=message):
                infer_http(server.http_url, name, broken, [o.name for o in model.outputs])
            again = unpack_response(model, infer_http(server.http_url, name, request, [o.name for o in model.outputs]))
            assert _rows(again["tags"]) == _rows(got["tags"])
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize("kind", ["KIND_CPU", pytest.param("KIND_GPU", marks=pytest.mark.gpu)])
def test_multi_hot_lookup_through_triton(tmp_path, start_server, kind):
    """The embedding_lookup backend with a multi-hot table (mean) beside a one-hot one: padded ids +
    lengths with Triton batching, flat ids + offsets with max_batch_size 0; on CPU instances, and on
    GPU instances with their GPU cache (tensors kept on the device)."""
    from embedding_cache import build_store
    from tritonrec.serving.client import infer_http
    from tritonrec.serving.lookup_model import EmbeddingLookupModel
    from tritonrec.export import tensor_block
    from tritonrec.serving.lists import list_to_padded

    rng = np.random.default_rng(0)
    store = build_store(tmp_path / "store", {t: (np.arange(100), rng.normal(size=(100, 8)).astype(np.float32)) for t in ("user", "tags")})
    repo = tmp_path / "repo"
    models = {}
    for name, batch in (("mh_batched", 16), ("mh_flat", 0)):
        layout = "padded" if batch else "offsets"
        models[name] = EmbeddingLookupModel.open(store, ["user", "tags"], max_batch_size=batch, multi_hot={"tags": "mean"}, list_layout=layout)
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text("\n".join([
            f'name: "{name}"', 'backend: "embedding_lookup"', f"max_batch_size: {batch}",
            tensor_block("input", models[name].inputs, batch), tensor_block("output", models[name].outputs, batch),
            f"instance_group [ {{ count: 1, kind: {kind} }} ]",
            "dynamic_batching { }" if batch else "",
            f'parameters {{ key: "store" value: {{ string_value: "{store}" }} }}',
            'parameters { key: "allow_outside_repository" value: { string_value: "true" } }',
            'parameters { key: "tables" value: { string_value: "user,tags" } }',
            'parameters { key: "multi_hot" value: { string_value: "tags:mean" } }',
            *(['parameters { key: "gpu_cache_bytes" value: { string_value: "1048576" } }',
               'parameters { key: "FORCE_CPU_ONLY_INPUT_TENSORS" value: { string_value: "no" } }'] if kind == "KIND_GPU" else []),
        ]))
    n = 12
    lengths = rng.integers(0, 6, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.integers(0, 100, int(offsets[-1]))
    ids = rng.integers(0, 100, (n, 1))
    padded, padded_lengths = list_to_padded(ListColumn(values, offsets))
    requests = {
        "mh_batched": {"ids": ids, "tags__values": padded, "tags__lengths": padded_lengths},
        "mh_flat": {"ids": ids, "tags__values": values, "tags__offsets": offsets.astype(np.int32)},
    }
    with start_server(repo, log_path=tmp_path / "server.log") as server:
        for name, request in requests.items():
            want = models[name].execute([request])[0]["embeddings"]
            got = infer_http(server.http_url, name, request, ["embeddings"])["embeddings"]
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # the GPU sums in another order
            assert not want[lengths == 0, 1].any() and want[lengths > 0, 1].any()
            broken = dict(request)
            if name == "mh_batched":
                broken["tags__lengths"] = padded_lengths + padded.shape[1]
                message = r"row \d+ has length \d+: expected 0 \.\. "
            else:
                broken["tags__offsets"] = offsets[::-1].astype(np.int32).copy()
                message = "offsets start at"
            with pytest.raises(RuntimeError, match=message):
                infer_http(server.http_url, name, broken, ["embeddings"])
            np.testing.assert_allclose(infer_http(server.http_url, name, request, ["embeddings"])["embeddings"], want, rtol=1e-6, atol=1e-6)
    for model in models.values():
        model.close()


@pytest.mark.parametrize("combiner", ["mean", "sum"])
def test_multi_hot_ensemble_through_triton(tmp_path, start_server, combiner):
    """A workflow with a list column through the exported ensemble: the transform passes the
    list's codes padded to the lookup, which combines the rows' vectors into the list table's slot;
    probabilities equal nvtabular's transform + the same lookups + the scorer in process."""
    nvt = pytest.importorskip("nvtabular")
    torch = pytest.importorskip("torch")
    from merlin.io import Dataset
    from nvtabular import ops

    from embedding_cache import build_store
    from tritonrec.serving.client import infer_http
    from tritonrec.export import export_ensemble
    from tritonrec.scorer.artifact import ScorerInfo, save_scorer
    from tritonrec.scorer.dlrm import DLRMDense
    from tritonrec.transform import compile_workflow
    from tritonrec.serving.client import pack_request
    from tritonrec.serving.transform_model import TransformModel

    rng = np.random.default_rng(2)
    n = 400
    frame = pd.DataFrame({
        "I1": rng.lognormal(0, 1, n).astype(np.float32),
        "C1": rng.integers(0, 30, n),
        "tags": [list(rng.integers(0, 40, rng.integers(1 if i == 0 else 0, 6))) for i in range(n)],
    })
    graph = (["I1"] >> ops.LogOp()) + (["C1"] >> ops.Categorify(out_path=str(tmp_path))) + (
        ["tags"] >> ops.Categorify(out_path=str(tmp_path)) >> ops.ListSlice(-4))
    workflow = nvt.Workflow(graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow.fit(Dataset(frame, cpu=True))
    plan = compile_workflow(workflow)
    sizes = {c: r[0] for c, r in plan.categorical_codes().items()}
    assert list(sizes) == ["C1", "tags"]
    weights = {c: rng.normal(0, 0.5, (s, 16)).astype(np.float32) for c, s in sizes.items()}
    store = build_store(tmp_path / "store", {c: (np.arange(s), weights[c]) for c, s in sizes.items()},
                        metadata={"plan_fingerprint": plan.fingerprint, "table_sizes": sizes})
    torch.manual_seed(0)
    dense_model = DLRMDense(1, 2, 16, [32], [32]).eval()
    save_scorer(tmp_path / "scorer", dense_model, ScorerInfo(plan.fingerprint, ("C1", "tags"), sizes, 1, 16))
    repo = tmp_path / "repo"
    export_ensemble(plan, store, tmp_path / "scorer", repo, "mh", layout="per-column", max_batch_size=64, multi_hot_combiner=combiner)

    test = pd.DataFrame({"I1": rng.lognormal(0, 1, 30).astype(np.float32), "C1": rng.integers(0, 35, 30),
                         "tags": [list(rng.integers(0, 45, rng.integers(1 if i == 0 else 0, 8))) for i in range(30)]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = workflow.transform(Dataset(test, cpu=True)).to_ddf().compute()
    embeddings = np.zeros((30, 2, 16), dtype=np.float32)
    embeddings[:, 0] = weights["C1"][want["C1"].to_numpy()]
    for i, codes in enumerate(want["tags"]):
        if len(codes):
            picked = weights["tags"][np.asarray(codes)]
            embeddings[i, 1] = picked.mean(axis=0) if combiner == "mean" else picked.sum(axis=0)
    with torch.inference_mode():
        expected = dense_model(torch.from_numpy(want[["I1"]].to_numpy(np.float32)), torch.from_numpy(embeddings)).numpy().reshape(-1)
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in test["tags"]])]).astype(np.int64)
    columns = {"I1": test["I1"].to_numpy(), "C1": test["C1"].to_numpy(),
               "tags": ListColumn(np.concatenate([np.asarray(r, dtype=np.int64) for r in test["tags"]]), offsets)}
    request = pack_request(TransformModel(plan, "per-column", 64, list_layout="padded"), columns)
    with start_server(repo, log_path=tmp_path / "server.log") as server:
        got = infer_http(server.http_url, "mh", request, ["probability"])["probability"].reshape(-1)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        broken = {**request, "tags__lengths": request["tags__lengths"] + 100}
        with pytest.raises(RuntimeError, match="tags__lengths"):
            infer_http(server.http_url, "mh", broken, ["probability"])
        np.testing.assert_allclose(infer_http(server.http_url, "mh", request, ["probability"])["probability"].reshape(-1), expected, rtol=1e-5, atol=1e-6)
