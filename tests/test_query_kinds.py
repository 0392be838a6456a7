"""``tritonrec query`` sends every column kind the transform takes (ints, strings, lists), to models
of every layout, and finds a ``tritonrec serve`` through its endpoints file; answers are checked
against the plan run in process for the same rows, in one batch and in batches of 7 and 1."""

from __future__ import annotations

import json
import os
import signal
import warnings

import numpy as np
import pandas as pd
import pytest

from tritonrec.cli import main
from tritonrec.export import export_transform
from tritonrec.serving.endpoints import EndpointsError, read_endpoints, remove_endpoints, write_endpoints
from tritonrec.transform import compile_workflow
from tritonrec.transform.plan import ListColumn

pytestmark = pytest.mark.triton
N = 60


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user": rng.integers(0, 40, n),
        "city": pd.Series(rng.choice(["paris", "köln", "", "tokyo", "lima", "nowhere"], n), dtype=object),
        "tags": [rng.integers(0, 25, rng.integers(0, 5)) for _ in range(n)],
        "x": rng.random(n).astype(np.float32),
    })


@pytest.fixture(scope="module")
def served(tmp_path_factory, start_server):
    import nvtabular as nvt
    from merlin.io import Dataset
    from nvtabular import ops

    work = tmp_path_factory.mktemp("kinds")
    graph = (["user", "city"] >> ops.Categorify(out_path=str(work))) + (["tags"] >> ops.Categorify(out_path=str(work))) + (["x"] >> ops.LogOp())
    workflow = nvt.Workflow(graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow.fit(Dataset(_frame(500, 0), cpu=True))
    plan = compile_workflow(workflow)
    repo = work / "repo"
    export_transform(plan, repo, "cols", layout="per-column")
    export_transform(plan, repo, "packed", layout="packed")
    export_transform(plan, repo, "flat", layout="per-column", max_batch_size=0)  # lists as values + offsets
    export_transform(plan, repo, "nullable", layout="packed", null_string="")  # "" is NVTabular's null
    rows = _frame(N, 1)
    rows.to_parquet(work / "rows.parquet")
    with start_server(repo) as server:
        yield server, plan, work


def _expected(plan, frame: pd.DataFrame) -> dict:
    tags = [np.asarray(t, dtype=np.int64) for t in frame["tags"]]
    offsets = np.concatenate([[0], np.cumsum([t.size for t in tags])]).astype(np.int64)
    columns = {"user": frame["user"].to_numpy(), "city": frame["city"].to_numpy(dtype=object), "x": frame["x"].to_numpy(),
               "tags": ListColumn(np.concatenate(tags) if tags else np.zeros(0, np.int64), offsets)}
    return plan.transform(columns)


@pytest.mark.parametrize("batch_size", [N, 7, 1])
@pytest.mark.parametrize("model", ["cols", "packed", "flat"])
def test_every_column_kind_through_every_layout(served, tmp_path, model, batch_size):
    server, plan, work = served
    out = tmp_path / "pred.parquet"
    code = main(["query", "--url", server.grpc_url, "--model", model, "--batch-size", str(batch_size), "--output", str(out),
                 str(work / "rows.parquet")])
    assert code == 0
    got = pd.read_parquet(out)
    want = _expected(plan, pd.read_parquet(work / "rows.parquet"))
    assert len(got) == N
    tags = want["tags"]
    for i in range(N):  # the list output comes back as one list per row, whatever the layout
        np.testing.assert_array_equal(np.asarray(got["tags"].iloc[i]), tags.values[tags.offsets[i]:tags.offsets[i + 1]], err_msg=f"row {i}")
    if model == "packed":
        for dtype, names in plan.packed_outputs.items():
            block = np.stack([np.asarray(v) for v in got[f"OUTPUT_{'INT64' if dtype == 'int64' else 'FP32'}"]]).reshape(N, -1)
            for j, name in enumerate(names):
                np.testing.assert_array_equal(block[:, j], want[name], err_msg=name)
    else:
        for name in ("user", "city", "x"):
            np.testing.assert_array_equal(got[name].to_numpy(), want[name], err_msg=name)


def test_a_null_string_is_refused_naming_its_row(served, tmp_path, capsys):
    server, _, _ = served
    frame = _frame(5, 2)
    frame.loc[3, "city"] = None
    frame.to_parquet(tmp_path / "nulls.parquet")
    assert main(["query", "--url", server.grpc_url, "--model", "cols", str(tmp_path / "nulls.parquet")]) == 1
    assert "column 'city', row 3: None is not a string (Triton's BYTES tensors have no null" in capsys.readouterr().err


def test_query_finds_serve_through_its_endpoints_file(served, tmp_path, capsys):
    from test_security import Cli

    _, plan, work = served
    endpoints = tmp_path / "run" / "endpoints.json"
    cli = Cli(work / "repo", "--endpoints-file", str(endpoints))
    try:
        written = json.loads(endpoints.read_text())
        assert written["grpc"] == cli.grpc and written["http"] is None and written["pid"] == cli.process.pid
        assert main(["query", "--endpoints-file", str(endpoints), "--model", "cols", "--output", str(tmp_path / "p.parquet"),
                     str(work / "rows.parquet")]) == 0
        np.testing.assert_array_equal(pd.read_parquet(tmp_path / "p.parquet")["user"].to_numpy(),
                                      _expected(plan, pd.read_parquet(work / "rows.parquet"))["user"])
    finally:
        code, _, err = cli.finish(signal.SIGTERM)
    assert code == 0, err
    assert not endpoints.exists()  # removed when serve stops
    assert main(["query", "--endpoints-file", str(endpoints), "--model", "cols", str(work / "rows.parquet")]) == 1
    assert "endpoints.json: no such file (is `tritonrec serve --endpoints-file" in capsys.readouterr().err


def test_endpoints_files_that_cannot_be_used_are_named(tmp_path):
    path = write_endpoints(tmp_path / "e.json", {"grpc": "127.0.0.1:1", "pid": os.getpid()})
    assert read_endpoints(path)["grpc"] == "127.0.0.1:1"
    remove_endpoints(path)
    assert not path.exists()
    write_endpoints(path, {"grpc": "127.0.0.1:1", "pid": 2**22 + 12345})  # no such process
    with pytest.raises(EndpointsError, match="no longer running"):
        read_endpoints(path)
    remove_endpoints(path)  # another process's file stays
    assert path.exists()
    path.write_text("{not json")
    with pytest.raises(EndpointsError, match="not an endpoints file"):
        read_endpoints(path)
    path.write_text('{"http": "x"}')
    with pytest.raises(EndpointsError, match=r"no gRPC address"):
        read_endpoints(path)


def test_an_export_with_a_null_string_serves_it_as_null(served, tmp_path):
    server, plan, work = served
    frame = pd.read_parquet(work / "rows.parquet")
    assert (frame["city"] == "").any()
    assert main(["query", "--url", server.grpc_url, "--model", "nullable", "--output", str(tmp_path / "p.parquet"),
                 str(work / "rows.parquet")]) == 0
    got = np.stack([np.asarray(v) for v in pd.read_parquet(tmp_path / "p.parquet")["OUTPUT_INT64"]])
    city = plan.packed_outputs["int64"].index("city")
    with_nulls = frame.assign(city=frame["city"].where(frame["city"] != "", None))
    np.testing.assert_array_equal(got[:, city], _expected(plan, with_nulls)["city"])
    assert (got[(frame["city"] == "").to_numpy(), city] == 1).all()  # Categorify's null code
    config = (work / "repo" / "nullable" / "config.pbtxt").read_text()
    assert 'key: "null_string" value: { string_value: "\\"\\"" }' in config
