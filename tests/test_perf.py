"""``tritonrec perf``: perf_analyzer's input data from real rows (strings, lists, NaN), answers
checked before measuring (against the model run in process, or the rows one at a time), a wrong
answer refused; and the in-process reference of a served model, :class:`ServedReference`."""

from __future__ import annotations

import base64
import csv
import json
import struct
import warnings

import numpy as np
import pandas as pd
import pytest

from tritonrec.cli import main
from tritonrec.serving.perf import PerfError, PerfOptions, _difference, find_perf_analyzer, input_data, run_perf
from tritonrec.serving.query import RequestBuilder
from tritonrec.serving.reference import NoReferenceError, ServedReference, repository_configs

CONFIG = {  # a per-column transform of an int, a string, a list and a float column, as Triton reports it
    "name": "cols", "max_batch_size": 64,
    "input": [{"name": "user", "data_type": "TYPE_INT64", "dims": ["1"]}, {"name": "city", "data_type": "TYPE_STRING", "dims": ["1"]},
              {"name": "tags__values", "data_type": "TYPE_INT64", "dims": ["-1"]},
              {"name": "tags__lengths", "data_type": "TYPE_INT32", "dims": ["1"]}, {"name": "x", "data_type": "TYPE_FP32", "dims": ["1"]}],
    "output": [{"name": "user", "data_type": "TYPE_INT64", "dims": ["1"]}],
}


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.random(n).astype(np.float32)
    x[::5] = np.nan
    return pd.DataFrame({
        "user": rng.integers(0, 40, n),
        "city": pd.Series(rng.choice(["paris", "köln", "", "tokyo", "lima", "nowhere"], n), dtype=object),
        "tags": [rng.integers(0, 25, rng.integers(0, 5)) for _ in range(n)],
        "x": x,
    })


def _decode(entry: dict, dtypes: dict) -> dict:
    """An input-data entry back to arrays (BYTES: 4-byte lengths, then the bytes)."""
    out = {}
    for name, tensor in entry.items():
        raw = base64.b64decode(tensor["content"]["b64"])
        if dtypes[name] == object:
            values, at = [], 0
            while at < len(raw):
                (length,) = struct.unpack_from("<I", raw, at)
                values.append(raw[at + 4:at + 4 + length].decode())
                at += 4 + length
            out[name] = np.array(values, dtype=object).reshape(tensor["shape"])
        else:
            out[name] = np.frombuffer(raw, dtype=dtypes[name]).reshape(tensor["shape"])
    return out


@pytest.mark.parametrize("n", [1, 2, 9, 200])
def test_input_data_rows_are_the_request_tensors_row_by_row(n):
    builder = RequestBuilder(CONFIG)
    frame = _frame(n, 3)
    whole = builder.tensors(frame)
    data = input_data(builder, frame, batched=True)
    assert len(data["data"]) == n
    dtypes = {k: v.dtype for k, v in whole.items()}
    rows = [_decode(entry, dtypes) for entry in data["data"]]
    for name, array in whole.items():
        if array.size == 0:  # no row has a value: padded to width 1 (perf_analyzer crashes on empty tensors)
            array = np.zeros((n, 1), array.dtype)
        # every entry has one shape (perf_analyzer batches entries), lists padded to the file's widest row
        assert {tuple(r[name].shape) for r in rows} == {array.shape[1:]}, name
        got = np.stack([r[name] for r in rows])
        if array.dtype.kind == "f":
            np.testing.assert_array_equal(got, array)  # NaN equal to NaN, bit for bit
        else:
            assert (got == array).all(), name


@pytest.mark.parametrize("n, batch", [(1, 1), (7, 3), (8, 4), (5, 8)])
def test_input_data_of_a_model_without_batching_holds_whole_requests(n, batch):
    builder = RequestBuilder({**CONFIG, "max_batch_size": 0})
    frame = _frame(n, 4)
    frame["tags"] = [np.array([7]), *frame["tags"].iloc[1:]]  # the first request has a value; one with none is left out (perf_analyzer 2.44 crashes on it)
    data = input_data(builder, frame, batched=False, batch=batch)
    sendable = [s for s in range(0, n, batch) if sum(len(t) for t in frame["tags"].iloc[s:s + batch])]
    assert len(data["data"]) == len(sendable)
    first = builder.tensors(frame.iloc[:batch])
    decoded = _decode(data["data"][0], {k: v.dtype for k, v in first.items()})
    for name, array in first.items():
        assert decoded[name].shape == array.shape
        np.testing.assert_array_equal(decoded[name], array)


def test_empty_lists_never_make_a_tensor_of_no_elements():
    frame = _frame(6, 5)
    frame["tags"] = [np.zeros(0, np.int64)] * 6
    data = input_data(RequestBuilder(CONFIG), frame, batched=True)
    assert {e["tags__values"]["shape"][0] for e in data["data"]} == {1}
    assert {base64.b64decode(e["tags__lengths"]["content"]["b64"]) for e in data["data"]} == {b"\0\0\0\0"}  # length 0: padding ignored
    with pytest.raises(PerfError, match="no request of 2 rows can be sent"):
        input_data(RequestBuilder({**CONFIG, "max_batch_size": 0}), frame, batched=False, batch=2)


def test_difference_names_the_output_and_row():
    want = {"p": np.array([0.5, np.nan, 0.25], np.float32), "tags": [np.array([1, 2]), np.array([], np.int64), np.array([3])]}
    same = {"p": want["p"] + np.float32(1e-7), "tags": [np.array([1, 2]), np.array([], np.int64), np.array([3])]}
    assert _difference(want, same, 0) is None
    assert "output 'p', row 12" in _difference(want, {**same, "p": np.array([0.5, np.nan, 0.26], np.float32)}, 10)
    assert "output 'p', row 11" in _difference(want, {**same, "p": np.array([0.5, 0.1, 0.25], np.float32)}, 10)  # NaN is a value
    assert "output 'tags', row 2: shape [2]" in _difference(want, {**same, "tags": [np.array([1, 2]), np.array([], np.int64), np.array([3, 4])]}, 0)
    assert "output 'tags': missing" in _difference(want, {"p": want["p"]}, 0)


@pytest.mark.parametrize("field, value, words", [
    ("batch_sizes", (), "batch_sizes []"), ("batch_sizes", (4, 0), "batch_sizes [4, 0]"), ("concurrency", (0,), "concurrency [0]"),
    ("rows", 0, "rows 0"), ("request_count", -1, "request_count -1"), ("stability", 0, "stability 0"), ("stability", 150, "stability 150"),
])
def test_bad_options_are_named(field, value, words):
    with pytest.raises(PerfError, match=words.replace("[", r"\[").replace("]", r"\]")):
        PerfOptions(**{field: value})


def test_missing_perf_analyzer_says_how_to_get_one(tmp_path):
    with pytest.raises(PerfError, match="not an executable file.*make setup"):
        find_perf_analyzer(str(tmp_path / "perf_analyzer"))


@pytest.mark.parametrize("text", ["1,x", "0,4", ""])
def test_bad_batch_sizes_on_the_command_line(text, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["perf", "m", "--data", "rows.parquet", "--batch-sizes", text])
    assert exit_.value.code == 2
    assert "--batch-sizes" in capsys.readouterr().err


def _write_config(repo, name, text):
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(text)


def test_reference_names_a_model_on_another_backend(tmp_path):
    _write_config(tmp_path, "onnx_scorer", 'name: "onnx_scorer"\nbackend: "onnxruntime"\nmax_batch_size: 8\n')
    _write_config(tmp_path, "ens", 'name: "ens"\nplatform: "ensemble"\nmax_batch_size: 8\n'
                  'ensemble_scheduling { step [ { model_name: "onnx_scorer" model_version: -1 input_map { key: "x" value: "x" } '
                  'output_map { key: "y" value: "y" } } ] }\n')
    for model in ("onnx_scorer", "ens"):
        with pytest.raises(NoReferenceError, match="model 'onnx_scorer' runs on backend 'onnxruntime'"):
            ServedReference(tmp_path, model, repository_configs(tmp_path))
    with pytest.raises(NoReferenceError, match="model 'absent': cannot read"):
        ServedReference(tmp_path, "absent", repository_configs(tmp_path))


@pytest.mark.parametrize("layout", ["packed", "per-column"])
def test_reference_of_an_exported_ensemble_is_the_trained_model(criteo_trained, tmp_path, layout):
    """The ensemble walked step by step from its repository's configs gives the DLRM's offline
    probabilities, for 0, 1, 2 and 300 rows."""
    from tritonrec.export import export_ensemble
    from tritonrec.serving.client import pack_request
    from tritonrec.serving.transform_model import TransformModel

    pipeline = criteo_trained["pipeline"]
    repo = tmp_path / "repo"
    export_ensemble(pipeline.workflow_dir, pipeline.store_dir, pipeline.scorer_dir, repo, "criteo", layout=layout)
    reference = ServedReference(repo, "criteo", repository_configs(repo))
    transform = TransformModel.from_directory(repo / "criteo_transform" / "1" / "plan", "packed")
    try:
        for n in (0, 1, 2, 300):
            columns = {c: np.asarray(v[:n]) for c, v in criteo_trained["held_out"].items() if c != "label"}
            request = pack_request(transform, columns) if layout == "packed" else {c: v.reshape(-1, 1) for c, v in columns.items()}
            got = reference(request)["probability"]
            assert got.shape == (n, 1)
            np.testing.assert_allclose(got[:, 0], criteo_trained["expected"][:n], rtol=1e-5, atol=1e-6)
    finally:
        reference.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, start_server):
    import nvtabular as nvt
    from merlin.io import Dataset
    from nvtabular import ops

    from tritonrec.export import export_transform
    from tritonrec.transform import compile_workflow

    work = tmp_path_factory.mktemp("perf")

    def plan(seed):
        graph = (["user", "city"] >> ops.Categorify(out_path=str(work / f"cats{seed}"))) + \
                (["tags"] >> ops.Categorify(out_path=str(work / f"cats{seed}"))) + (["x"] >> ops.LogOp())
        workflow = nvt.Workflow(graph)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            workflow.fit(Dataset(_frame(500, seed), cpu=True))
        return compile_workflow(workflow)

    repo, other = work / "repo", work / "other"
    for repository, fitted in ((repo, plan(0)), (other, plan(1))):  # other: the same models fitted on other rows
        export_transform(fitted, repository, "cols", layout="per-column", max_batch_size=64)
        export_transform(fitted, repository, "packed", layout="packed", max_batch_size=64)
        export_transform(fitted, repository, "flat", layout="per-column", max_batch_size=0)
    _frame(50, 2).to_parquet(work / "rows.parquet")
    with start_server(repo) as server:
        yield server, repo, other, work


FAST = PerfOptions(batch_sizes=(1, 7), rows=40, request_count=10, check_rows=8)


@pytest.mark.triton
@pytest.mark.parametrize("model", ["cols", "packed", "flat"])
def test_perf_checks_then_measures_every_layout(served, tmp_path, model):
    server, repo, _, work = served
    report = run_perf(server.grpc_url, model, work / "rows.parquet", tmp_path, FAST, repository=repo)
    assert [(p.batch, p.concurrency) for p in report.points] == [(1, 1), (7, 1)]
    assert all(p.rows_per_s > 0 and 0 < p.p50_ms <= p.p99_ms for p in report.points)
    assert report.checked == f"{8 + 8} rows at batch sizes [1, 7] equal the model run in process from {repo}"
    assert report.rows == 40
    assert "| 7 | 1 |" in report.table()


@pytest.mark.triton
def test_perf_refuses_to_measure_wrong_answers(served, tmp_path):
    """Checked against a repository whose models were fitted on other rows, the served codes are wrong."""
    server, _, other, work = served
    with pytest.raises(PerfError, match=r"model 'cols' answered a request of 1 rows wrongly \(output '(user|city|tags)', row 0.*"
                                        r"not benchmarking wrong answers"):
        run_perf(server.grpc_url, "cols", work / "rows.parquet", tmp_path, FAST, repository=other)


@pytest.mark.triton
def test_perf_without_a_repository_checks_rows_one_at_a_time(served, tmp_path):
    server, _, _, work = served
    report = run_perf(server.grpc_url, "packed", work / "rows.parquet", tmp_path, PerfOptions(batch_sizes=(5,), rows=20, request_count=10,
                                                                                             check_rows=5))
    assert report.checked.startswith("5 rows at batch sizes [5] equal the same rows one at a time (no model repository given")
    assert len(report.points) == 1


@pytest.mark.triton
def test_perf_command_prints_the_table_and_writes_csv(served, tmp_path, capsys):
    server, repo, _, work = served
    endpoints = tmp_path / "endpoints.json"
    endpoints.write_text(json.dumps({"grpc": server.grpc_url, "repository": str(repo)}))
    out = tmp_path / "points.csv"
    code = main(["perf", "cols", "--data", str(work / "rows.parquet"), "--endpoints-file", str(endpoints), "--batch-sizes", "1,4",
                 "--concurrency", "1,2", "--rows", "20", "--request-count", "10", "--csv", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"equal the model run in process from {repo}" in printed
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 4, printed  # header, 2 batch sizes x 2 concurrencies
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["batch"], r["concurrency"]) for r in rows] == [("1", "1"), ("1", "2"), ("4", "1"), ("4", "2")]


@pytest.mark.triton
@pytest.mark.parametrize("args, words", [
    (["--batch-sizes", "65"], "batch sizes [65]: model 'cols' takes at most 64 rows per request"),
    (["--data", "MISSING"], "missing.parquet: no such file"),
    (["--model", "nope"], "nope"),
    (["--data", "NOCOLS"], "missing column(s) ['user'"),
])
def test_perf_bad_input_is_named(served, tmp_path, capsys, args, words):
    server, repo, _, work = served
    _frame(5, 0).drop(columns=["user"]).to_parquet(tmp_path / "nocols.parquet")
    options = {"--data": str(work / "rows.parquet"), "--model": "cols"}
    extra = []
    for i in range(0, len(args), 2):
        if args[i] in options:
            value = {"MISSING": str(tmp_path / "missing.parquet"), "NOCOLS": str(tmp_path / "nocols.parquet")}.get(args[i + 1], args[i + 1])
            options[args[i]] = value
        else:
            extra += args[i:i + 2]
    code = main(["perf", options["--model"], "--data", options["--data"], "--url", server.grpc_url, "--repository", str(repo), *extra])
    assert code == 1
    assert words in capsys.readouterr().err
