"""The full ensemble in a real tritonserver: parity with the offline DLRM in both input layouts,
exact metric counts, bad inputs, each backend alone, load-time refusals, and the transform and
embedding_lookup backends reused as steps of a hand-written ensemble."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
import time

import numpy as np
import pytest

from embedding_cache import EmbeddingStore, build_store
from tritonrec.integrity import write_manifest
from tritonrec.serving.client import infer, scrape_metrics
from tritonrec.export import ServedScorer, export_ensemble
from tritonrec.pipeline.synthetic import CATEGORICAL, CONTINUOUS
from tritonrec.serving.server import ServerError, TritonServer
from tritonrec.serving.client import pack_request
from tritonrec.serving.transform_model import TransformModel

pytestmark = pytest.mark.triton
RAW = CONTINUOUS + CATEGORICAL

RANKER = '''
import numpy as np
import triton_python_backend_utils as pb_utils
from tritonrec.serving.tensors import input_array, output_tensor


class TritonPythonModel:
    """Another scorer: sigmoid(sum of the embeddings + 0.1 * sum of the dense features)."""

    def execute(self, requests):
        responses = []
        for request in requests:
            dense = input_array(pb_utils.get_input_tensor_by_name(request, "features"))
            vectors = input_array(pb_utils.get_input_tensor_by_name(request, "vectors"))
            logit = vectors.sum(axis=(1, 2)) + 0.1 * dense.sum(axis=1)
            score = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32).reshape(-1, 1)
            responses.append(pb_utils.InferenceResponse(output_tensors=[output_tensor(pb_utils, "score", score)]))
        return responses
'''

FAULTY = '''
import numpy as np
import triton_python_backend_utils as pb_utils
from tritonrec.serving.transform_model import RequestError
from tritonrec.serving.tensors import input_array, output_tensor, respond


def double(requests):
    """y = 2x; a negative x is the request's fault, a NaN makes the whole execute fail (ours)."""
    if any(np.isnan(r["x"]).any() for r in requests):
        raise RuntimeError("the library broke")
    return [RequestError("input 'x' holds a negative value") if (r["x"] < 0).any() else {"y": r["x"] * 2} for r in requests]


class TritonPythonModel:
    def execute(self, requests):
        return respond(pb_utils, requests, double, input_array, lambda r: [output_tensor(pb_utils, "y", r["y"])], "doubling")
'''


def _foreign_models(repo, plan_dir, store_dir, tables):
    """A hand-written repository part: features (nvtabular_transform), vectors (embedding_lookup),
    ranker (a plain Python model) and the ensemble shop_ranker chaining them."""
    n = len(tables)
    configs = {
        "features": f'''
            backend: "nvtabular_transform"
            max_batch_size: 256
            parameters {{ key: "plan" value: {{ string_value: "{plan_dir}" }} }}
            parameters {{ key: "allow_outside_repository" value: {{ string_value: "true" }} }}
            parameters {{ key: "layout" value: {{ string_value: "packed" }} }}
            parameters {{ key: "output_layout" value: {{ string_value: "packed" }} }}
        ''',
        "vectors": f'''
            backend: "embedding_lookup"
            max_batch_size: 256
            input [ {{ name: "ids", data_type: TYPE_INT64, dims: [ {n} ] }} ]
            output [ {{ name: "embeddings", data_type: TYPE_FP32, dims: [ {n}, 16 ] }} ]
            parameters {{ key: "store" value: {{ string_value: "{store_dir}" }} }}
            parameters {{ key: "allow_outside_repository" value: {{ string_value: "true" }} }}
            parameters {{ key: "tables" value: {{ string_value: "{",".join(tables)}" }} }}
        ''',
        "ranker": f'''
            backend: "python"
            max_batch_size: 256
            input [ {{ name: "features", data_type: TYPE_FP32, dims: [ 13 ] }},
                    {{ name: "vectors", data_type: TYPE_FP32, dims: [ {n}, 16 ] }} ]
            output [ {{ name: "score", data_type: TYPE_FP32, dims: [ 1 ] }} ]
        ''',
        "shop_ranker": f'''
            platform: "ensemble"
            max_batch_size: 256
            input [ {{ name: "INPUT_FP32", data_type: TYPE_FP32, dims: [ 13 ] }},
                    {{ name: "INPUT_INT64", data_type: TYPE_INT64, dims: [ {n} ] }} ]
            output [ {{ name: "score", data_type: TYPE_FP32, dims: [ 1 ] }} ]
            ensemble_scheduling {{ step [
              {{ model_name: "features" model_version: -1
                 input_map {{ key: "INPUT_FP32" value: "INPUT_FP32" }} input_map {{ key: "INPUT_INT64" value: "INPUT_INT64" }}
                 output_map {{ key: "OUTPUT_FP32" value: "f" }} output_map {{ key: "OUTPUT_INT64" value: "codes" }} }},
              {{ model_name: "vectors" model_version: -1
                 input_map {{ key: "ids" value: "codes" }} output_map {{ key: "embeddings" value: "v" }} }},
              {{ model_name: "ranker" model_version: -1
                 input_map {{ key: "features" value: "f" }} input_map {{ key: "vectors" value: "v" }}
                 output_map {{ key: "score" value: "score" }} }}
            ] }}
        ''',
    }
    configs["faulty"] = '''
        backend: "python"
        max_batch_size: 8
        input [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]
        output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]
    '''
    for name, config in configs.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(f'name: "{name}"\n' + textwrap.dedent(config))
    (repo / "ranker" / "1" / "model.py").write_text(RANKER)
    (repo / "faulty" / "1" / "model.py").write_text(FAULTY)


@pytest.fixture(scope="module")
def served(criteo_trained, tmp_path_factory, start_server):
    import tritonclient.grpc as grpcclient

    pipeline = criteo_trained["pipeline"]
    work = tmp_path_factory.mktemp("ensemble")
    repo = work / "repo"
    for name, layout in (("criteo", "packed"), ("criteo_cols", "per-column"), ("metered", "packed")):
        export_ensemble(pipeline.workflow_dir, pipeline.store_dir, pipeline.scorer_dir, repo, name, layout=layout, max_batch_size=512)
    pipeline.plan.save(work / "plan")
    _foreign_models(repo, work / "plan", pipeline.store_dir, pipeline.plan.packed_outputs["int64"])
    # an exported ensemble whose scorer is a model already served (the hand-written Python ranker)
    export_ensemble(pipeline.plan, pipeline.store_dir, ServedScorer("ranker", "features", "vectors", "score"), repo, "criteo_ranker", max_batch_size=256)
    with start_server(repo) as server:
        yield {"client": grpcclient.InferenceServerClient(server.grpc_url), "server": server, "repo": repo}


def _rows(criteo_trained, start, n):
    return {c: criteo_trained["held_out"][c][start : start + n] for c in RAW}


def _probability(served, criteo_trained, name, layout, start, n):
    model = TransformModel(criteo_trained["pipeline"].plan, layout)
    out = infer(served["client"], name, pack_request(model, _rows(criteo_trained, start, n)), ["probability"])
    return out["probability"]


@pytest.mark.parametrize(("name", "layout"), [("criteo", "packed"), ("criteo_cols", "per-column")])
@pytest.mark.parametrize(("start", "n"), [(0, 1), (1, 7), (8, 512), (600, 300)])
def test_served_probabilities_equal_the_offline_model(served, criteo_trained, name, layout, start, n):
    got = _probability(served, criteo_trained, name, layout, start, n)
    assert got.shape == (n, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got.reshape(-1), criteo_trained["expected"][start : start + n], atol=1e-5, rtol=0)


def test_metrics_count_rows_oov_lookups_and_durations(served, criteo_trained):
    plan = criteo_trained["pipeline"].plan
    sizes = [1, 5, 100, 37]
    start = 0
    for n in sizes:  # one at a time: each request is one execute of each model
        _probability(served, criteo_trained, "metered", "packed", start, n)
        start += n
    total = sum(sizes)
    ids = criteo_trained["ids"][:total]
    expected = {
        'tritonrec_transform_rows_total{model="metered_transform"}': total,
        'tritonrec_embedding_lookup_duration_us_count{model="metered_embeddings"}': len(sizes),
        'tritonrec_embedding_lookup_duration_us_bucket{model="metered_embeddings",le="+Inf"}': len(sizes),
    }
    for j, column in enumerate(plan.packed_outputs["int64"]):
        _, first, end = plan.categorical_codes()[column]
        expected[f'tritonrec_transform_oov_total{{column="{column}",model="metered_transform"}}'] = int(((ids[:, j] >= first) & (ids[:, j] < end)).sum())
        expected[f'tritonrec_embedding_lookups_total{{model="metered_embeddings",table="{column}",tier="host"}}'] = total
        expected[f'tritonrec_embedding_misses_total{{model="metered_embeddings",table="{column}",tier="host"}}'] = 0
    assert sum(v for k, v in expected.items() if "oov" in k) > 0  # rare values were seen
    assert _settled_metrics(served["server"], expected) == expected


def _settled_metrics(server, expected: dict[str, float]) -> dict[str, float | None]:
    """The metrics named in ``expected`` once they equal it, or as they are after 5 s (the
    backends send their counts every 0.5 s)."""
    deadline = time.monotonic() + 5
    while True:
        metrics = scrape_metrics(server.metrics_url)
        got = {k: metrics.get(k) for k in expected}
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_bad_inputs_at_the_ensemble_name_the_input_and_the_server_serves_on(served, criteo_trained):
    from tritonclient.utils import InferenceServerException

    model = TransformModel(criteo_trained["pipeline"].plan, "packed")
    good = pack_request(model, _rows(criteo_trained, 0, 4))
    cases = [
        ({**good, "INPUT_INT64": good["INPUT_INT64"][:, :25]}, "INPUT_INT64"),
        ({**good, "INPUT_FP32": good["INPUT_FP32"].astype(np.float64)}, "INPUT_FP32"),
        ({"INPUT_FP32": good["INPUT_FP32"]}, "INPUT_INT64"),
        ({**good, "INPUT_INT64": good["INPUT_INT64"][:3]}, "batch size does not match other inputs"),
        (pack_request(model, _rows(criteo_trained, 0, 513)), "batch-size must be <= 512"),
    ]
    for tensors, name in cases:
        with pytest.raises(InferenceServerException, match=name):
            infer(served["client"], "criteo", tensors, ["probability"])
    # NaN, negative and unseen values are data, not errors: they are transformed like NVTabular does.
    odd = {k: v.copy() for k, v in good.items()}
    odd["INPUT_FP32"][:, 0] = np.nan
    odd["INPUT_FP32"][:, 1] = -5
    odd["INPUT_INT64"][:, 2] = 123456789
    assert infer(served["client"], "criteo", odd, ["probability"])["probability"].shape == (4, 1)
    got = infer(served["client"], "criteo", good, ["probability"])["probability"]
    np.testing.assert_allclose(got.reshape(-1), criteo_trained["expected"][:4], atol=1e-5, rtol=0)


def test_composing_models_serve_alone(served, criteo_trained):
    pipeline = criteo_trained["pipeline"]
    ids = criteo_trained["ids"][:20]
    embeddings = infer(served["client"], "criteo_embeddings", {"ids": ids}, ["embeddings"])["embeddings"]
    weights = pipeline.model.table_weights()
    np.testing.assert_array_equal(embeddings, np.stack([weights[j][ids[:, j]] for j in range(ids.shape[1])], axis=1))
    dense = criteo_trained["dense"][:20]
    probability = infer(served["client"], "criteo_scorer", {"dense": dense, "embeddings": embeddings}, ["probability"])["probability"]
    np.testing.assert_allclose(probability.reshape(-1), criteo_trained["expected"][:20], atol=1e-6, rtol=0)
    # an id no tier holds gets the store's policy (zeros)
    far = ids.copy()
    far[:, 0] = 10**12
    out = infer(served["client"], "criteo_embeddings", {"ids": far}, ["embeddings"])["embeddings"]
    assert not out[:, 0].any() and out[:, 1].any()


def test_backends_reused_in_a_hand_written_ensemble(served, criteo_trained):
    model = TransformModel(criteo_trained["pipeline"].plan, "packed")
    tensors = pack_request(model, _rows(criteo_trained, 0, 50))
    score = infer(served["client"], "shop_ranker", tensors, ["score"])["score"]
    weights = criteo_trained["pipeline"].model.table_weights()
    ids, dense = criteo_trained["ids"][:50], criteo_trained["dense"][:50]
    vectors = np.stack([weights[j][ids[:, j]] for j in range(ids.shape[1])], axis=1)
    logit = vectors.sum(axis=(1, 2)) + 0.1 * dense.sum(axis=1)
    np.testing.assert_allclose(score.reshape(-1), 1 / (1 + np.exp(-logit)), rtol=1e-5, atol=1e-6)


def test_an_exported_ensemble_chains_a_served_scorer(served, criteo_trained):
    model = TransformModel(criteo_trained["pipeline"].plan, "packed")
    tensors = pack_request(model, _rows(criteo_trained, 0, 20))
    got = infer(served["client"], "criteo_ranker", tensors, ["probability"])["probability"]
    np.testing.assert_array_equal(got, infer(served["client"], "shop_ranker", tensors, ["score"])["score"])


def test_ensemble_config_pins_the_exported_versions(served):
    config = (served["repo"] / "criteo" / "config.pbtxt").read_text()
    for step in ("criteo_transform", "criteo_embeddings", "criteo_scorer"):
        assert re.search(rf'model_name: "{step}"\s+model_version: 1\b', config)
    packed = re.search(r'key: "packed_inputs" value: \{ string_value: "(.*)" \}', config).group(1)
    assert json.loads(packed.replace('\\"', '"'))["int64"] == CATEGORICAL


def _one_model_repo(tmp_path, source_repo, model):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(source_repo / model, repo / model)
    return repo


def test_a_store_of_another_plan_is_refused_at_load(served, tmp_path):
    repo = _one_model_repo(tmp_path, served["repo"], "criteo_embeddings")
    manifest = repo / "criteo_embeddings" / "1" / "store" / "store.json"
    data = json.loads(manifest.read_text())
    fingerprint = data["metadata"]["plan_fingerprint"]
    data["metadata"]["plan_fingerprint"] = "0" * 64
    manifest.unlink()  # a hard link to the source store's file: replace, never edit in place
    write_manifest(manifest, data)  # re-sealed: the fingerprint check must hold on its own
    with pytest.raises(ServerError, match=f"model 'criteo_embeddings'.*fingerprint '0{{64}}'.*fingerprint '{fingerprint}'"):
        TritonServer(repo).start(timeout_s=60)


@pytest.mark.parametrize(("model", "part", "message"), [
    ("criteo_embeddings", "store", "store.json: no such file: .* is not an embedding store"),
    ("criteo_scorer", "scorer", "scorer.json: no such file: .* is not a tritonrec scorer"),
    ("criteo_transform", "plan", "manifest.json"),
])
def test_a_missing_part_is_named_at_load(served, tmp_path, model, part, message):
    repo = _one_model_repo(tmp_path, served["repo"], model)
    shutil.rmtree(repo / model / "1" / part)
    with pytest.raises(ServerError, match=f"model '{model}'.*{message}"):
        TritonServer(repo).start(timeout_s=60)


def test_a_scorer_of_another_plan_is_refused_at_load(served, tmp_path):
    repo = _one_model_repo(tmp_path, served["repo"], "criteo_scorer")
    config = repo / "criteo_scorer" / "config.pbtxt"
    text = config.read_text()
    fingerprint = re.search(r'key: "plan_fingerprint" value: \{ string_value: "(\w+)" \}', text).group(1)
    config.write_text(text.replace(fingerprint, "f" * 64))
    with pytest.raises(ServerError, match=f"model 'criteo_scorer': scorer .*fingerprint '{fingerprint}'.*fingerprint '{'f' * 64}'"):
        TritonServer(repo).start(timeout_s=60)


def test_strict_missing_policy_fails_only_the_request_with_absent_ids(served, criteo_trained, tmp_path, start_server):
    pipeline = criteo_trained["pipeline"]
    with EmbeddingStore(pipeline.store_dir) as store:
        tables = {}
        for info in store.tables:
            keys = np.arange(info.rows, dtype=np.int64)
            keys = keys[keys != 5] if info.name == "C3" else keys
            tables[info.name] = (keys, store.lookup(info.name, keys))
        metadata = store.metadata
    repo = _one_model_repo(tmp_path, served["repo"], "criteo_embeddings")
    store_dir = repo / "criteo_embeddings" / "1" / "store"
    shutil.rmtree(store_dir)
    build_store(store_dir, tables, metadata=metadata)
    config = repo / "criteo_embeddings" / "config.pbtxt"
    config.write_text(config.read_text().replace('string_value: "store" } }\nparameters { key: "tables"', 'string_value: "store" } }\nparameters { key: "tables"').replace(
        'key: "missing_key_policy" value: { string_value: "store" }', 'key: "missing_key_policy" value: { string_value: "error" }'
    ))
    from tritonclient.utils import InferenceServerException
    import tritonclient.grpc as grpcclient

    ids = np.full((3, 26), 3, dtype=np.int64)
    with start_server(repo) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        bad = ids.copy()
        bad[1, 2] = 5
        with pytest.raises(InferenceServerException, match=r"input 'ids': 1 key\(s\) not in table 'C3': \[5\]") as error:
            infer(client, "criteo_embeddings", {"ids": bad}, ["embeddings"])
        assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert infer(client, "criteo_embeddings", {"ids": ids}, ["embeddings"])["embeddings"].shape == (3, 26, 16)
        expected = {
            'tritonrec_embedding_misses_total{model="criteo_embeddings",table="C3",tier="host"}': 1,
            'tritonrec_embedding_lookups_total{model="criteo_embeddings",table="C3",tier="host"}': 6,
        }
        assert _settled_metrics(server, expected) == expected


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_errors_carry_a_code_client_faults_invalid_arg_ours_internal(served, protocol):
    """A RequestError reaches the client as INVALID_ARG (gRPC INVALID_ARGUMENT, HTTP 400); any
    other failure of a backend as INTERNAL (HTTP 500), naming the step; the model serves on."""
    from tritonclient.utils import InferenceServerException

    if protocol == "grpc":
        client = served["client"]
        codes = ("StatusCode.INVALID_ARGUMENT", "StatusCode.INTERNAL")
        call = lambda x: infer(client, "faulty", {"x": x}, ["y"])  # noqa: E731
    else:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(served["server"].http_url)
        codes = ("400", "500")

        def call(x):
            tensor = httpclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            return {"y": client.infer("faulty", [tensor]).as_numpy("y")}
    x = np.array([[1.5], [2.0]], np.float32)
    with pytest.raises(InferenceServerException, match="input 'x' holds a negative value") as error:
        call(-x)
    assert str(error.value.status()) == codes[0]
    with pytest.raises(InferenceServerException, match="doubling failed: RuntimeError: the library broke") as error:
        call(np.full((1, 1), np.nan, np.float32))
    assert str(error.value.status()) == codes[1]
    np.testing.assert_array_equal(call(x)["y"], 2 * x)
