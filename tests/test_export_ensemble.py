"""export_ensemble and ``tritonrec export``: the repository layout, versions, and every refusal."""

from __future__ import annotations

import json
import re
import shutil
import textwrap

import pytest

from embedding_cache import GpuCacheOptions
from tritonrec.integrity import write_manifest
from tritonrec.cli import main
from tritonrec.serving.fingerprint import FingerprintMismatchError
from tritonrec.export import ServedScorer, export_ensemble


@pytest.fixture
def parts(criteo_trained):
    pipeline = criteo_trained["pipeline"]
    return pipeline.plan, pipeline.store_dir, pipeline.scorer_dir


def _served_scorer_config(repo, dims_embeddings="26, 16", name="onnx_ranker"):
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(textwrap.dedent(f'''
        name: "{name}"
        platform: "onnxruntime_onnx"
        max_batch_size: 1024
        input [ {{ name: "x_dense", data_type: TYPE_FP32, dims: [ 13 ] }},
                {{ name: "x_emb", data_type: TYPE_FP32, dims: [ {dims_embeddings} ] }} ]
        output [ {{ name: "y", data_type: TYPE_FP32, dims: [ 1 ] }} ]
    '''))


def test_export_writes_four_models_and_each_export_adds_versions(parts, tmp_path):
    plan, store, scorer = parts
    repo = tmp_path / "repo"
    export_ensemble(plan, store, scorer, repo, "rank")
    export_ensemble(plan, store, scorer, repo, "rank", layout="per-column")
    for model in ("rank", "rank_transform", "rank_embeddings", "rank_scorer"):
        assert sorted(p.name for p in (repo / model).iterdir()) == ["1", "2", "config.pbtxt"]
    assert (repo / "rank_embeddings" / "2" / "store" / "store.json").is_file()
    assert (repo / "rank_scorer" / "2" / "scorer" / "model.pt").is_file()
    config = (repo / "rank" / "config.pbtxt").read_text()
    assert 'platform: "ensemble"' in config and 'string_value: "per-column"' in config
    for step in ("rank_transform", "rank_embeddings", "rank_scorer"):
        assert re.search(rf'model_name: "{step}"\s+model_version: 2\b', config)
    assert '{ name: "I1", data_type: TYPE_FP32, dims: [ 1 ] }' in config
    transform = (repo / "rank_transform" / "config.pbtxt").read_text()
    assert 'key: "output_layout" value: { string_value: "packed" }' in transform
    lookup = (repo / "rank_embeddings" / "config.pbtxt").read_text()
    assert f'string_value: "{",".join(plan.packed_outputs["int64"])}"' in lookup
    assert 'dims: [ 26, 16 ]' in lookup


def test_a_served_scorer_is_chained_by_name(parts, tmp_path):
    plan, store, _ = parts
    repo = tmp_path / "repo"
    _served_scorer_config(repo)
    export_ensemble(plan, store, ServedScorer("onnx_ranker", "x_dense", "x_emb", "y"), repo, "rank")
    assert not (repo / "rank_scorer").exists()
    config = (repo / "rank" / "config.pbtxt").read_text()
    assert re.search(r'model_name: "onnx_ranker"\s+model_version: -1', config)
    assert 'input_map { key: "x_emb" value: "embeddings" }' in config and 'output_map { key: "y" value: "probability" }' in config


@pytest.mark.parametrize(
    ("scorer", "dims", "message"),
    [
        (ServedScorer("onnx_ranker", "x_dense", "x_emb", "y"), "26, 8", r"tensor 'x_emb' is FP32 \[26, 8\]; the chain needs FP32 \[26, 16\]"),
        (ServedScorer("onnx_ranker", "dense", "x_emb", "y"), "26, 16", r"has no tensor 'dense'"),
        (ServedScorer("onnx_ranker", "x_dense", "x_emb", "z"), "26, 16", r"has no tensor 'z'"),
    ],
)
def test_a_served_scorer_whose_tensors_do_not_chain_is_refused(parts, tmp_path, scorer, dims, message):
    plan, store, _ = parts
    repo = tmp_path / "repo"
    _served_scorer_config(repo, dims_embeddings=dims)
    with pytest.raises(ValueError, match=message):
        export_ensemble(plan, store, scorer, repo, "rank")
    assert sorted(p.name for p in repo.iterdir()) == ["onnx_ranker"]  # nothing written


def test_a_served_scorer_not_in_the_repository(parts, tmp_path):
    plan, store, _ = parts
    with pytest.raises(FileNotFoundError, match="the scoring model must be in the repository"):
        export_ensemble(plan, store, ServedScorer("absent", "a", "b", "c"), tmp_path, "rank")


def _edited(source, tmp_path, file, edit):
    copy = tmp_path / source.name
    shutil.copytree(source, copy)
    data = json.loads((copy / file).read_text())
    edit(data)
    (copy / file).unlink()  # may be a hard link to the source's file: replace, never edit in place
    write_manifest(copy / file, data)  # re-sealed: the checks behind the seal must hold on their own
    return copy


def test_parts_of_another_plan_are_refused_naming_both_fingerprints(parts, tmp_path):
    plan, store, scorer = parts
    other_store = _edited(store, tmp_path, "store.json", lambda d: d["metadata"].update(plan_fingerprint="ab" * 32))
    with pytest.raises(FingerprintMismatchError, match=f"fingerprint '{'ab' * 32}'.*fingerprint '{plan.fingerprint}'"):
        export_ensemble(plan, other_store, scorer, tmp_path / "repo", "rank")
    other_scorer = _edited(scorer, tmp_path, "scorer.json", lambda d: d.update(plan_fingerprint="cd" * 32))
    with pytest.raises(FingerprintMismatchError, match=f"scorer .*fingerprint '{'cd' * 32}'.*fingerprint '{plan.fingerprint}'"):
        export_ensemble(plan, store, other_scorer, tmp_path / "repo", "rank")
    assert not (tmp_path / "repo").exists()


def test_tables_and_sizes_must_match_the_plan(parts, tmp_path):
    plan, store, scorer = parts
    resized = _edited(store, tmp_path, "store.json", lambda d: d["metadata"]["table_sizes"].update(C4=7))
    with pytest.raises(ValueError, match=r"table 'C4' was built for 7 codes; the plan encodes \d+"):
        export_ensemble(plan, resized, scorer, tmp_path / "repo", "rank")
    shutil.rmtree(resized)
    renamed = _edited(store, tmp_path, "store.json", lambda d: d["tables"][0].update(name="users"))
    with pytest.raises(ValueError, match=r"has no table\(s\) \['C1'\]"):
        export_ensemble(plan, renamed, scorer, tmp_path / "repo", "rank")
    reordered = _edited(scorer, tmp_path, "scorer.json", lambda d: d.update(tables=d["tables"][::-1]))
    with pytest.raises(ValueError, match="takes embeddings of tables"):
        export_ensemble(plan, store, reordered, tmp_path / "repo", "rank")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"layout": "wide"}, "layout 'wide'"), ({"name": "a/b"}, "model name 'a/b'"), ({"missing_key_policy": "skip"}, "missing_key_policy 'skip'")],
)
def test_bad_arguments(parts, tmp_path, kwargs, message):
    plan, store, scorer = parts
    with pytest.raises(ValueError, match=message):
        export_ensemble(plan, store, scorer, tmp_path, **{"name": "rank", **kwargs})


def test_cli_export(criteo_trained, tmp_path, capsys):
    pipeline = criteo_trained["pipeline"]
    args = ["export", str(pipeline.workflow_dir), str(tmp_path / "repo"), "--name", "rank", "--store", str(pipeline.store_dir)]
    assert main([*args, "--scorer", str(pipeline.scorer_dir)]) == 0
    assert "wrote ensemble" in capsys.readouterr().out
    assert main(args) == 2
    assert "give either --scorer DIR or --scorer-model NAME" in capsys.readouterr().err
    assert main([*args, "--scorer-model", "x"]) == 2
    assert "--scorer-model needs --dense-input, --embeddings-input, --scorer-output" in capsys.readouterr().err
    assert main([*args, "--scorer", str(tmp_path)]) == 1
    assert "scorer.json: no such file" in capsys.readouterr().err


def test_gpu_lookup_instances(parts, tmp_path):
    plan, store, scorer = parts
    with pytest.raises(ValueError, match="lookup_kind KIND_GPU needs gpu_cache_bytes"):
        export_ensemble(plan, store, scorer, tmp_path, "rank", lookup_kind="KIND_GPU")
    with pytest.raises(ValueError, match="lookup_kind 'GPU'"):
        export_ensemble(plan, store, scorer, tmp_path, "rank", lookup_kind="GPU")
    export_ensemble(plan, store, scorer, tmp_path, "rank", lookup_kind="KIND_GPU",
                    gpu_cache=GpuCacheOptions(1 << 30, dtype="bfloat16", eviction="lfu", admission=True, async_insert=True))
    config = (tmp_path / "rank_embeddings" / "config.pbtxt").read_text()
    assert "kind: KIND_GPU" in config
    for key, value in (("gpu_cache_bytes", str(1 << 30)), ("gpu_eviction", "lfu"), ("gpu_admission", "true"), ("gpu_cache_dtype", "bfloat16"),
                       ("gpu_async_insert", "true"), ("FORCE_CPU_ONLY_INPUT_TENSORS", "no")):
        assert f'key: "{key}" value: {{ string_value: "{value}" }}' in config


def test_gpu_scorer_keeps_inputs_on_the_device(parts, tmp_path):
    """A KIND_GPU scorer takes the lookup's device tensors as they are; a KIND_CPU one asks for host copies."""
    plan, store, scorer = parts
    export_ensemble(plan, store, scorer, tmp_path / "gpu", "rank", scorer_kind="KIND_GPU")
    config = (tmp_path / "gpu" / "rank_scorer" / "config.pbtxt").read_text()
    assert "kind: KIND_GPU" in config and 'key: "FORCE_CPU_ONLY_INPUT_TENSORS" value: { string_value: "no" }' in config
    export_ensemble(plan, store, scorer, tmp_path / "cpu", "rank")
    config = (tmp_path / "cpu" / "rank_scorer" / "config.pbtxt").read_text()
    assert "kind: KIND_CPU" in config and 'key: "FORCE_CPU_ONLY_INPUT_TENSORS" value: { string_value: "yes" }' in config


def test_outputs_the_ensemble_cannot_pass_are_named_with_the_fix(parts, tmp_path):
    import numpy as np

    from tritonrec.transform.ops import Bucketize, Normalize
    from tritonrec.transform.plan import ColumnSpec, PlanGroup, TransformPlan

    _, store, scorer = parts
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    groups = [PlanGroup(["x"], ["x"], f64, [Normalize([0.0], [1.0], f64)]), PlanGroup(["b"], ["b"], f32, [Bucketize([[0.5]])])]
    plan = TransformPlan([ColumnSpec("x", f64), ColumnSpec("b", f32)], [ColumnSpec("x", f64), ColumnSpec("b", np.dtype(np.int32))],
                         groups, "23.08.00")
    with pytest.raises(ValueError) as caught:
        export_ensemble(plan, store, scorer, tmp_path, "rank")
    message = str(caught.value)
    assert "the plan also outputs float64: ['x'] (end the column's ops with a float32 step: Normalize(out_dtype=np.float32)" in message
    assert "int32: ['b'] (Bucketize and HashBucket give int32, not codes: follow them with Categorify()" in message
    assert not (tmp_path / "rank").exists()


def test_a_store_of_ones_own_tables_built_with_the_plan_is_accepted(parts, tmp_path):
    """embedding-cache build --plan records what export checks; without it export says how to."""
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedding_cache import read_store_info
    from tritonrec.export import store_metadata

    plan, _, scorer = parts
    plan.save(tmp_path / "plan")
    sizes = store_metadata(plan)["table_sizes"]
    rng = np.random.default_rng(0)
    tables = []
    for column in plan.packed_outputs["int64"]:
        keys = np.arange(sizes[column])
        pq.write_table(pa.table({"key": keys, "vector": list(rng.normal(size=(keys.size, 16)).astype(np.float32))}),
                       tmp_path / f"{column}.parquet")
        tables += ["--table", f"{column}={tmp_path / f'{column}.parquet'}"]
    cli = str(Path(sys.executable).parent / "embedding-cache")
    run = lambda *args: subprocess.run([cli, "build", *args], capture_output=True, text=True, timeout=300)  # noqa: E731
    built = run(str(tmp_path / "store"), *tables, "--plan", str(tmp_path / "plan"))
    assert built.returncode == 0, built.stderr
    assert read_store_info(tmp_path / "store")[0] == store_metadata(plan)
    export_ensemble(plan, tmp_path / "store", scorer, tmp_path / "repo", "rank")

    assert run(str(tmp_path / "bare"), *tables).returncode == 0  # no --plan: no fingerprint
    with pytest.raises(FingerprintMismatchError, match=r"records no transform plan fingerprint .*`embedding-cache build --plan PLAN_DIR"):
        export_ensemble(plan, tmp_path / "bare", scorer, tmp_path / "repo2", "rank")

    column = plan.packed_outputs["int64"][0]
    pq.write_table(pa.table({"key": np.array([0, sizes[column]]), "vector": list(np.zeros((2, 16), np.float32))}), tmp_path / "big.parquet")
    failed = run(str(tmp_path / "s2"), "--table", f"{column}={tmp_path / 'big.parquet'}", "--plan", str(tmp_path / "plan"))
    assert failed.returncode == 1 and f"table '{column}': 1 key(s) outside the plan's codes 0..{sizes[column] - 1}" in failed.stderr
    assert not (tmp_path / "s2").exists()
    failed = run(str(tmp_path / "s3"), "--table", f"nope={tmp_path / 'big.parquet'}", "--plan", str(tmp_path / "plan"))
    assert failed.returncode == 1 and "--table ['nope']: not Categorify outputs of the plan" in failed.stderr
    manifest = json.loads((tmp_path / "plan" / "manifest.json").read_text())
    del manifest["table_sizes"]
    write_manifest(tmp_path / "plan" / "manifest.json", manifest)  # a plan saved before this version
    failed = run(str(tmp_path / "s4"), *tables[:2], "--plan", str(tmp_path / "plan"))
    assert failed.returncode == 1 and "records no table sizes (saved by an older tritonrec): re-export the plan" in failed.stderr
