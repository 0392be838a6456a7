"""HashedCross of columns of different dtypes (an int and a string, a float and an int) and of
transformed columns (Categorify, Normalize outputs) equals nvtabular's CPU transform: each source's
chain, then pandas' hash of its values with the row's index, XOR-ed, modulo the buckets."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tritonrec.pipeline.workflow import fit_workflow, nvtabular_transform
from tritonrec.transform import TransformPlan, compile_workflow
from tritonrec.serving.client import pack_request, unpack_response
from tritonrec.serving.transform_model import TransformModel

WORDS = np.array([f"w{i}" for i in range(50)] + ["", "é"], dtype=object)


def _columns(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 2, n).astype(np.float32)
    x[rng.random(n) < 0.1] = np.nan
    return {"i": rng.integers(0, 60, n), "j": rng.integers(-5, 5, n).astype(np.int64), "s": WORDS[rng.integers(0, WORDS.size, n)], "x": x}


@pytest.fixture(scope="module")
def crossed(tmp_path_factory):
    import nvtabular as nvt
    from nvtabular import ops

    out = tmp_path_factory.mktemp("crossed")
    graph = (
        (["i", "s"] >> ops.HashedCross(101))  # int x string
        + (["x", "j"] >> ops.HashedCross(37))  # float x int
        + (["i", "j"] >> ops.Categorify() >> ops.HashedCross(53))  # transformed codes
        + (["x"] >> ops.FillMissing(0.0) >> ops.Normalize() >> ops.Rename(postfix="_n"))
        + ["s"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow = fit_workflow(nvt.Workflow(graph), _columns(2000, 0), ["i", "j", "s", "x"], out)
    plan = compile_workflow(out)
    return workflow, TransformPlan.load(plan.save(out / "plan"))


def test_the_plan_has_hidden_hash_columns(crossed):
    _, plan = crossed
    assert [c.name for c in plan.hidden_schema][:2] == ["i_X_s/hash0", "i_X_s/hash1"]
    assert all(c.dtype == np.uint64 for c in plan.hidden_schema)
    assert {c.name: c.dtype.name for c in plan.output_schema}["i_X_s"] == "int32"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 2000), seed=st.integers(0, 2**32 - 1))
def test_crosses_equal_nvtabular(crossed, n, seed):
    workflow, plan = crossed
    columns = _columns(n, seed)
    expected = nvtabular_transform(workflow, columns)
    got = plan.transform(columns)
    assert list(got) == list(expected)
    for name, want in expected.items():
        np.testing.assert_array_equal(got[name], want, err_msg=name)


@pytest.mark.parametrize("layout", ["per-column", "packed"])
def test_crosses_through_the_model_in_both_layouts(crossed, layout):
    _, plan = crossed
    model = TransformModel(plan, layout, 4096)
    requests = [pack_request(model, _columns(n, n)) for n in (3, 500)]
    for request, result, n in zip(requests, model.execute(requests), (3, 500)):
        got = unpack_response(model, result)
        want = plan.transform(_columns(n, n))
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
