"""Server-side request logging through tritonserver: an ensemble exported with ``request_log``
logs every request (its raw tensors from the transform, its answer from the scorer, one key) to a
real Redis, returns the key, and keeps serving the same answers while Redis is dead."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from tritonrec.serving.query import query
from tritonrec.serving.request_log import REQUEST_KEY, REQUEST_STREAM, RequestLogOptions, decode_record

pytestmark = pytest.mark.triton
ROWS = (1, 2, 7, 50, 1, 3)


def _records(url: str) -> list:
    import redis

    return [decode_record(fields) for _, fields in redis.Redis.from_url(url).xrange(REQUEST_STREAM)]


def _wait_for(url: str, count: int, timeout_s: float = 30.0) -> list:
    deadline = time.monotonic() + timeout_s
    records = _records(url)
    while len(records) < count and time.monotonic() < deadline:
        time.sleep(0.1)
        records = _records(url)
    return records


def _metric(url: str, name: str, **labels: str) -> float:
    """The value of one series on Triton's metrics endpoint (0 when absent)."""
    import re
    import urllib.request

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) == labels:
            return float(match.group(2))
    return 0.0


def _wait_metric(url: str, name: str, at_least: float, timeout_s: float = 15.0, **labels: str) -> float:
    deadline = time.monotonic() + timeout_s
    value = _metric(url, name, **labels)
    while value < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
        value = _metric(url, name, **labels)
    return value


def test_every_request_is_logged_with_its_key(criteo_trained, redis_server, start_server, tmp_path):
    import tritonclient.grpc as grpcclient

    from tritonrec.export import export_ensemble
    from tritonrec.serving.client import infer, pack_request
    from tritonrec.serving.transform_model import TransformModel

    pipeline = criteo_trained["pipeline"]
    repo = tmp_path / "repo"
    export_ensemble(pipeline.workflow_dir, pipeline.store_dir, pipeline.scorer_dir, repo, "criteo",
                    request_log=RequestLogOptions(redis_server.url, timeout_s=0.2))
    transform = TransformModel(pipeline.plan, "packed", output_layout="packed")
    held = criteo_trained["held_out"]
    requests, start = [], 0
    for rows in ROWS:
        requests.append(pack_request(transform, {c: v[start:start + rows] for c, v in held.items() if c != "label"}))
        start += rows
    with start_server(repo) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        answers = [infer(client, "criteo", r, ["probability", REQUEST_KEY]) for r in requests]
        records = _wait_for(redis_server.url, 2 * len(requests))

        redis_server.kill()  # serving goes on, with the same answers; records are dropped
        again = [infer(client, "criteo", r, ["probability", REQUEST_KEY]) for r in requests]
        redis_server.start()  # an empty Redis on the same port: logging resumes by itself
        deadline = time.monotonic() + 30
        while not _records(redis_server.url) and time.monotonic() < deadline:
            infer(client, "criteo", requests[0], ["probability", REQUEST_KEY])
            time.sleep(0.2)
        resumed = _records(redis_server.url)
        client.close()
        # what the loggers counted, on Triton's metrics endpoint (sent at most 0.5 s later)
        sent = {m: _wait_metric(server.metrics_url, "tritonrec_feedback_sent_total", len(requests), model=m)
                for m in ("criteo_transform", "criteo_scorer")}
        dropped = {m: _wait_metric(server.metrics_url, "tritonrec_feedback_dropped_total", 1, model=m, reason="redis_error")
                   for m in ("criteo_transform", "criteo_scorer")}

    keys = []
    for request, answer, rows in zip(requests, answers, ROWS):
        key_tensor = answer[REQUEST_KEY]
        assert key_tensor.shape == (rows, 1) and (key_tensor == key_tensor[0, 0]).all()
        keys.append(int(key_tensor[0, 0]))
    assert len(set(keys)) == len(requests)
    assert len(records) == 2 * len(requests)
    by_kind = {kind: {r.key: r for r in records if r.kind == kind} for kind in ("features", "prediction")}
    assert set(by_kind["features"]) == set(by_kind["prediction"]) == set(keys)
    for key, request, answer in zip(keys, requests, answers):
        features, prediction = by_kind["features"][key], by_kind["prediction"][key]
        assert (features.model, prediction.model) == ("criteo_transform", "criteo_scorer")
        assert set(features.tensors) == set(request)
        for name, array in request.items():
            np.testing.assert_array_equal(features.tensors[name], array)
        np.testing.assert_array_equal(prediction.tensors["probability"], answer["probability"])
    for first, second in zip(answers, again):
        np.testing.assert_allclose(second["probability"], first["probability"], rtol=1e-6, atol=1e-7)
        assert int(second[REQUEST_KEY][0, 0]) not in keys  # a new key per request
    assert resumed and all(r.kind in ("features", "prediction") for r in resumed)
    assert all(value >= len(requests) for value in sent.values()), sent
    assert all(value >= 1 for value in dropped.values()), dropped  # the requests sent while Redis was dead


def test_the_sink_holds_exactly_the_requests_sent(criteo_trained, redis_server, start_server, tmp_path):
    """Requests through the exported ensemble, labels by request key and by the client's id, then
    ``tritonrec monitor``'s join: one sink row per row sent, its columns the values sent, its
    probability the answer, its label the one reported."""
    import tritonclient.grpc as grpcclient

    from tritonrec.export import export_ensemble
    from tritonrec.monitoring import report_labels
    from tritonrec.monitoring.monitor import Monitor
    from tritonrec.monitoring.sink import Sink
    from tritonrec.serving.client import infer, pack_request
    from tritonrec.serving.transform_model import TransformModel

    pipeline = criteo_trained["pipeline"]
    repo = tmp_path / "repo"
    export_ensemble(pipeline.workflow_dir, pipeline.store_dir, pipeline.scorer_dir, repo, "criteo",
                    request_log=RequestLogOptions(redis_server.url))
    transform = TransformModel(pipeline.plan, "packed", output_layout="packed")
    columns = transform.packed_input_columns()
    held = criteo_trained["held_out"]
    requests, start = [], 0
    for rows in ROWS:
        requests.append(pack_request(transform, {c: v[start:start + rows] for c, v in held.items() if c != "label"}))
        start += rows
    ids = [f"client-{i}" if i % 2 else "" for i in range(len(requests))]  # some requests carry the client's id
    with start_server(repo) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        answers = [infer(client, "criteo", r, ["probability", REQUEST_KEY], request_id=i) for r, i in zip(requests, ids)]
        client.close()
        records = _wait_for(redis_server.url, 2 * len(requests))
        assert len(records) == 2 * len(requests)
        keys = [int(a[REQUEST_KEY][0, 0]) for a in answers]
        labels = {}
        for i, key in enumerate(keys[:-1]):  # the last request gets no label
            labels[key] = i % 2
        report_labels(redis_server.url, [ids[i] or str(key) for i, key in enumerate(keys[:-1])], [labels[k] for k in keys[:-1]])
        monitor = Monitor(redis_server.url, tmp_path / "sink", label_window_s=1.0)
        assert monitor.drain(timeout_s=60)
        # the same rows from a client that logs itself: `tritonrec query --log`, into a sink of its own
        sent = pd.DataFrame({c: v[:sum(ROWS)] for c, v in held.items()})
        sent.to_parquet(tmp_path / "rows.parquet")
        query(server.grpc_url, "criteo", tmp_path / "rows.parquet", batch_size=7, log_dir=tmp_path / "client_sink")
    frame = Sink(tmp_path / "sink").read()
    _same_schema_and_rows(tmp_path / "sink", tmp_path / "client_sink", sent)
    assert len(frame) == sum(ROWS) and sorted(frame.groupby("request_key").size().tolist()) == sorted(ROWS)
    for key, request, answer, request_id in zip(keys, requests, answers, ids):
        got = frame[frame.request_key == key].sort_values("row")
        assert (got.request_id == request_id).all()
        assert (got.model == "criteo_transform").all() and (got.scorer == "criteo_scorer").all()
        for tensor, array in request.items():
            for j, column in enumerate(columns[tensor]):
                np.testing.assert_array_equal(got[column].to_numpy(), array[:, j], err_msg=column)
        np.testing.assert_array_equal(got.probability.to_numpy(), answer["probability"].reshape(-1))
        flags = transform.oov_flags(transform.execute([request])[0])  # the served transform's, computed here
        assert [list(v) for v in got.oov] == [[c for c, f in zip(transform.oov_inputs, row) if f] for row in flags]
        if key in labels:
            assert (got.label == labels[key]).all()
        else:
            assert got.label.isna().all()
    assert monitor.metrics.registry.get_sample_value("tritonrec_monitor_rows_total", {"label": "present"}) == sum(ROWS[:-1])


def _same_schema_and_rows(monitor_sink, client_sink, sent) -> None:
    """The sink ``tritonrec query --log`` wrote holds the rows the monitor wrote, in the same
    schema: same columns and types, same values and answers, the file's labels, the ensemble's key."""
    import pyarrow.parquet as pq

    from tritonrec.monitoring.sink import Sink

    def schema(root):  # column -> type; the order of the columns may differ (Triton passes inputs in no set order)
        schemas = [{f.name: f.type for f in pq.read_schema(path)} for path in root.glob("date=*/hour=*/part-*.parquet")]
        assert schemas and all(s == schemas[0] for s in schemas), schemas
        return schemas[0]

    assert schema(client_sink) == schema(monitor_sink)
    ours, theirs = (Sink(root).read().sort_values(["request_time_ns", "row"], ignore_index=True) for root in (client_sink, monitor_sink))
    assert len(ours) == len(theirs) == len(sent)
    for column in [c for c in sent.columns if c != "label"] + ["model_version"]:
        np.testing.assert_array_equal(ours[column].to_numpy(), theirs[column].to_numpy(), err_msg=column)
    # other batch sizes (7 rows here), so the scorer's float sums may differ in the last bits
    np.testing.assert_allclose(ours.probability.to_numpy(), theirs.probability.to_numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ours.label.to_numpy(), sent.label.to_numpy())
    assert (ours.label_time_ns == ours.request_time_ns).all() and (ours.prediction_time_ns >= ours.request_time_ns).all()
    assert (ours.model == "criteo").all() and (ours.scorer == "").all() and ours.scorer_version.isna().all()
    assert ours.oov.isna().all() and theirs.oov.map(len).sum() > 0  # only the transform knows its vocabulary
    batches = ours.groupby("request_id")
    assert batches.ngroups == -(-len(sent) // 7) and sorted(batches.size().unique()) == sorted({7, len(sent) % 7} - {0})
    assert batches.request_key.nunique().eq(1).all() and ours.request_key.nunique() == batches.ngroups  # the key the ensemble returned
    assert not set(ours.request_key) & set(theirs.request_key)
