"""List (multi-hot) columns: Categorify, ListSlice, LogOp, Rename and ValueCount on list columns equal
nvtabular's own Workflow.transform (CPU), alone and chained; the transform model carries them as
padded values + lengths (Triton batching) or flat values + offsets (max_batch_size 0); bad lists get
named errors and the other requests of the execute are still served."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tritonrec.serving.client import pack_request, unpack_response
from tritonrec.serving.requests import RequestError
from tritonrec.serving.transform_model import TransformModel
from tritonrec.transform import TransformPlan, compile_workflow
from tritonrec.transform.compile import UnsupportedOpError
from tritonrec.transform.ops import ListSlice
from tritonrec.transform.plan import ListColumn


def to_list_column(rows: list[list[int]], dtype=np.int64) -> ListColumn:
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    values = np.concatenate([np.asarray(r, dtype=dtype) for r in rows]) if rows else np.zeros(0, dtype=dtype)
    return ListColumn(values.astype(dtype), offsets)


def rows_of(column: ListColumn) -> list[np.ndarray]:
    return [np.asarray(column.values[column.offsets[i] : column.offsets[i + 1]]) for i in range(len(column))]


def _random_rows(rng: np.random.Generator, n: int, high: int, max_len: int) -> list[list[int]]:
    return [list(rng.integers(0, high, rng.integers(0, max_len + 1))) for _ in range(n)]


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 9), max_size=40), start=st.integers(-12, 12), end=st.one_of(st.none(), st.integers(-12, 12)),
       pad=st.booleans())
def test_list_slice_is_python_slicing(lengths, start, end, pad):
    import nvtabular as nvt
    from hypothesis import assume

    op = nvt.ops.ListSlice(start, end, pad=pad, pad_value=-1)
    assume(not pad or op.max_elements <= 64)  # an open end pads to 2**63 values: compile refuses it
    rows = [list(range(100 * i, 100 * i + n)) for i, n in enumerate(lengths)]
    step = ListSlice(op.start, op.end, op.pad, op.pad_value, op.max_elements)
    column = to_list_column(rows)
    values, offsets = step.apply_list(column.values.reshape(-1, 1), column.offsets, np)
    got = rows_of(ListColumn(values.reshape(-1), offsets))
    for row, out in zip(rows, got):
        want = row[op.start : op.end]
        if pad and len(want) < op.max_elements:
            want = want + [-1] * (op.max_elements - len(want))
        assert out.tolist() == want


WORKFLOWS = {
    "categorify": lambda ops: (["tags"] >> ops.Categorify()) + (["x"] >> ops.Categorify()),
    "frequent": lambda ops: ["tags"] >> ops.Categorify(freq_threshold=3, dtype=np.int32),
    "slices": lambda ops: (["tags"] >> ops.ListSlice(-2) >> ops.Rename(postfix="_last"))
    + (["tags"] >> ops.ListSlice(1, 3) >> ops.Rename(postfix="_mid")) + (["tags"] >> ops.ListSlice(-3, -1)),
    "pad_then_encode": lambda ops: ["tags"] >> ops.ListSlice(3, pad=True, pad_value=7) >> ops.Categorify(),
    "encode_then_slice": lambda ops: (["tags"] >> ops.Categorify() >> ops.ListSlice(-2) >> ops.ValueCount()) + ["x"],
    "log": lambda ops: (["tags"] >> ops.LogOp()) + (["x"] >> ops.LogOp()),
}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    import nvtabular as nvt
    from merlin.io import Dataset

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"tags": _random_rows(rng, 600, 40, 6), "x": rng.integers(0, 20, 600)})
    out = {}
    for name, build in WORKFLOWS.items():
        workflow = nvt.Workflow(build(nvt.ops))
        for node in _nodes(workflow.output_node):
            if type(node.op).__name__ == "Categorify":
                node.op.out_path = str(tmp_path_factory.mktemp(name))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            workflow.fit(Dataset(frame, cpu=True))
        plan = compile_workflow(workflow)
        path = plan.save(tmp_path_factory.mktemp(f"{name}_plan"))
        out[name] = (workflow, TransformPlan.load(path))
    return out


def _nodes(node):
    found = [node]
    for parent in node.parents_with_dependencies:
        found += _nodes(parent)
    return found


def _reference(workflow, frame: pd.DataFrame) -> pd.DataFrame:
    from merlin.io import Dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return workflow.transform(Dataset(frame, cpu=True)).to_ddf().compute()


def _assert_same(plan: TransformPlan, got: dict, want: pd.DataFrame) -> None:
    assert list(got) == list(want.columns)
    for spec in plan.output_schema:
        if spec.is_list:
            assert isinstance(got[spec.name], ListColumn) and got[spec.name].values.dtype == spec.dtype
            expected = [np.asarray(v) for v in want[spec.name]]
            produced = rows_of(got[spec.name])
            assert len(produced) == len(expected), spec.name
            for i, (a, b) in enumerate(zip(produced, expected)):
                np.testing.assert_array_equal(a, b.astype(spec.dtype), err_msg=f"{spec.name} row {i}")
        else:
            np.testing.assert_array_equal(got[spec.name], want[spec.name].to_numpy(), err_msg=spec.name)


@pytest.mark.parametrize("name", [n for n in WORKFLOWS if n != "encode_then_slice"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(0, 300), seed=st.integers(0, 2**32 - 1), max_len=st.integers(0, 9))
def test_list_parity(fitted, name, n, seed, max_len):
    workflow, plan = fitted[name]
    rng = np.random.default_rng(seed)
    rows = _random_rows(rng, n, 60, max_len)  # ids 40..59 never seen in the fit
    frame = pd.DataFrame({"tags": rows, "x": rng.integers(0, 30, n)})
    if n == 0:
        frame = frame.astype({"x": np.int64})
    columns = {c.name: (to_list_column(rows) if c.is_list else frame[c.name].to_numpy()) for c in plan.input_schema}
    got = plan.transform(columns)
    if n:
        _assert_same(plan, got, _reference(workflow, frame[[c.name for c in plan.input_schema]]))
    else:
        assert all(len(v) == 0 for v in got.values())


def test_padding_after_categorify_pads_as_documented(fitted, tmp_path):
    """nvtabular 23.08's CPU ListSlice pads only rows that are Python lists, not the numpy arrays
    Categorify leaves, so its own CPU output stays ragged there; the plan pads, as the op documents
    and its GPU path does (the one chain where the plan and nvtabular's CPU transform differ)."""
    import nvtabular as nvt
    from merlin.io import Dataset

    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"tags": _random_rows(rng, 200, 10, 5)})
    workflow = nvt.Workflow(["tags"] >> nvt.ops.Categorify(out_path=str(tmp_path)) >> nvt.ops.ListSlice(3, pad=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow.fit(Dataset(frame, cpu=True))
    plan = compile_workflow(workflow)
    test = [[1, 2], [], [3, 4, 5, 6]]
    got = rows_of(plan.transform({"tags": to_list_column(test)})["tags"])
    nvt_rows = [np.asarray(v) for v in _reference(workflow, pd.DataFrame({"tags": test}))["tags"]]
    assert [len(r) for r in got] == [3, 3, 3] and [len(r) for r in nvt_rows] == [2, 0, 3]
    for mine, theirs in zip(got, nvt_rows):
        np.testing.assert_array_equal(mine[: len(theirs)], theirs)
        assert (mine[len(theirs) :] == 0).all()


def test_encode_then_slice_and_scalar_columns_beside_lists(fitted):
    workflow, plan = fitted["encode_then_slice"]
    assert [(c.name, c.is_list) for c in plan.output_schema] == [("tags", True), ("x", False)]
    rng = np.random.default_rng(5)
    rows = _random_rows(rng, 100, 60, 8)
    frame = pd.DataFrame({"tags": rows, "x": rng.integers(0, 30, 100)})
    got = plan.transform({"tags": to_list_column(rows), "x": frame["x"].to_numpy()})
    _assert_same(plan, got, _reference(workflow, frame))
    packed = plan.transform_packed({"int64": frame[["x"]].to_numpy(), "tags": to_list_column(rows)})
    assert np.array_equal(packed["int64"][:, 0], got["x"]) and np.array_equal(packed["tags"].values, got["tags"].values)


def test_ops_on_lists_that_are_refused_by_name(tmp_path):
    import nvtabular as nvt
    from merlin.io import Dataset
    from nvtabular import ops

    frame = pd.DataFrame({"tags": _random_rows(np.random.default_rng(2), 100, 10, 4), "x": np.arange(100)})
    cases = [
        (["tags"] >> ops.Categorify(num_buckets=5), "Categorify", "num_buckets=5 on a list column"),
        (["tags"] >> ops.HashBucket(5), "HashBucket", "not supported on list column"),
        (["tags"] >> ops.Normalize(), "Normalize", "not supported on list column"),
        (["tags", "x"] >> ops.HashedCross(5), "HashedCross", "not supported on list column"),
        (["x"] >> ops.ListSlice(2), "ListSlice", "not a list"),
    ]
    for graph, op, reason in cases:
        workflow = nvt.Workflow(graph)
        for node in _nodes(workflow.output_node):
            if type(node.op).__name__ == "Categorify":
                node.op.out_path = str(tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                workflow.fit(Dataset(frame, cpu=True))
            except Exception:  # noqa: BLE001 - nvtabular itself cannot fit some of these; compile must still refuse
                pass
        with pytest.raises(UnsupportedOpError, match=reason) as e:
            compile_workflow(workflow)
        assert e.value.op == op


# ------------------------------------------------------------------------------------------ serving
@pytest.mark.parametrize("layout", ["per-column", "packed"])
@pytest.mark.parametrize("list_layout,max_batch_size", [("padded", 64), ("offsets", 0)])
def test_model_carries_lists_in_both_conventions(fitted, layout, list_layout, max_batch_size):
    workflow, plan = fitted["encode_then_slice"]
    model = TransformModel(plan, layout, max_batch_size, list_layout=list_layout)
    names = [s.name for s in model.inputs]
    second = "tags__lengths" if list_layout == "padded" else "tags__offsets"
    assert "tags__values" in names and second in names
    rng = np.random.default_rng(3)
    requests, expected = [], []
    for n in (5, 0, 17):
        rows = _random_rows(rng, n, 60, 6)
        columns = {"tags": to_list_column(rows), "x": rng.integers(0, 30, n)}
        requests.append(pack_request(model, columns))
        expected.append(plan.transform(columns))
    results = model.execute(requests)
    for result, want in zip(results, expected):
        got = unpack_response(model, result)
        assert [len(r) for r in rows_of(got["tags"])] == [len(r) for r in rows_of(want["tags"])]
        np.testing.assert_array_equal(got["tags"].values, want["tags"].values)
        np.testing.assert_array_equal(got["x"], want["x"])
    if list_layout == "padded":
        assert results[2]["tags__values"].shape == (17, 2) and results[2]["tags__lengths"].dtype == np.int32


def test_bad_lists_are_refused_by_name_and_the_rest_is_served(fitted):
    _, plan = fitted["encode_then_slice"]
    padded = TransformModel(plan, "per-column", 64, list_layout="padded")
    good = pack_request(padded, {"tags": to_list_column([[1, 2], [3]]), "x": np.array([1, 2])})
    bad = [
        ({"tags__lengths": np.array([[3], [1]], dtype=np.int32)}, "row 0 has length 3: expected 0 .. 2"),
        ({"tags__lengths": np.array([[-1], [1]], dtype=np.int32)}, "row 0 has length -1"),
        ({"tags__lengths": np.array([[1]], dtype=np.int32)}, "expected [2, 1]"),
        ({"tags__values": np.array([1, 2], dtype=np.int64)}, "expected [batch, width]"),
        ({"tags__values": good["tags__values"].astype(np.int32)}, "dtype INT32: expected INT64"),
        ({"x": np.array([[1]])}, "has 2 rows, other inputs have 1"),
    ]
    for change, message in bad:
        results = padded.execute([{**good, **change}, good])
        assert isinstance(results[0], RequestError) and message in str(results[0]), (message, results[0])
        assert not isinstance(results[1], RequestError)
    flat = TransformModel(plan, "per-column", 0, list_layout="offsets")
    good = pack_request(flat, {"tags": to_list_column([[1, 2], [3]]), "x": np.array([1, 2])})
    bad = [
        ({"tags__offsets": np.array([0, 2, 1], dtype=np.int32)}, "offsets decrease at row 1"),
        ({"tags__offsets": np.array([0, 2, 5], dtype=np.int32)}, "offsets end at 5 but there are 3 values"),
        ({"tags__offsets": np.array([1, 2, 3], dtype=np.int32)}, "offsets start at 1"),
        ({"tags__offsets": np.array([0, 1, 2, 3], dtype=np.int32)}, "has 3 rows, other inputs have 2"),
    ]
    for change, message in bad:
        results = flat.execute([{**good, **change}, good])
        assert isinstance(results[0], RequestError) and message in str(results[0]), (message, results[0])
        assert not isinstance(results[1], RequestError)
    with pytest.raises(ValueError, match="flat values and offsets cannot be batched by Triton"):
        TransformModel(plan, "per-column", 64, list_layout="offsets")


def test_plan_transform_refuses_bad_list_columns(fitted):
    _, plan = fitted["encode_then_slice"]
    with pytest.raises(ValueError, match="list column 'tags': offsets decrease at row 1"):
        plan.transform({"tags": ListColumn(np.array([1, 2]), np.array([0, 2, 1, 2])), "x": np.array([1, 2, 3])})
    with pytest.raises(TypeError, match="input column 'tags' is a list column"):
        plan.transform({"tags": np.array([1, 2]), "x": np.array([1, 2])})
    with pytest.raises(ValueError, match="different lengths"):
        plan.transform({"tags": ListColumn(np.array([1, 2]), np.array([0, 2])), "x": np.array([1, 2])})


class _NotNumpy:
    """numpy under another name: takes the code path the plan uses for cupy."""

    def __getattr__(self, name):
        return getattr(np, name)


@settings(max_examples=100, deadline=None)
@given(lengths=st.lists(st.integers(0, 6), max_size=30), start=st.integers(-5, 5), end=st.integers(-5, 5), pad=st.booleans())
def test_the_array_module_path_without_numpy_specials(lengths, start, end, pad):
    from tritonrec.transform.ops import row_of_each_value

    counts = np.array(lengths, dtype=np.int64)
    np.testing.assert_array_equal(row_of_each_value(counts, _NotNumpy()), np.repeat(np.arange(counts.size), counts))
    step = ListSlice(start, end, pad, -1, max(end - start, 0))
    column = to_list_column([list(range(n)) for n in lengths])
    want = step.apply_list(column.values.reshape(-1, 1), column.offsets, np)
    got = step.apply_list(column.values.reshape(-1, 1), column.offsets, _NotNumpy())
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_categorify_with_given_vocabularies(tmp_path):
    """Categorify(vocabs=...) on an integer, a string and a list column equals nvtabular."""
    import nvtabular as nvt
    from merlin.io import Dataset

    rng = np.random.default_rng(4)
    n = 300
    frame = pd.DataFrame({
        "a": rng.integers(0, 30, n),
        "s": np.array([f"w{i}" for i in rng.integers(0, 20, n)], dtype=object),
        "tags": [list(rng.integers(0, 30, rng.integers(1, 5))) for _ in range(n)],
    })
    vocabs = {"a": pd.Series([5, 3, 9, 1]), "s": pd.Series(["w3", "w1", "w7"]), "tags": pd.Series([4, 2, 8, 29])}
    for column, vocab in vocabs.items():
        op = nvt.ops.Categorify(vocabs={column: vocab}, out_path=str(tmp_path / column))
        workflow = nvt.Workflow([column] >> op)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            workflow.fit(Dataset(frame, cpu=True))
        plan = compile_workflow(workflow)
        test = frame.head(80)
        given = to_list_column(list(test[column])) if column == "tags" else test[column].to_numpy()
        got = plan.transform({column: given})
        _assert_same(plan, got, _reference(workflow, test[[column]]))
        codes = got[column].values if column == "tags" else got[column]
        assert (codes > 2).any() and (codes == 2).any()  # both vocabulary codes and out-of-vocabulary


def test_the_ensemble_takes_list_outputs_only_as_multi_hot_codes(fitted, tmp_path):
    from tritonrec.export import export_ensemble

    with pytest.raises(ValueError, match=r"list output column\(s\) \['tags'\] are not int64 Categorify codes"):
        export_ensemble(fitted["log"][1], tmp_path / "store", tmp_path / "scorer", tmp_path / "repo", "e")
    with pytest.raises(ValueError, match=r"multi_hot_combiner 'max': expected 'sum' or 'mean', for each list output \['tags'\]"):
        export_ensemble(fitted["categorify"][1], tmp_path / "store", tmp_path / "scorer", tmp_path / "repo", "e", multi_hot_combiner="max")
    with pytest.raises(ValueError, match="for each list output"):
        export_ensemble(fitted["categorify"][1], tmp_path / "store", tmp_path / "scorer", tmp_path / "repo", "e", multi_hot_combiner={"x": "sum"})
    assert not (tmp_path / "repo").exists()


def test_out_of_vocabulary_values_of_list_columns_are_counted(fitted):
    """``oov_total`` (Triton's tritonrec_transform_oov_total) counts every out-of-vocabulary value
    of a list output, beside the scalar columns' rows."""
    _, plan = fitted["categorify"]
    first, end = plan.categorical_codes()["tags"][1:]
    for layout in ("per-column", "packed"):
        model = TransformModel(plan, layout, 64)
        rows = [[1, 2, 45], [], [50, 51, 3, 59]]  # ids 40..59 were never seen in the fit
        columns = {"tags": to_list_column(rows), "x": np.array([1, 2, 99])}
        out = plan.transform(columns)
        model.execute([pack_request(model, columns)] * 2)
        values = out["tags"].values
        assert model.oov_total["tags"] == 2 * int(((values >= first) & (values < end)).sum()) == 8
        assert model.oov_total["x"] == 2 * int(((out["x"] >= plan.categorical_codes()["x"][1]) & (out["x"] < plan.categorical_codes()["x"][2])).sum())
