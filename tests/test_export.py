"""export_transform: a model directory Triton can load, versions, and argument checks."""

from __future__ import annotations

import pytest

from tritonrec.export import export_transform, next_version
from tritonrec.transform import TransformPlan, compile_workflow


def test_export_writes_config_and_plan(criteo_small, tmp_path):
    model_dir = export_transform(criteo_small["dir"], tmp_path, "t", layout="packed", max_batch_size=512)
    config = (model_dir / "config.pbtxt").read_text()
    plan = TransformPlan.load(model_dir / "1" / "plan")
    assert 'backend: "nvtabular_transform"' in config
    assert "max_batch_size: 512" in config
    assert '{ name: "INPUT_INT64", data_type: TYPE_INT64, dims: [ 26 ] }' in config
    assert '{ name: "OUTPUT_FP32", data_type: TYPE_FP32, dims: [ 13 ] }' in config
    assert f'string_value: "{plan.fingerprint}"' in config
    assert 'string_value: "packed"' in config


def test_each_export_adds_a_version(criteo_small, tmp_path):
    plan = compile_workflow(criteo_small["workflow"])
    export_transform(plan, tmp_path, "t")
    export_transform(plan, tmp_path, "t")
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["1", "2", "config.pbtxt"]
    assert next_version(tmp_path / "t") == 3


def test_export_from_a_saved_plan(criteo_small, tmp_path):
    plan = compile_workflow(criteo_small["workflow"])
    plan.save(tmp_path / "saved")
    model_dir = export_transform(tmp_path / "saved", tmp_path / "repo", "t")
    assert TransformPlan.load(model_dir / "1" / "plan").fingerprint == plan.fingerprint


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"layout": "wide"}, "layout 'wide'"), ({"name": "a/b"}, "model name 'a/b'"), ({"max_batch_size": -1}, "max_batch_size -1"),
     ({"instance_kind": "GPU"}, "instance_kind 'GPU'")],
)
def test_bad_arguments(criteo_small, tmp_path, kwargs, message):
    args = {"name": "t", **kwargs}
    with pytest.raises(ValueError, match=message):
        export_transform(criteo_small["dir"], tmp_path, **args)
    assert not (tmp_path / "t").exists()


def test_gpu_instances_of_the_transform(criteo_small, tmp_path):
    model_dir = export_transform(criteo_small["dir"], tmp_path, "t", instance_kind="KIND_GPU")
    config = (model_dir / "config.pbtxt").read_text()
    assert "kind: KIND_GPU" in config and 'key: "FORCE_CPU_ONLY_INPUT_TENSORS" value: { string_value: "no" }' in config
    assert "kind: KIND_CPU" in (export_transform(criteo_small["dir"], tmp_path, "c").joinpath("config.pbtxt")).read_text()
