"""The helpers of the README's "Serve your own model": ``check_parity`` (the plan against
NVTabular's own transform, list columns included) and ``scorer_info`` (what a user's scorer is
saved with), checked on a workflow of an int, a string and a list column and two float columns."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from tritonrec.export import scorer_info, store_metadata
from tritonrec.transform import check_parity, compile_workflow


def _rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user": rng.integers(0, 60, n),
        "city": pd.Series(rng.choice(["paris", "köln", "tokyo", "lima"], n), dtype=object),
        # a non-empty first row: merlin infers a list column's dtype from it (compile_workflow says so otherwise)
        "genres": [rng.integers(0, 12, rng.integers(1 if i == 0 else 0, 4)) for i in range(n)],
        "price": rng.gamma(2.0, 10.0, n).astype(np.float32),
        "weight": rng.random(n),
    })


def _fit(rows: pd.DataFrame, path):
    import nvtabular as nvt
    from merlin.io import Dataset
    from nvtabular import ops

    graph = ((["user", "city"] >> ops.Categorify(out_path=str(path))) + (["genres"] >> ops.Categorify(out_path=str(path)))
             + (["price"] >> ops.LogOp()) + (["weight"] >> ops.Normalize()))  # Normalize without out_dtype: float64
    workflow = nvt.Workflow(graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow.fit(Dataset(rows, cpu=True))
    return workflow


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    base = tmp_path_factory.mktemp("byo")
    workflow = _fit(_rows(400, 0), base / "a")
    other = _fit(_rows(400, 1), base / "b")
    return workflow, compile_workflow(workflow), compile_workflow(other)


@pytest.mark.parametrize("n", [1, 2, 50])
def test_check_parity_is_exact_for_the_plan_and_counts_rows(fitted, n):
    workflow, plan, _ = fitted
    report = check_parity(workflow, _rows(n, 7), plan)
    assert report.ok, report.summary()
    assert report.rows == n
    assert report.columns == 6  # user, city, genres values and lengths, price, weight


def test_check_parity_catches_a_plan_of_other_statistics(fitted):
    workflow, _, other = fitted
    report = check_parity(workflow, _rows(200, 7), other)
    assert not report.ok
    assert {"user", "genres[values]", "weight"} <= set(report.mismatches), report.mismatches
    assert "MISMATCH" in report.summary()


def test_scorer_info_names_the_tables_in_slot_order_with_the_plan_sizes(fitted):
    _, plan, _ = fitted
    with pytest.raises(ValueError, match=r"float64: \['weight'\].*Normalize\(out_dtype=np.float32\)"):
        scorer_info(plan, 8)
    info = scorer_info(plan, 8, cast_float64=True, output="OUTPUT0")
    assert info.tables == ("user", "city", "genres")  # list columns take their slot in the output order
    assert info.table_sizes == store_metadata(plan)["table_sizes"]
    assert info.plan_fingerprint == plan.fingerprint
    assert (info.n_dense, info.dim, info.output) == (2, 8, "OUTPUT0")
    assert info.dense_features == ("price", "weight")
    assert [s.dims for s in info.inputs] == [(2,), (3, 8)]
