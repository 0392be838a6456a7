"""The request log's producer against a real redis-server: records round-trip at 0, 1, 2 and 200
rows, sampling by request key, a full queue and a dead Redis drop and count without blocking,
logging resumes when Redis comes back, MAXLEN trims; and delayed labels (report_labels and
``tritonrec feedback``), bad ones refused by position."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd
import pytest

from tritonrec.cli import main
from tritonrec.monitoring import LABEL_STREAM, LabelError, report_labels
from tritonrec.serving.request_log import (
    REQUEST_STREAM, RecordError, RequestLogger, RequestLogOptions, RequestRecord, decode_record, encode_record, sampled,
)


def _record(rows: int, key: int = 7, kind: str = "features") -> RequestRecord:
    rng = np.random.default_rng(rows)
    x = rng.random((rows, 1)).astype(np.float32)
    x[::3] = np.nan
    return RequestRecord(key, kind, "shop", 3, 1_700_000_000_000_000_000 + rows, {
        "user": rng.integers(-5, 10**12, (rows, 1)),
        "city": np.array([["köln", "", "tokyo"][i % 3] for i in range(rows)], dtype=object).reshape(rows, 1),
        "price": x,
        "genres__values": rng.integers(0, 30, (rows, 3)),
        "genres__lengths": rng.integers(0, 4, (rows, 1)).astype(np.int32),
    })


def _same(a: RequestRecord, b: RequestRecord) -> None:
    assert (a.key, a.kind, a.model, a.version, a.time_ns) == (b.key, b.kind, b.model, b.version, b.time_ns)
    assert list(a.tensors) == list(b.tensors)
    for name, want in a.tensors.items():
        got = b.tensors[name]
        assert got.shape == want.shape and got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want)  # NaN equal to NaN, strings exactly


@pytest.mark.parametrize("rows", [0, 1, 2, 200])
def test_records_round_trip(rows):
    record = _record(rows)
    _same(record, decode_record(encode_record(record)))


@pytest.mark.parametrize("rows", [0, 1, 2, 200])
@pytest.mark.parametrize("columns", [0, 1, 8, 9, 26])
def test_out_of_vocabulary_flags_round_trip(rows, columns):
    """Flags of k columns travel as k bits a row (packed across byte boundaries at 8, 9 and 26)."""
    names = [f"C{j}" for j in range(columns)]
    flags = np.random.default_rng(rows + columns).random((rows, columns)) < 0.3
    record = dataclasses.replace(_record(rows), oov=flags, oov_columns=names)
    fields = encode_record(record)
    assert len(fields[b"oov"]) - 128 == rows * ((columns + 7) // 8)  # the .npy header, then the bits
    back = decode_record(fields)
    _same(record, back)
    assert back.oov_columns == names and back.oov.dtype == bool
    np.testing.assert_array_equal(back.oov, flags)
    assert decode_record(encode_record(_record(rows))).oov is None  # a transform that does not say


def test_malformed_out_of_vocabulary_flags_are_named():
    with pytest.raises(RecordError, match=r"oov of shape \(2, 3\): expected \[rows, 2\]"):
        encode_record(dataclasses.replace(_record(2), oov=np.zeros((2, 3), bool), oov_columns=["C1", "C2"]))
    fields = encode_record(dataclasses.replace(_record(2), oov=np.zeros((2, 9), bool), oov_columns=[f"C{j}" for j in range(9)]))
    with pytest.raises(RecordError, match="field 'oov_columns': expected a JSON list"):
        decode_record({**fields, b"oov_columns": b"C1"})
    with pytest.raises(RecordError, match=r"field 'oov': uint8 \(2, 2\): expected uint8 \[rows, 1\] \(a bit for each of the 3"):
        decode_record({**fields, b"oov_columns": b'["a", "b", "c"]'})
    with pytest.raises(RecordError, match="field 'n:oov': not .npy"):
        decode_record({**fields, b"oov": b"bits"})


@pytest.mark.parametrize("fields, words", [
    ({b"kind": b"gossip"}, "field 'kind' is 'gossip'"),
    ({b"kind": b"features"}, "field 'model' missing"),
    ({b"kind": b"features", b"model": b"m", b"version": b"1", b"time_ns": b"1"}, "field 'key' missing"),
    ({b"kind": b"features", b"model": b"m", b"key": b"x1", b"version": b"1", b"time_ns": b"1"}, "field 'key' is b'x1'"),
    ({b"kind": b"prediction", b"model": b"m", b"key": b"1", b"version": b"1", b"time_ns": b"1", b"n:p": b"not npy"}, "field 'n:p': not .npy"),
    ({b"kind": b"prediction", b"model": b"m", b"key": b"1", b"version": b"1", b"time_ns": b"1", b"s:c": b"{"}, "field 's:c': not a JSON"),
])
def test_malformed_entries_are_named(fields, words):
    with pytest.raises(RecordError, match=words.replace("(", r"\(")):
        decode_record(fields)


def test_sampling_is_by_request_key():
    keys = np.random.default_rng(0).integers(0, 2**62, 20_000).tolist()
    chosen = [k for k in keys if sampled(k, 0.25)]
    assert 0.22 < len(chosen) / len(keys) < 0.28
    assert all(sampled(k, 0.25) == sampled(k, 0.25) for k in keys[:100])  # the same key, the same answer
    assert all(sampled(k, 1.0) for k in keys[:100])


@pytest.mark.parametrize("field, value", [("sample", 0.0), ("sample", 1.5), ("maxlen", 0), ("queue", 0), ("batch", 0), ("timeout_s", 0), ("linger_s", -1), ("linger_s", 11)])
def test_bad_options_are_named(field, value):
    with pytest.raises(ValueError, match=f"{field} {value}"):
        RequestLogOptions("redis://127.0.0.1:1/0", **{field: value})
    with pytest.raises(ValueError, match="redis_url 'localhost:6379'"):
        RequestLogOptions("localhost:6379")


def _stream(url: str, stream: str = REQUEST_STREAM) -> list:
    import redis

    return redis.Redis.from_url(url).xrange(stream)


def _log_all(url: str, records: list, **options) -> RequestLogger:
    """Logs every record (each queued, none dropped) and waits until all are sent; the closed logger."""
    logger = RequestLogger(RequestLogOptions(url, **options))
    try:
        assert all(logger.log(r) for r in records)
        assert logger.flush(20)
    finally:
        logger.close()
    return logger


def test_every_record_reaches_the_stream(redis_server):
    records = [_record(rows, key=i) for i, rows in enumerate([0, 1, 2, 200] * 25)]
    logger = _log_all(redis_server.url, records, batch=16)
    entries = _stream(redis_server.url)
    assert len(entries) == logger.sent_total == 100 and logger.dropped_total == {"queue_full": 0, "redis_error": 0}
    for record, (_, fields) in zip(records, entries):
        _same(record, decode_record(fields))


def test_large_records_and_odd_arrays_reach_the_stream_exactly(redis_server):
    """Values of 16 KiB and more go out as their own chunks of the round trip; the encoding is
    numpy.save's .npy bytes whatever the dtype, byte order, memory order or size."""
    import io

    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 10**9, (1024, 26)), rng.random((1024, 13)).astype(np.float32), np.zeros((0, 3), np.int32),
              np.arange(6, dtype=">i4").reshape(2, 3), np.asfortranarray(rng.random((3, 4))), np.ones((2, 1), np.bool_),
              rng.random((4096, 2)).astype(np.float16)]
    records = [RequestRecord(i, "features", "m", 1, 5, {"a": a, "b": arrays[0][:1]}) for i, a in enumerate(arrays)]
    for record in records:  # byte for byte what numpy.save writes
        for name, array in record.tensors.items():
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")), allow_pickle=False)
            assert encode_record(record)[f"n:{name}".encode()] == buffer.getvalue()
    logger = _log_all(redis_server.url, records, batch=3)
    entries = _stream(redis_server.url)
    assert len(entries) == len(records) and logger.sent_total == len(records)
    for record, (_, fields) in zip(records, entries):
        got = decode_record(fields)
        for name, want in record.tensors.items():
            assert got.tensors[name].dtype == want.dtype.newbyteorder("=") and got.tensors[name].shape == want.shape
            np.testing.assert_array_equal(got.tensors[name], want)


def test_a_round_trip_waits_to_fill_up_to_its_linger(redis_server):
    import redis

    client = redis.Redis.from_url(redis_server.url)
    logger = RequestLogger(RequestLogOptions(redis_server.url, batch=4, linger_s=0.5))
    try:
        for key in range(3):
            logger.log(_record(1, key=key))
        time.sleep(0.2)
        assert client.xlen(REQUEST_STREAM) == 0  # three of four: the sender waits for more
        time.sleep(0.5)
        assert client.xlen(REQUEST_STREAM) == 3  # its linger is over: sent as they are
        started = time.monotonic()
        for key in range(3, 7):
            logger.log(_record(1, key=key))
        while client.xlen(REQUEST_STREAM) < 7 and time.monotonic() - started < 5:
            time.sleep(0.01)
        assert time.monotonic() - started < 0.4  # a full round trip goes at once
    finally:
        logger.close()
    assert logger.sent_total == 7


def test_sampled_requests_log_both_kinds(redis_server):
    logger = RequestLogger(RequestLogOptions(redis_server.url, sample=0.3))
    try:
        for key in range(1000):
            logger.log(_record(1, key, "features"))
            logger.log(_record(1, key, "prediction"))
        logger.flush(20)
    finally:
        logger.close()
    logged = [decode_record(f) for _, f in _stream(redis_server.url)]
    by_key: dict[int, set] = {}
    for r in logged:
        by_key.setdefault(r.key, set()).add(r.kind)
    assert 200 < len(by_key) < 400 and all(kinds == {"features", "prediction"} for kinds in by_key.values())
    assert logger.sampled_out_total == 2000 - len(logged)


def test_a_dead_redis_drops_and_counts_and_logging_resumes(redis_server):
    logger = RequestLogger(RequestLogOptions(redis_server.url, queue=50, batch=10, timeout_s=0.2))
    try:
        for key in range(20):
            logger.log(_record(2, key))
        assert logger.flush(20) and logger.sent_total == 20
        redis_server.kill()
        start = time.monotonic()
        accepted = sum(logger.log(_record(2, 100 + key)) for key in range(5000))
        assert time.monotonic() - start < 5  # log() never waits on Redis
        assert logger.flush(30)
        dropped = logger.dropped_total
        assert dropped["queue_full"] + dropped["redis_error"] == 5000 and dropped["redis_error"] == accepted > 0
        assert "Error" in logger.last_error
        redis_server.start()  # the same port, an empty Redis
        deadline = time.monotonic() + 20
        key = 10_000
        while not _stream(redis_server.url) and time.monotonic() < deadline:
            logger.log(_record(1, key))
            key += 1
            time.sleep(0.05)
        logger.flush(20)
        assert len(_stream(redis_server.url)) > 0 and logger.sent_total > 20
    finally:
        logger.close()


def test_maxlen_trims_the_stream(redis_server):
    logger = RequestLogger(RequestLogOptions(redis_server.url, maxlen=100, batch=50))
    try:
        for key in range(3000):
            logger.log(_record(0, key))
        logger.flush(20)
    finally:
        logger.close()
    assert logger.sent_total == 3000
    assert 100 <= len(_stream(redis_server.url)) < 600  # MAXLEN ~: whole nodes of about 100 entries


def test_labels_reach_their_stream(redis_server):
    ids = ["req-1", 42, "req-3", 7.0]
    assert report_labels(redis_server.url, ids, [1, 0, True, 1.0]) == 4
    entries = _stream(redis_server.url, LABEL_STREAM)
    assert [(f[b"id"], f[b"label"]) for _, f in entries] == [(b"req-1", b"1"), (b"42", b"0"), (b"req-3", b"1"), (b"7", b"1")]


@pytest.mark.parametrize("ids, labels, words", [
    (["a", "b"], [1], "2 request ids and 1 labels"),
    (["a", "b"], [1, 2], "label 1 is 2: expected 0 or 1"),
    (["a", "b"], [0.5, 1], "label 0 is 0.5"),
    (["a", "b"], [1, None], "label 1 is None"),
    (["a", ""], [1, 0], "request id 1 is empty"),
    ([None, "b"], [1, 0], "request id 0 is None"),
    ([float("nan")], [1], "request id 0 is nan"),
])
def test_bad_labels_are_refused_by_position_and_nothing_is_written(redis_server, ids, labels, words):
    with pytest.raises(LabelError, match=words):
        report_labels(redis_server.url, ids, labels)
    assert _stream(redis_server.url, LABEL_STREAM) == []


def test_labels_to_a_dead_redis_say_so(tmp_path):
    from tritonrec.serving.server import free_port

    with pytest.raises(LabelError, match=r"redis://127.0.0.1:\d+/0: ConnectionError.*\(0 of 1 labels written\)"):
        report_labels(f"redis://127.0.0.1:{free_port()}/0", ["a"], [1], timeout_s=0.5)


def test_feedback_command_reports_a_file(redis_server, tmp_path, capsys):
    pd.DataFrame({"request_id": ["a", "b", "c"], "label": [1, 0, 1]}).to_parquet(tmp_path / "clicks.parquet")
    assert main(["feedback", str(tmp_path / "clicks.parquet"), "--redis", redis_server.url]) == 0
    assert "reported 3 labels" in capsys.readouterr().out
    pd.DataFrame({"key": [11, 12], "clicked": [0, 1]}).to_csv(tmp_path / "keys.csv", index=False)
    assert main(["feedback", str(tmp_path / "keys.csv"), "--redis", redis_server.url, "--label-column", "clicked"]) == 0
    assert len(_stream(redis_server.url, LABEL_STREAM)) == 5
    pd.DataFrame({"request_id": ["a"], "label": [3]}).to_csv(tmp_path / "bad.csv", index=False)
    assert main(["feedback", str(tmp_path / "bad.csv"), "--redis", redis_server.url]) == 1
    assert "label 0 is 3: expected 0 or 1" in capsys.readouterr().err
    assert main(["feedback", str(tmp_path / "clicks.parquet"), "--redis", redis_server.url, "--label-column", "y"]) == 1
    assert "no column 'y'" in capsys.readouterr().err


def test_feature_and_prediction_records_of_one_request_share_its_key(criteo_trained, redis_server):
    """The ensemble's chain in process: the transform gives every request a key and logs its raw
    tensors; the lookup runs; the scorer takes the key out and logs the probability under it.
    Requests of 0, 1, 2 and 50 rows, and two the steps refuse."""
    from tritonrec.serving.client import pack_request
    from tritonrec.serving.lookup_model import EmbeddingLookupModel
    from tritonrec.serving.request_log import REQUEST_KEY, FeatureLogging, PredictionLogging
    from tritonrec.serving.requests import RequestError
    from tritonrec.serving.scorer_model import TorchScorerModel
    from tritonrec.serving.transform_model import TransformModel

    pipeline = criteo_trained["pipeline"]
    transform = TransformModel(pipeline.plan, "packed", output_layout="packed")
    lookup = EmbeddingLookupModel.open(pipeline.store_dir, pipeline.plan.packed_outputs["int64"])
    scorer = TorchScorerModel(pipeline.scorer_dir, "cpu", 0)
    logger = RequestLogger(RequestLogOptions(redis_server.url))
    features = FeatureLogging(transform.execute, logger, "criteo_transform", 4, oov=transform.oov_flags, oov_columns=transform.oov_inputs)
    predictions = PredictionLogging(scorer.execute, logger, "criteo_scorer", 2)
    held = criteo_trained["held_out"]
    requests, start = [], 0
    for rows in (0, 1, 2, 50):
        requests.append(pack_request(transform, {c: v[start:start + rows] for c, v in held.items() if c != "label"}))
        start += rows
    requests.append({"INPUT_FP32": np.zeros((1, 2), np.float32)})  # refused by the transform
    try:
        out = features(requests)
        assert isinstance(out[-1], RequestError)
        assert out[0][REQUEST_KEY].shape == (0, 1)  # no rows: nothing to carry the key
        keys = [None] + [int(o[REQUEST_KEY][0, 0]) for o in out[1:4]]
        assert len(set(keys[1:])) == 3 and all((o[REQUEST_KEY] == k).all() and o[REQUEST_KEY].shape == (r, 1)
                                              for o, k, r in zip(out[1:4], keys[1:], (1, 2, 50)))
        scored = []
        for o in out[:4]:
            emb = lookup.execute([{"ids": o["OUTPUT_INT64"]}])[0]["embeddings"]
            scored.append({"dense": o["OUTPUT_FP32"], "embeddings": emb, REQUEST_KEY: o[REQUEST_KEY]})
        bad_key = {**scored[2], REQUEST_KEY: np.array([[1], [2]], np.int64)}  # two keys in one request
        answers = predictions([*scored, bad_key, {k: v for k, v in scored[1].items() if k != REQUEST_KEY}])
        assert isinstance(answers[4], RequestError) and isinstance(answers[5], RequestError) and REQUEST_KEY in str(answers[5])
        assert logger.flush(20)
    finally:
        logger.close()
        lookup.close()
    records = [decode_record(f) for _, f in _stream(redis_server.url)]
    by_kind = {kind: {r.key: r for r in records if r.kind == kind} for kind in ("features", "prediction")}
    assert set(by_kind["features"]) == set(by_kind["prediction"]) == set(keys[1:])  # 0 rows: a key, no record
    for key, request, answer in zip(keys[1:], requests[1:4], answers[1:4]):
        _same(RequestRecord(key, "features", "criteo_transform", 4, by_kind["features"][key].time_ns, request), by_kind["features"][key])
        np.testing.assert_array_equal(by_kind["prediction"][key].tensors["probability"], answer["probability"].numpy())
        assert by_kind["features"][key].oov_columns == transform.oov_inputs
        np.testing.assert_array_equal(by_kind["features"][key].oov, transform.oov_flags(transform.execute([request])[0]))
        assert by_kind["prediction"][key].model == "criteo_scorer" and by_kind["prediction"][key].version == 2


def test_options_travel_through_the_model_parameter():
    options = RequestLogOptions("redis://127.0.0.1:7000/1", sample=0.5, maxlen=1000, stream="s")
    import json

    assert RequestLogOptions.from_parameter(json.dumps(options.to_parameter())) == options
    assert RequestLogOptions.from_parameter("") is None
    for text, words in (("{", "parameter 'request_log' is '{'"), ('{"redis_url": "redis://h:1/0", "colour": 1}', "colour"),
                        ('{"redis_url": "redis://h:1/0", "sample": 2}', "sample 2")):
        with pytest.raises(ValueError, match=words):
            RequestLogOptions.from_parameter(text)


def test_export_transform_with_logging_declares_the_key_and_the_options(criteo_small, tmp_path, capsys):
    from tritonrec.serving.config import parameter
    from tritonrec.serving.reference import repository_configs

    code = main(["export-transform", str(criteo_small["dir"]), str(tmp_path / "repo"), "--name", "t", "--layout", "packed",
                 "--log-redis", "redis://127.0.0.1:7000/0", "--log-sample", "0.25"])
    assert code == 0, capsys.readouterr().err
    config = repository_configs(tmp_path / "repo")("t", -1)[1]
    assert {"name": "request_key", "data_type": "TYPE_INT64", "dims": ["1"]} in config["output"]
    options = RequestLogOptions.from_parameter(parameter(config, "request_log"))
    assert options.redis_url == "redis://127.0.0.1:7000/0" and options.sample == 0.25
    assert main(["export-transform", str(criteo_small["dir"]), str(tmp_path / "repo"), "--name", "u", "--log-sample", "0.5"]) == 1
    assert "--log-sample, --log-maxlen and --log-stream need --log-redis URL" in capsys.readouterr().err
    assert main(["export-transform", str(criteo_small["dir"]), str(tmp_path / "repo"), "--name", "u", "--log-redis", "localhost:6379"]) == 1
    assert "redis_url 'localhost:6379'" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["per-column", "packed"])
@pytest.mark.parametrize("rows", [0, 1, 2, 50, 2000])
def test_oov_flags_mark_the_values_the_vocabulary_lacks(criteo_trained, layout, rows):
    """``TransformModel.oov_flags``: a request's rows whose raw value of each Categorify column is
    not in the fitted vocabulary (``categories/unique.<column>.parquet``), against that file."""
    from tritonrec.pipeline.synthetic import CATEGORICAL
    from tritonrec.serving.client import pack_request
    from tritonrec.serving.transform_model import TransformModel

    pipeline, held = criteo_trained["pipeline"], criteo_trained["held_out"]
    transform = TransformModel(pipeline.plan, layout)
    assert transform.oov_inputs == list(CATEGORICAL)
    columns = {c: v[:rows] for c, v in held.items() if c != "label"}
    flags = transform.oov_flags(transform.execute([pack_request(transform, columns)])[0])
    assert flags.shape == (rows, len(CATEGORICAL)) and flags.dtype == bool
    for j, column in enumerate(CATEGORICAL):
        vocabulary = pd.read_parquet(pipeline.workflow_dir / "categories" / f"unique.{column}.parquet")[column].dropna().to_numpy()
        np.testing.assert_array_equal(flags[:, j], np.isin(columns[column], vocabulary, invert=True), err_msg=column)
    if rows == 2000:
        assert 0 < flags.sum() < flags.size  # both kinds of rows were compared
