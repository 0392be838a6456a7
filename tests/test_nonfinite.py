"""Infinite and out-of-range inputs: transformed exactly as NVTabular does, never scored as NaN.

NVTabular's ops carry +inf through (FillMissing fills only NaN, Clip(min_value=0) keeps +inf and
maps -inf to 0, LogOp gives log1p(inf) = inf, Normalize (inf - mean) / std = inf); the plan does
the same. A DLRM then returns NaN for such a row (inf - inf in its first layer), which used to be
served as the probability. Now the scorer fails that request alone, naming the row and the
feature (INVALID_ARG); a NaN from finite inputs is the model's fault (INTERNAL).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from tritonrec.pipeline.synthetic import CATEGORICAL, CONTINUOUS
from tritonrec.pipeline.workflow import nvtabular_transform
from tritonrec.scorer.artifact import NonFiniteScoreError, ScorerInfo, save_scorer
from tritonrec.serving.scorer_model import TorchScorerModel
from tritonrec.transform.parity import compare
from tritonrec.serving.client import pack_request
from tritonrec.serving.requests import RequestError
from tritonrec.serving.transform_model import TransformModel

with np.errstate(over="ignore"):  # 1e39 does not fit float32: it becomes inf, as in a JSON body
    SPECIAL = np.array([np.inf, -np.inf, 1e39, -1e39, np.nan, 3.4e38, -3.4e38, 0.0, 1.0]).astype(np.float32)


def _rows_with(criteo_trained, column, values):
    held = criteo_trained["held_out"]
    columns = {c: held[c][: len(values)].copy() for c in CONTINUOUS + CATEGORICAL}
    columns[column] = np.asarray(values, dtype=columns[column].dtype)
    return columns


@pytest.mark.parametrize("column", CONTINUOUS)
def test_the_plan_transforms_infinities_exactly_as_nvtabular(criteo_trained, column):
    pipeline = criteo_trained["pipeline"]
    columns = _rows_with(criteo_trained, column, SPECIAL)
    expected = nvtabular_transform(pipeline.workflow, columns)
    report = compare(expected, pipeline.plan.transform(columns))
    assert report.ok, report.summary()
    assert np.isposinf(expected[column][0]) and np.isfinite(expected[column][1])  # +inf stays, -inf is clipped


def test_the_scorer_fails_only_the_request_with_a_non_finite_feature(criteo_trained):
    pipeline = criteo_trained["pipeline"]
    model = TorchScorerModel(pipeline.scorer_dir)
    dense, embeddings = criteo_trained["dense"][:6], np.zeros((6, 26, 16), np.float32)
    bad = dense.copy()
    bad[4, 2] = np.inf
    requests = [
        {"dense": dense[:4], "embeddings": embeddings[:4]},
        {"dense": bad[3:6], "embeddings": embeddings[3:6]},
        {"dense": dense[4:6], "embeddings": embeddings[4:6]},
    ]
    results = model.execute(requests)
    assert isinstance(results[1], RequestError)
    assert "row(s) [1]: input 'dense' row 1 feature 2 ('I3') is inf: features must be finite" in str(results[1])
    for i in (0, 2):
        alone = model.execute([requests[i]])[0]["probability"]
        assert torch.isfinite(results[i]["probability"]).all()
        torch.testing.assert_close(results[i]["probability"], alone, atol=1e-6, rtol=0)


def test_a_nan_from_finite_inputs_is_the_models_fault(tmp_path):
    class Sqrt(torch.nn.Module):
        def forward(self, dense: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
            return torch.sqrt(dense[:, :1]) + embeddings.sum(dim=(1, 2)).unsqueeze(1) * 0

    save_scorer(tmp_path / "scorer", Sqrt(), ScorerInfo("f" * 32, ("a",), {"a": 3}, 2, 4))
    model = TorchScorerModel(tmp_path / "scorer")
    results = model.execute([{"dense": np.array([[4.0, 0], [-1.0, 0]], np.float32), "embeddings": np.zeros((2, 1, 4), np.float32)},
                             {"dense": np.array([[9.0, 0]], np.float32), "embeddings": np.zeros((1, 1, 4), np.float32)}])
    assert isinstance(results[0], NonFiniteScoreError)
    assert "non-finite probability for row(s) [1] from finite inputs" in str(results[0])
    assert float(results[1]["probability"][0, 0]) == 3.0


@pytest.fixture(scope="module")
def served(criteo_trained, tmp_path_factory, start_server):
    import tritonclient.grpc as grpcclient

    from tritonrec.export import export_ensemble

    pipeline = criteo_trained["pipeline"]
    repo = tmp_path_factory.mktemp("nonfinite") / "repo"
    export_ensemble(pipeline.workflow_dir, pipeline.store_dir, pipeline.scorer_dir, repo, "criteo", max_batch_size=64)
    with start_server(repo) as server:
        yield {"client": grpcclient.InferenceServerClient(server.grpc_url), "server": server}


@pytest.mark.triton
def test_a_served_infinity_is_a_named_client_error_and_other_rows_are_served(served, criteo_trained):
    from tritonclient.utils import InferenceServerException

    from tritonrec.serving.client import infer

    model = TransformModel(criteo_trained["pipeline"].plan, "packed")
    good = pack_request(model, _rows_with(criteo_trained, "I5", criteo_trained["held_out"]["I5"][:4]))
    bad = {k: v.copy() for k, v in good.items()}
    bad["INPUT_FP32"][2, CONTINUOUS.index("I5")] = np.inf
    with pytest.raises(InferenceServerException, match=r"row\(s\) \[2\]: input 'dense' row 2 feature 4 \('I5'\) is inf") as error:
        infer(served["client"], "criteo", bad, ["probability"])
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    got = infer(served["client"], "criteo", good, ["probability"])["probability"]
    np.testing.assert_allclose(got.reshape(-1), criteo_trained["expected"][:4], atol=1e-5, rtol=0)


@pytest.mark.triton
def test_a_json_value_beyond_float32_is_a_named_client_error(served, criteo_trained):
    """1e39 in a JSON body becomes +inf in an FP32 tensor: HTTP 400 naming the feature, not a NaN."""
    model = TransformModel(criteo_trained["pipeline"].plan, "packed")
    tensors = pack_request(model, _rows_with(criteo_trained, "I1", criteo_trained["held_out"]["I1"][:1]))
    dense = tensors["INPUT_FP32"].tolist()
    dense[0][0] = "1e39"
    body = json.dumps({"inputs": [
        {"name": "INPUT_FP32", "shape": [1, 13], "datatype": "FP32", "data": dense},
        {"name": "INPUT_INT64", "shape": [1, 26], "datatype": "INT64", "data": tensors["INPUT_INT64"].tolist()},
    ]}).replace('"1e39"', "1e39").encode()
    request = urllib.request.Request(f"http://{served['server'].http_url}/v2/models/criteo/infer", data=body,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=30)
    assert error.value.code == 400
    assert "input 'dense' row 0 feature 0 ('I1') is inf" in json.loads(error.value.read())["error"]
