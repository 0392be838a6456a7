"""compile_workflow refuses what it cannot reproduce, naming the op and the column."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tritonrec.pipeline.workflow import fit_workflow
from tritonrec.transform import UnsupportedOpError, compile_workflow


def _fit(graph, tmp_path, columns):
    import nvtabular as nvt

    rng = np.random.default_rng(0)
    data = {c: rng.integers(0, 20, size=200).astype(np.int64) for c in columns}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_workflow(nvt.Workflow(graph), data, columns, tmp_path)


def test_unsupported_op_is_named_with_its_column(tmp_path):
    from nvtabular import ops

    workflow = _fit(["a"] >> ops.DifferenceLag("b"), tmp_path, ["a", "b"])
    with pytest.raises(UnsupportedOpError, match=r"cannot compile op DifferenceLag on column 'a'"):
        compile_workflow(workflow)


def test_options_of_the_numeric_ops_that_cannot_be_reproduced_are_refused(tmp_path):
    from nvtabular import ops

    cases = [
        (["a"] >> ops.FillMedian(add_binary_cols=True), r"FillMedian on column 'a': add_binary_cols"),
        (["a"] >> ops.Bucketize([5.0, 1.0]), r"Bucketize on column 'a': boundaries \[5.0, 1.0\] are not increasing"),
    ]
    for i, (graph, message) in enumerate(cases):
        workflow = _fit(graph, tmp_path / str(i), ["a"])
        with pytest.raises(UnsupportedOpError, match=message):
            compile_workflow(workflow)


def test_crosses_of_crosses_and_ops_after_a_cross_are_refused(tmp_path):
    from nvtabular import ops

    workflow = _fit((["a", "b"] >> ops.HashedCross(10)) + ["c"] >> ops.HashedCross(5), tmp_path / "1", ["a", "b", "c"])
    with pytest.raises(UnsupportedOpError, match=r"HashedCross on column 'a_X_b_X_c': column 'a_X_b' is itself a cross"):
        compile_workflow(workflow)
    workflow = _fit(["a", "b"] >> ops.HashedCross(10) >> ops.Categorify(), tmp_path / "2", ["a", "b"])
    with pytest.raises(UnsupportedOpError, match=r"HashedCross on column 'a_X_b': ops after a HashedCross are not supported"):
        compile_workflow(workflow)


def test_normalize_minmax_of_a_narrow_integer_column_is_refused(tmp_path):
    import nvtabular as nvt
    from nvtabular import ops

    data = {"a": np.arange(100, dtype=np.int32)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow = fit_workflow(nvt.Workflow(["a"] >> ops.NormalizeMinMax()), data, ["a"], tmp_path)
    with pytest.raises(UnsupportedOpError, match=r"NormalizeMinMax on column 'a': input dtype int32"):
        compile_workflow(workflow)


def test_lambda_op_is_refused(tmp_path):
    from nvtabular import ops

    workflow = _fit(["a"] >> ops.LambdaOp(lambda col: col + 1), tmp_path, ["a"])
    with pytest.raises(UnsupportedOpError, match=r"cannot compile op (LambdaOp|UDF) on column 'a'"):
        compile_workflow(workflow)


def test_fill_missing_with_indicator_columns_is_refused(tmp_path):
    from nvtabular import ops

    workflow = _fit(["a"] >> ops.FillMissing(add_binary_cols=True), tmp_path, ["a"])
    with pytest.raises(UnsupportedOpError, match=r"FillMissing on column 'a': add_binary_cols"):
        compile_workflow(workflow)


def test_joint_multi_column_categorify_is_refused(tmp_path):
    from nvtabular import ops

    workflow = _fit([["a", "b"]] >> ops.Categorify(encode_type="joint"), tmp_path, ["a", "b"])
    with pytest.raises(UnsupportedOpError, match=r"Categorify on column '(a|b)': multi-column"):
        compile_workflow(workflow)


def test_single_table_categorify_is_refused(tmp_path):
    from nvtabular import ops

    workflow = _fit(["a"] >> ops.Categorify(single_table=True), tmp_path, ["a"])
    with pytest.raises(UnsupportedOpError, match=r"Categorify on column 'a': single_table=True"):
        compile_workflow(workflow)


def test_not_a_workflow(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved nvtabular workflow"):
        compile_workflow(tmp_path)
    with pytest.raises(TypeError, match="expected an nvtabular.Workflow"):
        compile_workflow(42)


def test_saved_directory_and_object_compile_alike(criteo_small):
    assert compile_workflow(criteo_small["dir"]).fingerprint == compile_workflow(criteo_small["workflow"]).fingerprint


def test_fingerprint_changes_with_the_statistics(tmp_path, criteo_small):
    from tritonrec.pipeline.synthetic import CATEGORICAL, CONTINUOUS, CriteoGenerator
    from tritonrec.pipeline.workflow import criteo_workflow

    from conftest import SMALL_SHAPE

    other = CriteoGenerator(SMALL_SHAPE).sample(5_000, seed=99)
    refit = fit_workflow(criteo_workflow(), other, CONTINUOUS + CATEGORICAL, tmp_path)
    assert compile_workflow(refit).fingerprint != compile_workflow(criteo_small["workflow"]).fingerprint


@pytest.mark.parametrize(("options", "values"), [
    ({"freq_threshold": 3}, [1, 1, 2, 3, 4]),  # no value reaches the threshold
    ({"freq_threshold": 3}, ["x", "y", "z", "x"]),
    ({"num_buckets": 10, "max_size": 12}, ["x", "y", "z", "x"]),  # NVTabular's test_categorify_hash_bucket_only
    ({"freq_threshold": 3, "num_buckets": 5}, [1, 2, 3, 1]),
], ids=["int-threshold", "str-threshold", "str-hash-buckets-only", "int-threshold-buckets"])
def test_categorify_with_an_empty_vocabulary_compiles_and_matches_nvtabular(tmp_path, options, values):
    """A fitted vocabulary can be empty: every value is then out of vocabulary (or hashed into a
    bucket). NVTabular serves that; compile_workflow used to crash on it."""
    import nvtabular as nvt
    from nvtabular import ops

    from tritonrec.pipeline.workflow import nvtabular_transform
    from tritonrec.transform.parity import compare

    dtype = object if isinstance(values[0], str) else np.int64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow = fit_workflow(nvt.Workflow(["a"] >> ops.Categorify(**options)), {"a": np.array(values, dtype=dtype)}, ["a"], tmp_path)
    plan = compile_workflow(workflow)
    unseen = ["w", "x", "q", "y", "z", "zz"] if dtype is object else [1, 2, 3, 4, 5, -7]
    for batch in (values, unseen, unseen[:1]):
        columns = {"a": np.array(batch, dtype=dtype)}
        report = compare(nvtabular_transform(workflow, columns), plan.transform(columns))
        assert report.ok, report.summary()


def _parity(workflow, columns, sizes=(200, 1, 2, 0)):
    """The plan's outputs equal NVTabular's for the first n rows of ``columns``, n in ``sizes``."""
    from tritonrec.pipeline.workflow import nvtabular_transform
    from tritonrec.transform.parity import compare

    plan = compile_workflow(workflow)
    used = [c.name for c in plan.input_schema]  # the plan takes the inputs its outputs need
    for n in sizes:
        if n == 0:  # NVTabular cannot transform an empty frame: the plan's answer is empty columns
            assert all(v.shape[0] == 0 for v in plan.transform({c: columns[c][:0] for c in used}).values())
            continue
        batch = {c: v[:n] for c, v in columns.items()}
        report = compare(nvtabular_transform(workflow, batch), plan.transform({c: batch[c] for c in used}))
        assert report.ok, report.summary()
    return plan


@pytest.mark.parametrize("graph", [
    lambda ops: ["a"] >> ops.Categorify() >> ops.AddTags(["categorical"]),
    lambda ops: ["a"] >> ops.Categorify() >> ops.TagAsItemID(),
    lambda ops: ["a"] >> ops.Categorify() >> ops.TagAsUserFeatures(),
    lambda ops: ["b"] >> ops.AddMetadata(tags=["continuous"]) >> ops.LogOp(),
    lambda ops: ["b"] >> ops.AddProperties({"domain": {"min": 0}}),
    lambda ops: (["a", "b"] >> ops.Categorify())["a"],  # column selection: SubsetColumns
], ids=["AddTags", "TagAsItemID", "TagAsUserFeatures", "AddMetadata", "AddProperties", "node[col]"])
def test_schema_only_ops_compile_to_nothing(tmp_path, graph):
    from nvtabular import ops

    rng = np.random.default_rng(1)
    columns = {"a": rng.integers(0, 30, 200).astype(np.int64), "b": rng.integers(0, 30, 200).astype(np.int64)}
    workflow = _fit(graph(ops), tmp_path, ["a", "b"])
    plan = _parity(workflow, columns)
    assert all(s.kind != "add_tags" for g in plan.groups for s in g.steps)


def test_lambda_op_is_named_as_such_with_the_reason(tmp_path):
    from nvtabular import ops

    workflow = _fit(["a"] >> ops.LambdaOp(lambda col: col + 1), tmp_path, ["a"])
    with pytest.raises(UnsupportedOpError, match=r"cannot compile op LambdaOp on column 'a': it runs Python the plan cannot read"):
        compile_workflow(workflow)


@pytest.mark.parametrize("options", [{"encode_type": "combo"}, {"split_out": 2}, {"split_out": 3, "dtype": "int32"}],
                         ids=["combo-on-one-column", "split_out-2", "split_out-3-int32"])
def test_categorify_options_whose_codes_equal_the_defaults_compile(tmp_path, options):
    """NVTabular's own tests check these give what encode_type="joint", split_out=1 give."""
    from nvtabular import ops

    rng = np.random.default_rng(2)
    columns = {"a": rng.integers(0, 50, 200).astype(np.int64)}
    _parity(_fit(["a"] >> ops.Categorify(**options), tmp_path, ["a"]), columns)


def test_target_encoding_that_keeps_its_folds_is_refused_with_the_reason(tmp_path):
    import nvtabular as nvt
    from nvtabular import ops

    rng = np.random.default_rng(3)
    data = {"a": rng.integers(0, 20, 200).astype(np.int64), "y": rng.integers(0, 2, 200).astype(np.int64)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow = fit_workflow(nvt.Workflow(["a"] >> ops.TargetEncoding(["y"], drop_folds=False)), data, ["a", "y"], tmp_path)
    with pytest.raises(UnsupportedOpError, match=r"TargetEncoding on column '(__fold__|TE_a_y)': drop_folds=False adds the '__fold__'"):
        compile_workflow(workflow)


def test_fitting_writes_the_statistics_beside_the_workflow_not_in_the_working_directory(tmp_path, monkeypatch):
    from nvtabular import ops

    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    _fit(["a"] >> ops.Categorify() >> ops.TargetEncoding(["b"]), tmp_path / "workflow", ["a", "b"])
    assert list((tmp_path / "cwd").iterdir()) == []
    assert (tmp_path / "workflow" / "categories").is_dir()
