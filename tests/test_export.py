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


@pytest.mark.parametrize("command", ["export-transform", "export"])
def test_a_python_without_nvtabular_gets_one_line_saying_what_to_install(tmp_path, monkeypatch, capsys, command):
    import sys

    from tritonrec.cli import main

    (tmp_path / "workflow").mkdir()
    monkeypatch.setitem(sys.modules, "nvtabular", None)  # `import nvtabular` now raises ImportError
    extra = ["--store", str(tmp_path / "s"), "--scorer", str(tmp_path / "x")] if command == "export" else []
    args = [command, str(tmp_path / "workflow"), str(tmp_path / "repo"), "--name", "m", *extra]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"tritonrec {command}: compiling an NVTabular workflow needs nvtabular 23.08")
    assert "pip install -c requirements/constraints.txt 'tritonrec[training]'" in err


def test_a_saved_plan_exports_without_nvtabular(criteo_small, tmp_path, monkeypatch):
    import sys

    compile_workflow(criteo_small["workflow"]).save(tmp_path / "plan")
    monkeypatch.setitem(sys.modules, "nvtabular", None)
    export_transform(tmp_path / "plan", tmp_path / "repo", "m")
    assert TransformPlan.load(tmp_path / "repo" / "m" / "1" / "plan").fingerprint == TransformPlan.load(tmp_path / "plan").fingerprint


def test_every_option_of_every_command_says_what_it_is_and_its_default():
    import argparse

    from embedding_cache.cli import build_parser as cache_parser
    from tritonrec.cli import build_parser

    for top in (build_parser(), cache_parser()):
        commands = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices
        for name, parser in commands.items():
            undocumented = [a.dest for a in parser._actions if not a.help and not isinstance(a, argparse._HelpAction)]
            assert undocumented == [], f"{top.prog} {name}: {undocumented}"
            text = parser.format_help()
            for action in parser._actions:
                shown = action.default not in (None, False) and action.default is not argparse.SUPPRESS
                if shown and action.option_strings and "default" not in action.help:
                    assert f"(default: {action.default})" in " ".join(text.split()), f"{top.prog} {name} {action.dest}"
