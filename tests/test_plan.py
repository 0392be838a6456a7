"""TransformPlan: persistence, damage detection, fingerprints and input checking."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tritonrec.integrity import write_manifest
from tritonrec.transform import PlanLoadError, TransformPlan, compile_workflow


@pytest.fixture(scope="module")
def plan_dir(criteo_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("plan")
    compile_workflow(criteo_small["dir"]).save(out / "plan")
    return out / "plan"


@pytest.fixture
def plan_copy(plan_dir, tmp_path):
    target = tmp_path / "plan"
    shutil.copytree(plan_dir, target)
    return target


def test_roundtrip_keeps_schema_fingerprint_and_results(plan_dir, criteo_small):
    compiled = compile_workflow(criteo_small["workflow"])
    loaded = TransformPlan.load(plan_dir)
    assert loaded.fingerprint == compiled.fingerprint
    assert loaded.input_schema == compiled.input_schema and loaded.output_schema == compiled.output_schema
    assert loaded.nvtabular_version == "23.08.00"
    held = criteo_small["held_out"]
    a, b = compiled.transform(held), loaded.transform(held)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_schema_is_the_workflows(plan_dir, criteo_small):
    plan = TransformPlan.load(plan_dir)
    workflow = criteo_small["workflow"]
    assert [c.name for c in plan.output_schema] == workflow.output_schema.column_names
    assert {c.name: c.dtype.name for c in plan.input_schema}["I1"] == "float32"
    assert {c.name: c.dtype.name for c in plan.output_schema}["C1"] == "int64"
    assert plan.packed_inputs == {"float32": [f"I{i}" for i in range(1, 14)], "int64": [f"C{i}" for i in range(1, 27)]}


def test_damaged_array_file_is_named(plan_copy):
    array = next((plan_copy / "arrays").glob("*.npy"))
    data = bytearray(array.read_bytes())
    data[-3] ^= 0xFF
    array.write_bytes(bytes(data))
    with pytest.raises(PlanLoadError, match=rf"{array.name}: damaged"):
        TransformPlan.load(plan_copy)


def test_truncated_array_file_is_named_even_without_checksums(plan_copy):
    array = next((plan_copy / "arrays").glob("*.npy"))
    array.write_bytes(array.read_bytes()[:100])
    with pytest.raises(PlanLoadError, match=rf"{array.name}: damaged array file"):
        TransformPlan.load(plan_copy, verify=False)


def test_missing_array_file_is_named(plan_copy):
    array = next((plan_copy / "arrays").glob("*.npy"))
    array.unlink()
    with pytest.raises(PlanLoadError, match=rf"{array.name}: missing"):
        TransformPlan.load(plan_copy)


def test_garbage_manifest_is_named(plan_copy):
    (plan_copy / "manifest.json").write_text("{not json")
    with pytest.raises(PlanLoadError, match=r"manifest.json: damaged manifest"):
        TransformPlan.load(plan_copy)


def test_missing_manifest(tmp_path):
    with pytest.raises(PlanLoadError, match=r"manifest.json: no such file"):
        TransformPlan.load(tmp_path)


def _edit_manifest(plan_dir, **changes):
    """Edits and re-seals the manifest: the checks behind the seal must hold on their own."""
    path = plan_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    write_manifest(path, manifest)


def test_other_nvtabular_version_is_refused(plan_copy):
    _edit_manifest(plan_copy, nvtabular_version="24.06.00")
    with pytest.raises(PlanLoadError, match=r"manifest.json: plan compiled for nvtabular '24.06.00'"):
        TransformPlan.load(plan_copy)


def test_other_format_version_is_refused(plan_copy):
    _edit_manifest(plan_copy, format_version=99)
    with pytest.raises(PlanLoadError, match=r"plan format version 99"):
        TransformPlan.load(plan_copy)


def test_edited_statistics_break_the_fingerprint(plan_copy):
    manifest = json.loads((plan_copy / "manifest.json").read_text())
    normalize = next(s for g in manifest["groups"] for s in g["steps"] if s["kind"] == "normalize")
    normalize["params"]["means"][0] += 1.0
    write_manifest(plan_copy / "manifest.json", manifest)  # re-sealed
    with pytest.raises(PlanLoadError, match=r"fingerprint .* does not match"):
        TransformPlan.load(plan_copy)


def test_manifest_with_missing_field_is_named(plan_copy):
    manifest = json.loads((plan_copy / "manifest.json").read_text())
    del manifest["groups"][0]["inputs"]
    write_manifest(plan_copy / "manifest.json", manifest)  # re-sealed
    with pytest.raises(PlanLoadError, match=r"manifest.json: damaged manifest \(KeyError"):
        TransformPlan.load(plan_copy)


# ---------------------------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def plan(plan_dir):
    return TransformPlan.load(plan_dir)


def _one_row(plan):
    return {c.name: np.zeros(1, dtype=c.dtype) for c in plan.input_schema}


def test_missing_column_is_named(plan):
    columns = _one_row(plan)
    del columns["C7"]
    with pytest.raises(KeyError, match=r"\['C7'\] missing"):
        plan.transform(columns)


def test_extra_column_is_named(plan):
    with pytest.raises(ValueError, match=r"unexpected input column\(s\) \['label'\]"):
        plan.transform({**_one_row(plan), "label": np.zeros(1)})


def test_wrong_dtype_is_named(plan):
    columns = _one_row(plan)
    columns["C3"] = columns["C3"].astype(np.float64)
    with pytest.raises(TypeError, match=r"'C3' has dtype float64: expected int64"):
        plan.transform(columns)


def test_safe_casts_are_accepted(plan):
    columns = _one_row(plan)
    columns["C3"] = columns["C3"].astype(np.int32)
    assert plan.transform(columns)["C3"].dtype == np.int64


def test_wrong_shape_is_named(plan):
    columns = _one_row(plan)
    columns["I2"] = np.zeros((1, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=r"'I2' has shape \(1, 2\)"):
        plan.transform(columns)


def test_ragged_columns_are_refused(plan):
    columns = _one_row(plan)
    columns["I2"] = np.zeros(2, dtype=np.float32)
    with pytest.raises(ValueError, match="different lengths"):
        plan.transform(columns)


def test_zero_rows_give_empty_outputs_of_the_right_dtype(plan):
    out = plan.transform({c.name: np.zeros(0, dtype=c.dtype) for c in plan.input_schema})
    assert all(out[c.name].shape == (0,) and out[c.name].dtype == c.dtype for c in plan.output_schema)
    packed = plan.transform_packed({d: np.zeros((0, len(n)), dtype=d) for d, n in plan.packed_inputs.items()})
    assert {d: a.shape for d, a in packed.items()} == {"float32": (0, 13), "int64": (0, 26)}


def test_packed_inputs_are_checked(plan):
    good = {d: np.zeros((2, len(n)), dtype=d) for d, n in plan.packed_inputs.items()}
    with pytest.raises(ValueError, match=r"packed input 'int64' has shape \(2, 25\): expected \(n, 26\)"):
        plan.transform_packed({**good, "int64": np.zeros((2, 25), dtype=np.int64)})
    with pytest.raises(TypeError, match=r"packed input 'float32' has dtype float64"):
        plan.transform_packed({**good, "float32": np.zeros((2, 13))})
    with pytest.raises(KeyError, match=r"packed input\(s\) \['int64'\] missing"):
        plan.transform_packed({"float32": good["float32"]})
    with pytest.raises(ValueError, match="different numbers of rows"):
        plan.transform_packed({**good, "int64": np.zeros((3, 26), dtype=np.int64)})


def test_nan_and_inf_follow_nvtabular(plan, criteo_small):
    from tritonrec.pipeline.workflow import nvtabular_transform

    columns = {c: v[:4].copy() for c, v in criteo_small["held_out"].items()}
    columns["I1"][:] = [np.nan, np.inf, -np.inf, 5.0]
    expected = nvtabular_transform(criteo_small["workflow"], columns)["I1"]
    got = plan.transform(columns)["I1"]
    np.testing.assert_array_equal(got, expected)  # NaN -> fill 0, +inf stays inf, -inf clipped to 0
    assert np.isinf(got[1]) and got[0] == got[2]


def test_table_of_another_hash_is_refused(plan_copy):
    manifest = json.loads((plan_copy / "manifest.json").read_text())
    categorify = next(s for g in manifest["groups"] for s in g["steps"] if s["kind"] == "categorify")
    categorify["params"]["table_hash"] = "splitmix64"
    write_manifest(plan_copy / "manifest.json", manifest)  # re-sealed
    with pytest.raises(PlanLoadError, match=r"manifest.json: categorify table built with hash 'splitmix64'.*re-export the plan"):
        TransformPlan.load(plan_copy)
