"""``tritonrec query`` against a real tritonserver: parquet and CSV, logging, bad files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tritonrec.cli import main
from tritonrec.export import export_ensemble
from tritonrec.monitoring.sink import META_COLUMNS, Sink
from tritonrec.pipeline.synthetic import CATEGORICAL, CONTINUOUS, LABEL
from tritonrec.serving.query import QueryError, query

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def served(criteo_trained, tmp_path_factory, start_server):
    pipeline = criteo_trained["pipeline"]
    repo = tmp_path_factory.mktemp("query_repo")
    export_ensemble(pipeline.plan, pipeline.store_dir, pipeline.scorer_dir, repo, "ranker", layout="packed")
    export_ensemble(pipeline.plan, pipeline.store_dir, pipeline.scorer_dir, repo, "ranker_cols", layout="per-column")
    with start_server(repo) as server:
        yield server


def _frame(criteo_trained, n, label=True):
    held = criteo_trained["held_out"]
    return pd.DataFrame({c: held[c][:n] for c in CONTINUOUS + CATEGORICAL + ([LABEL] if label else [])})


@pytest.mark.parametrize("model", ["ranker", "ranker_cols"])
def test_query_parquet_writes_predictions_and_logs(served, criteo_trained, tmp_path, model):
    _frame(criteo_trained, 300).to_parquet(tmp_path / "rows.parquet")
    code = main(["query", "--url", served.grpc_url, "--model", model, "--batch-size", "128",
                 "--output", str(tmp_path / "pred.parquet"), "--log", str(tmp_path / "log"), str(tmp_path / "rows.parquet")])
    assert code == 0
    predictions = pd.read_parquet(tmp_path / "pred.parquet")
    np.testing.assert_allclose(predictions["probability"].to_numpy(), criteo_trained["expected"][:300], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(predictions[LABEL].to_numpy(), criteo_trained["held_out"][LABEL][:300])
    logged = Sink(tmp_path / "log").read().sort_values(["request_time_ns", "row"], ignore_index=True)
    assert len(logged) == 300 and set(logged["model"]) == {model} and set(logged["model_version"]) == {1}
    assert logged.groupby("request_id").size().sort_values().tolist() == [44, 128, 128]  # one request per batch
    np.testing.assert_array_equal(logged["row"].to_numpy(), np.r_[np.arange(128), np.arange(128), np.arange(44)])
    np.testing.assert_array_equal(logged["C7"].to_numpy(), criteo_trained["held_out"]["C7"][:300])
    np.testing.assert_array_equal(logged["I3"].to_numpy(), criteo_trained["held_out"]["I3"][:300].astype(np.float32))
    np.testing.assert_allclose(logged["probability"].to_numpy(), predictions["probability"].to_numpy())
    np.testing.assert_array_equal(logged[LABEL].to_numpy(), criteo_trained["held_out"][LABEL][:300])
    assert logged["request_key"].isna().all()  # this ensemble returns no key
    assert set(META_COLUMNS) <= set(logged.columns)
    # a second run appends
    assert main(["query", "--url", served.grpc_url, "--model", model, "--log", str(tmp_path / "log"), str(tmp_path / "rows.parquet")]) == 0
    assert len(Sink(tmp_path / "log").read()) == 600


def test_query_log_refuses_bad_labels_and_an_unwritable_sink(served, criteo_trained, tmp_path, capsys):
    frame = _frame(criteo_trained, 20).astype({LABEL: np.float64})
    frame.loc[3, LABEL] = np.nan  # a missing label is logged as null
    frame.to_parquet(tmp_path / "rows.parquet")
    query(served.grpc_url, "ranker", tmp_path / "rows.parquet", log_dir=tmp_path / "log")
    logged = Sink(tmp_path / "log").read().sort_values("row")
    assert logged[LABEL].isna().tolist() == [i == 3 for i in range(20)] and logged.label_time_ns.isna().sum() == 1
    frame.loc[7, LABEL] = 2
    frame.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(QueryError, match=r"bad.parquet: column 'label', row 7: 2.0 is not a label: expected 0, 1 or missing"):
        query(served.grpc_url, "ranker", tmp_path / "bad.parquet", log_dir=tmp_path / "log2")
    assert not (tmp_path / "log2").exists()  # refused before anything is sent or written
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert main(["query", "--url", served.grpc_url, "--model", "ranker", "--log", str(blocked / "sink"), str(tmp_path / "rows.parquet")]) == 1
    assert f"sink {blocked / 'sink'}: cannot write there" in capsys.readouterr().err


def test_query_csv_without_labels(served, criteo_trained, tmp_path):
    _frame(criteo_trained, 50, label=False).to_csv(tmp_path / "rows.csv", index=False)
    predictions = query(served.grpc_url, "ranker", tmp_path / "rows.csv", output=tmp_path / "pred.csv")
    assert list(predictions.columns) == ["probability"]
    np.testing.assert_allclose(pd.read_csv(tmp_path / "pred.csv")["probability"].to_numpy(), criteo_trained["expected"][:50], atol=1e-5, rtol=0)


def test_bad_files_are_named(served, criteo_trained, tmp_path, capsys):
    with pytest.raises(QueryError, match="no such file"):
        query(served.grpc_url, "ranker", tmp_path / "absent.parquet")
    (tmp_path / "rows.json").write_text("{}")
    with pytest.raises(QueryError, match=r"expected a .parquet or .csv file, got '.json'"):
        query(served.grpc_url, "ranker", tmp_path / "rows.json")
    _frame(criteo_trained, 5).drop(columns=["I3", "C9"]).to_parquet(tmp_path / "partial.parquet")
    assert main(["query", "--url", served.grpc_url, "--model", "ranker", str(tmp_path / "partial.parquet")]) == 1
    assert "missing column(s) ['I3', 'C9'] that model 'ranker' needs" in capsys.readouterr().err
    assert main(["query", "--url", served.grpc_url, "--model", "nope", str(tmp_path / "partial.parquet")]) == 1
    assert "nope" in capsys.readouterr().err
