"""The nvtabular_transform backend in a real tritonserver: parity in both layouts, bad inputs,
auto-complete, and the server serving on after every rejected request."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from tritonrec.serving.client import infer
from tritonrec.export import export_transform
from tritonrec.pipeline.workflow import nvtabular_transform
from tritonrec.transform import compile_workflow
from tritonrec.transform.parity import compare
from tritonrec.serving.client import pack_request, unpack_response
from tritonrec.serving.transform_model import TransformModel
from zoo import batch, fit_data, fit_zoo

pytestmark = pytest.mark.triton
MAX_BATCH = 1024


@pytest.fixture(scope="module")
def served(criteo_small, tmp_path_factory, start_server):
    import tritonclient.grpc as grpcclient

    repo = tmp_path_factory.mktemp("repo")
    plan = compile_workflow(criteo_small["workflow"])
    zoo_dir = tmp_path_factory.mktemp("zoo")
    zoo_workflow = fit_zoo(zoo_dir)
    zoo_plan = compile_workflow(zoo_workflow)
    models = {
        "criteo": TransformModel(plan, "per-column"),
        "criteo_packed": TransformModel(plan, "packed"),
        "zoo": TransformModel(zoo_plan, "per-column"),
    }
    for name, model in models.items():
        export_transform(model.plan, repo, name, layout=model.layout, max_batch_size=MAX_BATCH)
    # A hand-written config with no tensors: auto_complete_config fills them from the plan.
    plan.save(tmp_path_factory.mktemp("auto") / "plan")
    auto_plan = next(tmp_path_factory.getbasetemp().glob("auto*/plan"))
    (repo / "criteo_auto" / "1").mkdir(parents=True)
    (repo / "criteo_auto" / "config.pbtxt").write_text(
        'backend: "nvtabular_transform"\n'
        f'parameters {{ key: "plan" value: {{ string_value: "{auto_plan}" }} }}\n'
        'parameters { key: "allow_outside_repository" value: { string_value: "true" } }\n'
        'parameters { key: "layout" value: { string_value: "packed" } }\n'
    )
    with start_server(repo) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        yield {"client": client, "models": models, "server": server, "zoo_workflow": zoo_workflow}


def _serve(served, name, columns):
    model = served["models"][name]
    outputs = infer(served["client"], name, pack_request(model, columns), [s.name for s in model.outputs])
    return unpack_response(model, outputs)


@pytest.mark.parametrize("name", ["criteo", "criteo_packed"])
@pytest.mark.parametrize("rows", [1, 7, MAX_BATCH])
def test_parity_through_triton(served, criteo_small, name, rows):
    rng = np.random.default_rng(rows)
    columns = {c: v[rng.integers(0, 3000, size=rows)].copy() for c, v in criteo_small["held_out"].items()}
    columns["C5"][: rows // 2 + 1] = rng.integers(2**40, 2**50, size=rows // 2 + 1)  # unseen ids
    columns["I3"][:1] = np.nan
    expected = nvtabular_transform(criteo_small["workflow"], columns)
    report = compare(expected, _serve(served, name, columns))
    assert report.ok, report.summary()


def test_nulls_buckets_and_extremes_through_triton(served):
    columns = batch(300, 7, 0.5, 0.3, fit_data())
    guard = {c: np.array([1], dtype=v.dtype) for c, v in columns.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = nvtabular_transform(served["zoo_workflow"], {c: np.concatenate([v, guard[c]]) for c, v in columns.items()})
    expected = {c: v[:300] for c, v in expected.items()}
    report = compare(expected, _serve(served, "zoo", columns))
    assert report.ok, report.summary()


def test_auto_complete_fills_tensors_from_the_plan(served, criteo_small):
    config = served["client"].get_model_config("criteo_auto", as_json=True)["config"]
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"]] == [
        ("INPUT_FP32", "TYPE_FP32", [13]),
        ("INPUT_INT64", "TYPE_INT64", [26]),
    ]
    assert int(config["max_batch_size"]) == 16384
    columns = {c: v[:5] for c, v in criteo_small["held_out"].items()}
    packed_model = served["models"]["criteo_packed"]
    out = infer(served["client"], "criteo_auto", pack_request(packed_model, columns), ["OUTPUT_FP32", "OUTPUT_INT64"])
    assert compare(nvtabular_transform(criteo_small["workflow"], columns), unpack_response(packed_model, out)).ok


def _bad_requests(criteo_small):
    good = pack_request(TransformModel(compile_workflow(criteo_small["workflow"]), "packed"), {c: v[:4] for c, v in criteo_small["held_out"].items()})
    big = {k: np.repeat(v, MAX_BATCH // 4 + 1, axis=0) for k, v in good.items()}
    return good, [
        ({"INPUT_FP32": good["INPUT_FP32"]}, "missing required input(s) ['INPUT_INT64']"),
        ({**good, "EXTRA": good["INPUT_INT64"]}, "expected 2 inputs but got 3"),
        ({**good, "INPUT_FP32": good["INPUT_FP32"].astype(np.float64)}, "'INPUT_FP32' data-type is 'FP64', but model 'criteo_packed' expects 'FP32'"),
        ({**good, "INPUT_INT64": good["INPUT_INT64"][:, :25]}, "unexpected shape for input 'INPUT_INT64'"),
        ({**good, "INPUT_INT64": good["INPUT_INT64"][:3]}, "'INPUT_FP32' batch size does not match"),
        (big, f"batch-size must be <= {MAX_BATCH}"),
        ({k: v[:0] for k, v in good.items()}, "for input 'INPUT_"),
    ]


def test_bad_inputs_get_named_errors_and_the_server_keeps_serving(served, criteo_small):
    from tritonclient.utils import InferenceServerException

    client = served["client"]
    good, bad = _bad_requests(criteo_small)
    reference = infer(client, "criteo_packed", good, ["OUTPUT_FP32", "OUTPUT_INT64"])
    for tensors, message in bad:
        with pytest.raises(InferenceServerException) as error:
            infer(client, "criteo_packed", tensors, ["OUTPUT_FP32", "OUTPUT_INT64"])
        assert message in str(error.value)
        again = infer(client, "criteo_packed", good, ["OUTPUT_FP32", "OUTPUT_INT64"])
        np.testing.assert_array_equal(again["OUTPUT_INT64"], reference["OUTPUT_INT64"])
    assert client.is_model_ready("criteo_packed") and served["server"].is_running()


def test_nan_and_inf_are_transformed_not_refused(served, criteo_small):
    columns = {c: v[:3].copy() for c, v in criteo_small["held_out"].items()}
    columns["I1"][:] = [np.nan, np.inf, -np.inf]
    columns["I2"][:] = [3.4e38, -3.4e38, 0.0]
    expected = nvtabular_transform(criteo_small["workflow"], columns)
    for name in ("criteo", "criteo_packed"):
        assert compare(expected, _serve(served, name, columns)).ok


def test_exported_config_declares_what_the_server_reports(served):
    config = served["client"].get_model_config("criteo_packed", as_json=True)["config"]
    assert config["backend"] == "nvtabular_transform"
    assert int(config["max_batch_size"]) == MAX_BATCH
    assert "dynamic_batching" in config
    assert json.dumps(config["parameters"]["layout"]) == '{"string_value": "packed"}'
