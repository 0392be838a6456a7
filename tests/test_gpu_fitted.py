"""Workflows fitted on a GPU: nvtabular hashes with cudf's murmur3 there, so the hash-based ops
(HashBucket, HashedCross, Categorify with hash buckets) are refused by name; the rest compiles."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from tritonrec.pipeline.workflow import fit_workflow
from tritonrec.transform.compile import UnsupportedOpError, compile_workflow, fitted_on


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    import nvtabular as nvt
    from nvtabular import ops

    rng = np.random.default_rng(0)
    fit = {"a": rng.integers(0, 50, 1000), "b": rng.integers(0, 50, 1000), "c": rng.integers(0, 50, 1000)}
    out = {}
    graphs = {
        "plain": lambda: ["a", "b"] >> ops.Categorify(),
        "hash_bucket": lambda: (["a"] >> ops.Categorify()) + (["b"] >> ops.HashBucket(7)),
        "buckets": lambda: ["c"] >> ops.Categorify(num_buckets=5),
        "cross": lambda: ["a", "b"] >> ops.HashedCross(11),
    }
    for name, graph in graphs.items():
        path = tmp_path_factory.mktemp(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_workflow(nvt.Workflow(graph()), fit, list(fit), path)
        out[name] = path
    return out


def _as_if_saved_with_cudf(path, tmp_path):
    copy = tmp_path / path.name
    shutil.copytree(path, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["versions"]["cudf"] = "23.08.00"
    (copy / "metadata.json").write_text(json.dumps(meta))
    return copy


@pytest.mark.parametrize(("name", "op", "column"), [("hash_bucket", "HashBucket", "b"), ("buckets", "Categorify", "c"), ("cross", "HashedCross", "a_X_b")])
def test_hash_ops_of_a_gpu_fit_are_refused_by_name(saved, tmp_path, name, op, column):
    assert fitted_on(saved[name])[0] == "cpu"
    cpu_plan = compile_workflow(saved[name])
    gpu_saved = _as_if_saved_with_cudf(saved[name], tmp_path)
    assert fitted_on(gpu_saved) == ("gpu", f"{gpu_saved / 'metadata.json'} lists cudf 23.08.00")
    with pytest.raises(UnsupportedOpError, match="fitted on a GPU .*lists cudf 23.08.00.*murmur3.*hashing='cpu'") as e:
        compile_workflow(gpu_saved)
    assert (e.value.op, e.value.column) == (op, column)
    # the caller may say it ran on the CPU after all: the same plan as the CPU fit's
    assert compile_workflow(gpu_saved, hashing="cpu").fingerprint == cpu_plan.fingerprint


def test_a_gpu_fit_without_hashing_compiles(saved, tmp_path):
    assert compile_workflow(_as_if_saved_with_cudf(saved["plain"], tmp_path)).fingerprint == compile_workflow(saved["plain"]).fingerprint


def test_a_workflow_in_memory_is_judged_by_this_process(saved, monkeypatch):
    import importlib.util

    import nvtabular as nvt

    workflow = nvt.Workflow.load(str(saved["hash_bucket"]))
    assert fitted_on(workflow) == ("cpu", "cudf is not installed in this process")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "cudf" else real(name, *a))
    with pytest.raises(UnsupportedOpError, match="cudf is installed in this process"):
        compile_workflow(workflow)
    with pytest.raises(ValueError, match="hashing 'gpu': expected one of"):
        compile_workflow(workflow, hashing="gpu")


def test_cli_says_why_and_takes_hashing_cpu(saved, tmp_path, capsys):
    from tritonrec.cli import main

    gpu_saved = _as_if_saved_with_cudf(saved["hash_bucket"], tmp_path)
    args = ["export-transform", str(gpu_saved), str(tmp_path / "repo"), "--name", "t"]
    assert main(args) == 1
    assert "cannot compile op HashBucket on column 'b': the workflow was fitted on a GPU" in capsys.readouterr().err
    assert main([*args, "--hashing", "cpu"]) == 0
    assert (tmp_path / "repo" / "t" / "1" / "plan" / "manifest.json").is_file()
