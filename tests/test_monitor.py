"""``tritonrec monitor`` against a real redis-server: request records and labels joined into hourly
parquet partitions, each request exactly once (restarts and SIGKILL included), malformed entries
and unknown labels counted, an unwritable sink refused, metrics for Prometheus."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest
import redis

from tritonrec.cli import main
from tritonrec.monitoring import LABEL_STREAM, report_labels
from tritonrec.monitoring.monitor import Monitor
from tritonrec.monitoring.sink import META_COLUMNS, Sink, SinkError, feature_columns, partition_of
from tritonrec.serving.request_log import REQUEST_STREAM, RecordError, RequestRecord, decode_record, encode_record

T0 = 1_790_000_000_000_000_000  # 2026-09-21 14:13:20 UTC, in ns


def _features(key: int, rows: int, request_id: str = "", at: int | None = None) -> RequestRecord:
    rng = np.random.default_rng(key % 1000)
    return RequestRecord(key, "features", "shop_transform", 2, at or time.time_ns(), {
        "INPUT_INT64": rng.integers(0, 100, (rows, 2)),
        "price": rng.random((rows, 1)).astype(np.float32),
        "city": np.array([f"c{key}-{i}" for i in range(rows)], dtype=object).reshape(rows, 1),
        "genres__values": rng.integers(0, 9, (rows, 3)),
        "genres__lengths": (np.arange(rows) % 4).astype(np.int32).reshape(rows, 1),
    }, request_id, {"INPUT_INT64": ["user", "item"]})


def _prediction(key: int, rows: int, at: int | None = None) -> RequestRecord:
    return RequestRecord(key, "prediction", "shop_scorer", 5, at or time.time_ns(),
                         {"probability": (np.arange(rows, dtype=np.float32).reshape(rows, 1) + key % 7) / 10})


def _add(url: str, *records: RequestRecord) -> None:
    import redis

    client = redis.Redis.from_url(url)
    for record in records:
        client.xadd(REQUEST_STREAM, encode_record(record))


def _expected_rows(record: RequestRecord) -> pd.DataFrame:
    t = record.tensors
    lengths = t["genres__lengths"].reshape(-1)
    return pd.DataFrame({"user": t["INPUT_INT64"][:, 0], "item": t["INPUT_INT64"][:, 1], "price": t["price"].reshape(-1),
                         "city": t["city"].reshape(-1), "genres": [t["genres__values"][i, :n].tolist() for i, n in enumerate(lengths)]})


def test_feature_columns_of_every_layout():
    rows, columns = feature_columns(_features(3, 4).tensors, {"INPUT_INT64": ["user", "item"]})
    assert rows == 4 and list(columns) == ["user", "item", "price", "city", "genres"]
    assert columns["genres"] == [[], columns["genres"][1], columns["genres"][2], columns["genres"][3]] and len(columns["genres"][3]) == 3
    flat = {"tags__values": np.array([5, 6, 7]), "tags__offsets": np.array([0, 2, 2, 3], np.int32), "x": np.array([1.0, 2.0, 3.0])}
    n, got = feature_columns(flat)
    assert n == 3 and got["tags"] == [[5, 6], [], [7]] and got["x"].tolist() == [1.0, 2.0, 3.0]
    assert feature_columns({"wide": np.arange(6).reshape(3, 2)}) == (3, {"wide": [[0, 1], [2, 3], [4, 5]]})
    with pytest.raises(ValueError, match="tensor 'b' has 2 rows, the request 3"):
        feature_columns({"a": np.zeros(3), "b": np.zeros(2)})
    with pytest.raises(ValueError, match="list tensor 'g__values' without g__lengths or g__offsets"):
        feature_columns({"g__values": np.zeros((2, 2))})


def test_the_oov_column_lists_each_rows_columns_out_of_vocabulary():
    from tritonrec.monitoring.sink import oov_column

    flags = np.array([[False, False, False], [True, False, True], [False, True, False]])
    assert oov_column((flags, ["a", "b", "c"]), 3).to_pylist() == [[], ["a", "c"], ["b"]]
    assert oov_column(None, 2).to_pylist() == [None, None] and oov_column((np.zeros((0, 3), bool), ["a", "b", "c"]), 0).to_pylist() == []
    with pytest.raises(ValueError, match=r"oov flags of shape \(3, 3\): expected \(3, 2\)"):
        oov_column((flags, ["a", "b"]), 3)


def test_packed_column_names_and_request_ids_travel_in_the_record():
    record = _features(11, 3, request_id="req-é")
    back = decode_record(encode_record(record))
    assert back.request_id == "req-é" and back.columns == {"INPUT_INT64": ["user", "item"]}
    fields = encode_record(record)
    fields[b"c:INPUT_INT64"] = b'["user"]'
    with pytest.raises(RecordError, match="1 column names for tensor 'INPUT_INT64' of shape \\(3, 2\\)"):
        decode_record(fields)
    fields[b"c:INPUT_INT64"] = b"{"
    with pytest.raises(RecordError, match="field 'c:INPUT_INT64': expected a JSON list"):
        decode_record(fields)


@pytest.mark.parametrize("rows", [1, 2, 50])
def test_requests_join_their_predictions_and_labels(redis_server, tmp_path, rows):
    keys = [101, 102, 103, 104]
    records = {k: _features(k, rows, request_id=f"client-{k}") for k in keys}
    flags = {k: np.random.default_rng(k).random((rows, 2)) < 0.5 for k in keys[:2]}  # 103, 104: a transform that does not say
    for k in keys[:2]:
        records[k] = dataclasses.replace(records[k], oov=flags[k], oov_columns=["user", "city"])
    _add(redis_server.url, *(records[k] for k in keys), *(_prediction(k, rows) for k in keys[:3]))  # 104: no prediction
    report_labels(redis_server.url, ["101", "client-102"], [1, 0])  # by request key and by the client's id
    report_labels(redis_server.url, ["no-such-request"], [1])
    monitor = Monitor(redis_server.url, tmp_path / "sink", label_window_s=1.0, record_wait_s=1.0)
    assert monitor.drain(timeout_s=20)
    frame = Sink(tmp_path / "sink").read().sort_values(["request_key", "row"]).reset_index(drop=True)
    assert len(frame) == 4 * rows and set(META_COLUMNS) <= set(frame.columns)
    for key in keys:
        got = frame[frame.request_key == key].reset_index(drop=True)
        want = _expected_rows(records[key])
        pd.testing.assert_frame_equal(got[list(want.columns)].assign(genres=got.genres.map(list)), want, check_dtype=False)
        assert got.row.tolist() == list(range(rows)) and (got.request_id == f"client-{key}").all()
        if key in flags:  # the raw columns out of vocabulary, row by row
            assert [list(v) for v in got.oov] == [[c for c, f in zip(["user", "city"], row) if f] for row in flags[key]]
        else:
            assert got.oov.isna().all()
        assert (got.model == "shop_transform").all() and (got.model_version == 2).all()
        if key == 104:
            assert got.probability.isna().all() and (got.scorer == "").all()
        else:
            np.testing.assert_allclose(got.probability, (np.arange(rows) + key % 7) / 10, rtol=1e-6)
            assert (got.scorer == "shop_scorer").all() and (got.scorer_version == 5).all()
    labels = frame.groupby("request_key").label.first().to_dict()
    assert labels[101] == 1 and labels[102] == 0 and pd.isna(labels[103]) and pd.isna(labels[104])
    metric = monitor.metrics.registry.get_sample_value
    assert metric("tritonrec_monitor_rows_total", {"label": "present"}) == 2 * rows
    assert metric("tritonrec_monitor_rows_total", {"label": "missing"}) == 2 * rows
    assert metric("tritonrec_monitor_labels_unmatched_total", {"reason": "unknown"}) == 1
    assert metric("tritonrec_monitor_lag_seconds") == 0
    # everything acknowledged: a second monitor of the group has nothing to read, writes nothing
    again = Monitor(redis_server.url, tmp_path / "sink", label_window_s=1.0)
    assert again.drain(timeout_s=10) and again.rows_written == 0
    # a label after its request was written is late, counted; the sink is unchanged
    report_labels(redis_server.url, ["103"], [1])
    assert again.drain(timeout_s=10)
    assert again.metrics.registry.get_sample_value("tritonrec_monitor_labels_unmatched_total", {"reason": "late"}) == 1
    assert len(Sink(tmp_path / "sink").read()) == 4 * rows


def test_a_prediction_later_than_the_label_window_still_joins(redis_server, tmp_path):
    """The two records of a request come from two loggers: with a label window of 0, a request
    read without its prediction waits record_wait_s for it, then is written without."""
    monitor = Monitor(redis_server.url, tmp_path / "sink", label_window_s=0.0, record_wait_s=1.5)
    _add(redis_server.url, _features(7, 2), _features(8, 1))
    for _ in range(3):
        monitor.step(50)
    assert monitor.rows_written == 0 and monitor.pending_requests == 2
    _add(redis_server.url, _prediction(7, 2))
    monitor.step(50)
    monitor.step(50)
    assert monitor.rows_written == 2  # 7 joined its late prediction, with no label (window 0)
    time.sleep(1.6)
    monitor.step(50)
    assert monitor.rows_written == 3 and monitor.pending_requests == 0
    frame = Sink(tmp_path / "sink").read().set_index(["request_key", "row"])
    assert frame.loc[(7, 1), "probability"] == pytest.approx(0.1) and pd.isna(frame.loc[(8, 0), "probability"])
    assert frame.label.isna().all()
    with pytest.raises(ValueError, match="record_wait_s -1: expected >= 0"):
        Monitor(redis_server.url, tmp_path / "sink", record_wait_s=-1)


def test_rows_go_to_the_hour_of_their_request(redis_server, tmp_path):
    hour = 3600 * 10**9
    _add(redis_server.url, _features(1, 2, at=T0), _prediction(1, 2, at=T0), _features(2, 1, at=T0 + hour), _prediction(2, 1, at=T0 + hour))
    monitor = Monitor(redis_server.url, tmp_path / "sink", label_window_s=0.5)
    assert monitor.drain(timeout_s=20)
    assert partition_of(T0) == "date=2026-09-21/hour=14"
    parts = sorted(p.parent.relative_to(tmp_path / "sink").as_posix() for p in (tmp_path / "sink").rglob("part-*.parquet"))
    assert parts == ["date=2026-09-21/hour=14", "date=2026-09-21/hour=15"]


def test_malformed_entries_are_counted_and_skipped(redis_server, tmp_path):
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.xadd(REQUEST_STREAM, {"kind": "gossip"})
    client.xadd(REQUEST_STREAM, {"kind": "features", "model": "m", "key": "x"})
    client.xadd(LABEL_STREAM, {"id": "5", "label": "2"})
    client.xadd(LABEL_STREAM, {"label": "1"})
    _add(redis_server.url, _features(5, 2), _prediction(5, 2))
    client.xadd(LABEL_STREAM, {"id": "5", "label": "1", "time_ns": "1"})
    messages = []
    monitor = Monitor(redis_server.url, tmp_path / "sink", label_window_s=0.5, log=messages.append)
    assert monitor.drain(timeout_s=20)
    metric = monitor.metrics.registry.get_sample_value
    assert metric("tritonrec_monitor_malformed_total", {"stream": REQUEST_STREAM}) == 2
    assert metric("tritonrec_monitor_malformed_total", {"stream": LABEL_STREAM}) == 2
    assert any("field 'label' is '2': expected 0 or 1" in m for m in messages)
    assert any("field 'kind' is 'gossip'" in m for m in messages)
    frame = Sink(tmp_path / "sink").read()
    assert frame.request_key.tolist() == [5, 5] and frame.label.tolist() == [1, 1]
    assert client.xpending(REQUEST_STREAM, "tritonrec-monitor")["pending"] == 0
    assert client.xpending(LABEL_STREAM, "tritonrec-monitor")["pending"] == 0


def test_an_unwritable_sink_is_refused_by_name(redis_server, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SinkError, match=f"sink {blocker / 'sink'}: cannot write there"):
        Monitor(redis_server.url, blocker / "sink")
    assert main(["monitor", "--redis", redis_server.url, "--sink", str(blocker / "sink")]) == 2
    assert "cannot write there" in capsys.readouterr().err


def test_a_sink_that_fails_later_loses_nothing(redis_server, tmp_path):
    _add(redis_server.url, _features(8, 3), _prediction(8, 3))
    report_labels(redis_server.url, ["8"], [1])
    messages = []
    monitor = Monitor(redis_server.url, tmp_path / "sink", label_window_s=30, log=messages.append)
    original = monitor.sink.write

    def full_disk(partition, tables):
        raise SinkError(f"sink {tmp_path / 'sink'}: writing {partition} failed (No space left on device)")

    monitor.sink.write = full_disk
    monitor.step(50)
    monitor.step(50)
    assert monitor.metrics.registry.get_sample_value("tritonrec_monitor_sink_errors_total") >= 1 and "No space left" in messages[-1]
    assert monitor.rows_written == 0
    monitor.sink.write = original  # the disk has room again: the same rows go out, once
    assert monitor.drain(timeout_s=10) and monitor.rows_written == 3
    assert Sink(tmp_path / "sink").read().label.tolist() == [1, 1, 1]


def _wait_rows(sink, at_least: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (not sink.exists() or len(Sink(sink).read()) < at_least):
        time.sleep(0.05)


def test_sigkill_and_restart_lose_nothing_and_duplicate_nothing(redis_server, tmp_path):
    from tritonrec.serving.server import free_port

    keys = list(range(1000, 1400))
    rows = {k: 1 + k % 3 for k in keys}
    _add(redis_server.url, *(r for k in keys for r in (_features(k, rows[k]), _prediction(k, rows[k]))))
    report_labels(redis_server.url, [str(k) for k in keys[::2]], [k % 2 for k in keys[::2]])
    sink = tmp_path / "sink"
    port = free_port("127.0.0.1")
    command = [sys.executable, "-m", "tritonrec.cli", "monitor", "--redis", redis_server.url, "--sink", str(sink),
               "--label-window", "1", "--count", "7", "--metrics-port", str(port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for kill_after_rows in (1, 60, 200):  # killed mid-stream three times, each after some rows are written
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_rows(sink, kill_after_rows, 60)
            if kill_after_rows == 1:
                metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                assert "tritonrec_monitor_rows_total" in metrics and "tritonrec_monitor_lag_seconds" in metrics
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
    monitor = Monitor(redis_server.url, sink, label_window_s=1.0)  # the same consumer: its unacknowledged entries first
    assert monitor.drain(timeout_s=60)
    frame = Sink(sink).read()
    counts = frame.groupby("request_key").size().to_dict()
    assert counts == rows  # every request, each row once
    labels = frame.groupby("request_key").label.first()
    assert all(labels[k] == k % 2 for k in keys[::2]) and labels[keys[1::2]].isna().all()


def test_the_command_stops_on_sigterm(redis_server, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "tritonrec.cli", "monitor", "--redis", redis_server.url, "--sink",
                                str(tmp_path / "sink")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "stopped after 0 rows" in out


def _requests(url: str, keys: list[int], rows: dict[int, int]) -> None:
    """Features and prediction of each key; labels (key % 2) for the even keys."""
    _add(url, *(r for k in keys for r in (_features(k, rows[k]), _prediction(k, rows[k]))))
    labelled = [k for k in keys if k % 2 == 0]
    report_labels(url, [str(k) for k in labelled], [k % 2 for k in labelled])


@pytest.mark.parametrize("persistent", [True, False], ids=["redis-with-its-data", "redis-without-its-data"])
def test_redis_killed_under_the_monitor(tmp_path, persistent):
    """Redis SIGKILLed three times under a running monitor, mid-stream, and started again: the
    monitor rides it out (errors logged, retried) and every request Redis still has is written
    exactly once with its label. A Redis with its data (append-only file) keeps the streams and
    the group, so every request arrives; one without loses what it had not delivered, and the
    monitor creates its group again and takes the requests sent after the restart."""
    import threading

    import redis

    from conftest import RedisProcess

    server = RedisProcess(tmp_path / "redis", persistent=persistent).start()
    messages: list[str] = []
    sink = tmp_path / "sink"
    stop = threading.Event()
    try:
        monitor = Monitor(server.url, sink, label_window_s=1.0, count=7, log=messages.append, record_wait_s=1.0)
        thread = threading.Thread(target=monitor.run, args=(stop.is_set, 100), daemon=True)
        thread.start()
        rows = {k: 1 + k % 3 for k in range(2000, 2600)}
        sent, must_have = [], []
        for cycle in range(3):
            keys = list(range(2000 + 200 * cycle, 2200 + 200 * cycle))
            _requests(server.url, keys, rows)
            sent += keys
            before = sum(rows[k] for k in must_have)
            if persistent or cycle == 2:
                must_have += keys
            _wait_rows(sink, before + 20, 60)  # mid-stream: some of this cycle's rows are written
            if cycle < 2:
                server.kill()
                time.sleep(1.0)  # the monitor's reads fail meanwhile
                server.start()
        _wait_rows(sink, sum(rows[k] for k in must_have), 120)
        deadline = time.monotonic() + 30
        while not monitor.caught_up() and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive()
        client = redis.Redis.from_url(server.url)
        pending = [client.xpending(s, "tritonrec-monitor")["pending"] for s in (REQUEST_STREAM, LABEL_STREAM)]
    finally:
        stop.set()
        server.kill()
    assert any(m.startswith("redis: ") and "retrying" in m for m in messages), messages
    assert persistent or any("creating it again" in m for m in messages), messages
    frame = Sink(sink).read()
    counts = frame.groupby("request_key").size().to_dict()
    assert set(must_have) <= set(counts) <= set(sent)
    assert all(counts[k] == rows[k] for k in counts)  # nothing twice, no request in pieces
    labels = frame.groupby("request_key").label.first()
    assert all(labels[k] == 0 for k in must_have if k % 2 == 0) and labels[[k for k in must_have if k % 2]].isna().all()
    assert pending == [0, 0]  # everything acknowledged


def test_redis_dying_between_the_write_and_its_acknowledgement(tmp_path):
    """Rows in the sink, then Redis dies before the XACK: the monitor keeps the acknowledgements,
    sends them when Redis is back, and writes none of those rows again."""
    from conftest import RedisProcess

    server = RedisProcess(tmp_path / "redis", persistent=True).start()
    try:
        rows = {k: 2 for k in range(40)}
        _requests(server.url, list(rows), rows)
        messages: list[str] = []
        monitor = Monitor(server.url, tmp_path / "sink", label_window_s=0.5, log=messages.append)
        write = monitor.sink.write

        def write_then_redis_dies(partition, tables):
            path = write(partition, tables)
            server.kill()
            return path

        monitor.sink.write = write_then_redis_dies
        with pytest.raises(redis.ConnectionError):
            for _ in range(20):  # the first step reads this consumer's backlog (none)
                monitor.step(50)
        written = monitor.rows_written
        assert written > 0 and len(Sink(tmp_path / "sink").read()) == written
        monitor.sink.write = write
        server.start()
        assert monitor.drain(timeout_s=30)
        client = redis.Redis.from_url(server.url)
        assert [client.xpending(s, "tritonrec-monitor")["pending"] for s in (REQUEST_STREAM, LABEL_STREAM)] == [0, 0]
    finally:
        server.kill()
    frame = Sink(tmp_path / "sink").read()
    assert frame.groupby("request_key").size().to_dict() == rows


def test_a_restart_reads_only_the_partitions_entries_can_come_back_to(redis_server, tmp_path):
    """Start-up reads the sink's keys from the partitions a re-delivered or undelivered entry can
    belong to, not the whole (growing) sink; every request is still written once."""
    client = redis.Redis.from_url(redis_server.url)
    sink = tmp_path / "sink"
    ms = T0 // 10**6
    for sequence, record in enumerate((_features(1, 2, at=T0), _prediction(1, 2, at=T0)), 1):  # logged in September
        client.xadd(REQUEST_STREAM, encode_record(record), id=f"{ms}-{sequence}")
    crashed = Monitor(redis_server.url, sink, label_window_s=0.5)
    assert crashed.written == set()

    def killed_before_the_xack() -> None:
        if crashed._unacked:
            raise KeyboardInterrupt("killed")

    crashed._acknowledge = killed_before_the_xack
    with pytest.raises(KeyboardInterrupt):
        crashed.drain(timeout_s=20)
    assert len(Sink(sink).read()) == 2 and (Sink(sink).root / partition_of(T0)).is_dir()
    now = time.time_ns()
    _add(redis_server.url, _features(2, 1, at=now), _prediction(2, 1, at=now))
    # September's entries are unacknowledged: their partition is read, and they are not written again
    again = Monitor(redis_server.url, sink, label_window_s=0.5)
    assert again.written == {1}
    assert again.drain(timeout_s=20) and again.rows_written == 1
    assert client.xpending(REQUEST_STREAM, "tritonrec-monitor")["pending"] == 0
    # now the group has delivered and acknowledged everything up to now: September is not read
    assert Monitor(redis_server.url, sink, label_window_s=0.5).written == {2}
    assert Sink(sink).written() == ({1, 2}, set()) and Sink(sink).written(now - 3600 * 10**9) == ({2}, set())
    assert Sink(sink).read().groupby("request_key").size().to_dict() == {1: 2, 2: 1}
