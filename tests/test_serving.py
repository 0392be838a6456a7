"""TransformModel without Triton: tensor specs, request checks, batching of several requests."""

from __future__ import annotations

import numpy as np
import pytest

from tritonrec.transform import compile_workflow
from tritonrec.transform.parity import compare
from tritonrec.serving.client import pack_request, unpack_response
from tritonrec.serving.requests import RequestError
from tritonrec.serving.transform_model import TransformModel


@pytest.fixture(scope="module")
def plan(criteo_small):
    return compile_workflow(criteo_small["workflow"])


@pytest.fixture(params=["per-column", "packed"])
def model(request, plan):
    return TransformModel(plan, request.param, max_batch_size=100)


def _rows(held, start, n):
    return {c: v[start : start + n] for c, v in held.items()}


def test_specs_follow_the_layout(plan):
    per_column = TransformModel(plan, "per-column")
    assert [(s.name, s.triton_dtype, s.dims) for s in per_column.inputs[:2]] == [("I1", "FP32", (1,)), ("I2", "FP32", (1,))]
    assert len(per_column.inputs) == 39 and len(per_column.outputs) == 39
    packed = TransformModel(plan, "packed")
    assert [(s.name, s.triton_dtype, s.dims) for s in packed.inputs] == [("INPUT_FP32", "FP32", (13,)), ("INPUT_INT64", "INT64", (26,))]
    assert [(s.name, s.triton_dtype, s.dims) for s in packed.outputs] == [("OUTPUT_FP32", "FP32", (13,)), ("OUTPUT_INT64", "INT64", (26,))]


def test_unknown_layout(plan):
    with pytest.raises(ValueError, match="layout 'wide'"):
        TransformModel(plan, "wide")


def test_several_requests_equal_each_alone(model, plan, criteo_small):
    held = criteo_small["held_out"]
    requests = [pack_request(model, _rows(held, s, n)) for s, n in ((0, 5), (5, 1), (6, 40))]
    together = model.execute(requests)
    for request, result in zip(requests, together):
        alone = model.execute([request])[0]
        assert set(result) == {s.name for s in model.outputs}
        for name in result:
            np.testing.assert_array_equal(result[name], alone[name])
            assert result[name].flags.c_contiguous and result[name].flags.writeable
    got = unpack_response(model, together[2])
    assert compare(plan.transform(_rows(held, 6, 40)), got).ok


def test_bad_request_is_rejected_alone(model, criteo_small):
    held = criteo_small["held_out"]
    good = pack_request(model, _rows(held, 0, 3))
    name = model.inputs[-1].name
    wrong_dtype = {**good, name: good[name].astype(np.float64)}
    missing = {k: v for k, v in good.items() if k != name}
    extra = {**good, "EXTRA": good[name]}
    wrong_shape = {**good, name: np.zeros((3, 7), dtype=good[name].dtype)}
    too_many = pack_request(model, _rows(held, 0, 101))
    ragged = {**good, name: good[name][:2]}
    results = model.execute([wrong_dtype, good, missing, extra, wrong_shape, too_many, ragged])
    assert isinstance(results[1], dict)
    messages = [str(r) for r in results if isinstance(r, RequestError)]
    assert len(messages) == 6
    assert f"input '{name}' has dtype FP64: expected INT64" in messages[0]
    assert f"missing input(s) ['{name}']" in messages[1]
    assert "unexpected input(s) ['EXTRA']" in messages[2]
    assert f"input '{name}' has shape [3, 7]" in messages[3]
    assert "request has 101 rows: the maximum batch size is 100" in messages[4]
    assert f"input '{name}' has 2 rows, other inputs have 3" in messages[5]


def test_zero_row_request(model):
    request = {s.name: np.zeros((0, *s.dims), dtype=s.dtype) for s in model.inputs}
    (result,) = model.execute([request])
    assert all(result[s.name].shape == (0, *s.dims) for s in model.outputs)
