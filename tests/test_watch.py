"""Drift and quality windows against the training profile: a shift injected into one continuous
and one categorical column is flagged for exactly those columns, with PSI and JS equal to a hand
computation; degraded labels raise the AUC alert after k windows and run the on-alert command once
within its cooldown; a label stream that stops raises nothing."""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import SMALL_SHAPE
from tritonrec.monitoring.alerts import ActionRunner, AuditLog
from tritonrec.monitoring.drift import PSI_EPSILON
from tritonrec.monitoring.profile import build_profile
from tritonrec.monitoring.watch import OTHER, Watch
from tritonrec.pipeline.synthetic import CATEGORICAL, CONTINUOUS, LABEL, CriteoGenerator

ROWS = 20_000


def _scored(criteo_trained, seed: int) -> pd.DataFrame:
    """ROWS raw rows of the small Criteo shape with the trained model's probabilities and true labels,
    in the sink's schema."""
    from tritonrec.pipeline.train import plan_features
    from tritonrec.scorer.dlrm import predict

    pipeline = criteo_trained["pipeline"]
    rows = CriteoGenerator(SMALL_SHAPE).sample(ROWS, seed=seed)
    dense, ids = plan_features(pipeline.plan, {c: rows[c] for c in CONTINUOUS + CATEGORICAL})
    frame = pd.DataFrame({c: rows[c] for c in CONTINUOUS + CATEGORICAL})
    return frame.assign(probability=predict(pipeline.model, dense, ids), label=rows[LABEL].astype(np.int8), model="criteo_transform",
                        model_version=1, scorer="criteo_scorer", scorer_version=1)


@pytest.fixture(scope="module")
def profiled(criteo_trained):
    train = _scored(criteo_trained, seed=31)
    profile = build_profile(criteo_trained["pipeline"].plan, {c: train[c].to_numpy() for c in CONTINUOUS + CATEGORICAL}, top=100,
                            predictions=train["probability"].to_numpy(), labels=train["label"].to_numpy())
    return profile, _scored(criteo_trained, seed=32), train


def _psi_by_hand(entry, values):
    edges, counts = entry["edges"], entry["counts"]
    values = values[~np.isnan(values)]  # missing values are watched apart from the bins
    reference = [c / sum(counts) for c in counts]
    current = [np.sum(values <= edges[0])] + [np.sum((values > a) & (values <= b)) for a, b in zip(edges, edges[1:])] + [np.sum(values > edges[-1])]
    current = [c / len(values) for c in current]
    return sum((max(q, PSI_EPSILON) - max(p, PSI_EPSILON)) * math.log(max(q, PSI_EPSILON) / max(p, PSI_EPSILON)) for p, q in zip(reference, current))


def _js_of(p, q):
    p, q = np.asarray(p, float) / np.sum(p), np.asarray(q, float) / np.sum(q)
    m = (p + q) / 2
    kl = lambda a: sum(x * math.log2(x / y) for x, y in zip(a, m) if x > 0)  # noqa: E731
    return math.sqrt((kl(p) + kl(q)) / 2)


def _js_by_hand(entry, values):
    top = dict((v, c) for v, c in entry["top"])
    keys = list(top) + [OTHER]
    p = np.array([top[k] for k in keys[:-1]] + [entry["other"]], dtype=float)
    q = np.array([np.sum(values == k) for k in keys[:-1]] + [np.sum(~np.isin(values, keys[:-1]))], dtype=float)
    return _js_of(p, q)


def test_a_shift_in_two_columns_is_flagged_for_exactly_those(profiled):
    profile, fresh, _ = profiled
    watch = Watch(profile, window_rows=ROWS)
    unchanged = watch.add(fresh)
    assert unchanged is not None and not [c for c, r in unchanged["columns"].items() if r["drifted"]] and not unchanged["dataset_drift"]
    shifted = fresh.copy()
    shifted["I2"] = shifted["I2"] * 4 + 3  # a continuous column moved
    rare = int(profile.categorical["C5"]["top"][-1][0])
    shifted.loc[shifted.index[: ROWS // 2], "C5"] = rare  # half the rows take one of C5's rarest top values
    report = watch.add(shifted)
    drifted = sorted(c for c, r in report["columns"].items() if r["drifted"])
    assert drifted == ["C5", "I2"]
    assert report["columns"]["I2"]["value"] == pytest.approx(_psi_by_hand(profile.continuous["I2"], shifted["I2"].to_numpy()), rel=1e-9)
    assert report["columns"]["C5"]["value"] == pytest.approx(_js_by_hand(profile.categorical["C5"], shifted["C5"].to_numpy()), rel=1e-9)
    assert not report["dataset_drift"]  # 2 of 39 columns: below half
    metric = watch.registry.get_sample_value
    assert metric("tritonrec_feature_drift", {"column": "I2", "metric": "psi"}) == pytest.approx(report["columns"]["I2"]["value"])
    assert metric("tritonrec_feature_drift", {"column": "C5", "metric": "js"}) == pytest.approx(report["columns"]["C5"]["value"])
    assert report["prediction_psi"] is not None and metric("tritonrec_prediction_drift") == pytest.approx(report["prediction_psi"])


def _with_oov(plan, frame):
    """``frame`` with the sink's ``oov`` column as the transform gives it: per row, the raw columns whose
    value the plan encodes out of vocabulary."""
    found = plan.oov_inputs()
    outputs = plan.transform({c.name: frame[c.name].to_numpy() for c in plan.input_schema})
    flags = {column: (outputs[o] >= first) & (outputs[o] < end) for column, (o, first, end) in found.items()}
    return frame.assign(oov=[[c for c in found if flags[c][i]] for i in range(len(frame))])


def test_out_of_vocabulary_rows_get_their_own_bucket_and_rate(profiled, criteo_trained):
    """With the transform's flags (the ``oov`` column), each categorical column's JS is over top values
    + other + OOV and its OOV rate is compared with the profile's: new values in C26 flag C26 alone."""
    profile, fresh, _ = profiled
    plan = criteo_trained["pipeline"].plan
    watch = Watch(profile, window_rows=ROWS)
    unchanged = watch.add(_with_oov(plan, fresh))
    assert not [c for c, r in unchanged["columns"].items() if r["drifted"]]
    assert profile.categorical["C26"]["oov"] > 0  # the profile's rows hold values the vocabulary lacks
    for column, entry in profile.categorical.items():
        assert unchanged["columns"][column]["oov_rate"] == pytest.approx(entry["oov_rate"], abs=0.01)
    shifted = fresh.copy()
    shifted.loc[shifted.index[: ROWS // 5], "C26"] = -12345  # a value never fitted, a fifth of the rows
    shifted = _with_oov(plan, shifted)
    report = watch.add(shifted)
    assert sorted(c for c, r in report["columns"].items() if r["drifted"]) == ["C26"]
    entry, values = profile.categorical["C26"], shifted["C26"].to_numpy()
    oov = np.array(["C26" in row for row in shifted["oov"]])
    top = [v for v, _ in entry["top"]]
    p = [c for _, c in entry["top"]] + [entry["other"] - entry["oov"], entry["oov"]]  # the profile's OOV rows were 'other'
    q = [np.sum((values == v) & ~oov) for v in top] + [np.sum(~np.isin(values, top) & ~oov), oov.sum()]
    assert report["columns"]["C26"]["value"] == pytest.approx(_js_of(p, q), rel=1e-9)
    assert report["columns"]["C26"]["oov_rate"] == pytest.approx(oov.mean()) and oov.mean() >= 0.2
    assert watch.registry.get_sample_value("tritonrec_feature_oov_rate", {"column": "C26"}) == pytest.approx(oov.mean())


def test_degraded_labels_raise_the_auc_alert_and_run_the_action_once(profiled, tmp_path):
    profile, fresh, _ = profiled
    audit = AuditLog(tmp_path / "audit.jsonl")
    ran = tmp_path / "ran.txt"
    action = ActionRunner(f"{sys.executable} -c \"import os, sys; open(sys.argv[1], 'a').write(os.environ['TRITONREC_ALERT'] + '\\n')\" {ran}",
                          audit, cooldown_s=3600)
    watch = Watch(profile, window_rows=2000, quality_rows=2000, quality_min_rows=1000, alert_windows=2, audit=audit, action=action)
    windows = [fresh.iloc[i:i + 2000] for i in range(0, ROWS, 2000)]
    good = [watch.add(w) for w in windows[:2]]
    key = ("criteo_scorer", 1)
    assert all(r["quality"][key]["auc"] >= profile.validation["auc"] - 0.02 for r in good)
    rng = np.random.default_rng(0)
    raised_at = None
    for i, window in enumerate(windows[2:6]):  # the labels now say nothing about the predictions
        report = watch.add(window.assign(label=rng.integers(0, 2, len(window)).astype(np.int8)))
        assert report["quality"][key]["auc"] < profile.validation["auc"] - 0.02
        if raised_at is None and watch.auc_alerts[key].active:
            raised_at = i
    assert raised_at == 1  # the second degraded window
    while action.running:
        action.poll()
    assert ran.read_text() == "auc_drop:criteo_scorer:1\n"  # once, though the alert held for two more windows
    events = [e["event"] for e in audit.read()]
    assert events.count("alert_raised") == 1 and events.count("action_started") == 1 and "action_finished" in events
    raised = next(e for e in audit.read() if e["event"] == "alert_raised")
    assert raised["values"]["reference_auc"] == pytest.approx(profile.validation["auc"]) and raised["window"]["window"] == 4
    assert watch.registry.get_sample_value("tritonrec_monitor_auc", {"model": "criteo_scorer", "version": "1"}) < 0.6
    assert watch.registry.get_sample_value("tritonrec_monitor_auc_reference") == pytest.approx(profile.validation["auc"])
    for column in ("C1", "C26"):
        assert watch.registry.get_sample_value("tritonrec_feature_oov_reference", {"column": column}) == profile.categorical[column]["oov_rate"]


def test_rows_of_several_windows_at_once_close_each_window(profiled):
    """One add of 2.5 windows' rows closes two windows, each reported (``closed``), the last returned;
    the half window waits for more rows or its time."""
    profile, fresh, _ = profiled
    now = [0.0]
    watch = Watch(profile, window_rows=4000, window_s=60, clock=lambda: now[0])
    last = watch.add(fresh.iloc[:10_000])
    assert [r["window"] for r in watch.closed] == [1, 2] and watch.closed[-1] is last and all(r["rows"] == 4000 for r in watch.closed)
    assert watch.tick() is None and watch.closed == []
    now[0] = 61.0
    assert watch.tick()["rows"] == 2000 and [r["window"] for r in watch.closed] == [3]


def test_a_label_stream_that_stops_raises_nothing(profiled, tmp_path):
    profile, fresh, _ = profiled
    audit = AuditLog(tmp_path / "audit.jsonl")
    now = [0.0]
    watch = Watch(profile, window_rows=2000, quality_min_rows=1000, alert_windows=1, audit=audit, clock=lambda: now[0])
    watch.add(fresh.iloc[:2000])
    for i in range(3):  # traffic goes on, labels stop; the rolling AUC keeps the last labelled rows and goes stale
        now[0] += 60
        report = watch.add(fresh.iloc[2000 * (i + 1): 2000 * (i + 2)].assign(label=np.nan))
        assert report["quality"][("criteo_scorer", 1)] is not None
    assert not any(a.active for a in watch.auc_alerts.values()) and [e["event"] for e in audit.read()] == []
    assert watch.registry.get_sample_value("tritonrec_monitor_auc_age_seconds", {"model": "criteo_scorer", "version": "1"}) == 180
    assert watch.close_window() is None  # an empty window: nothing to report


def test_the_monitor_command_alerts_on_degraded_labels_and_runs_the_action_once(profiled, criteo_trained, redis_server, tmp_path):
    """End to end through ``tritonrec monitor --profile --on-alert``: one-row requests in the
    streams, true labels then random ones; the AUC alert fires, the command runs once, every
    decision is audited, the gauges are served; a request of another plan is left out and counted."""
    import os
    import signal
    import subprocess
    import urllib.request

    import redis

    from tritonrec.monitoring import report_labels
    from tritonrec.serving.request_log import REQUEST_STREAM, RequestRecord, encode_record
    from tritonrec.serving.server import free_port

    _, fresh, train = profiled
    # windows of 1,000 rows: top-10 tables keep the JS distance's sampling noise (about 0.06) under its 0.1
    profile = build_profile(criteo_trained["pipeline"].plan, {c: train[c].to_numpy() for c in CONTINUOUS + CATEGORICAL}, top=10,
                            predictions=train["probability"].to_numpy(), labels=train["label"].to_numpy())
    path = profile.save(tmp_path / "profile.json")
    rows = fresh.iloc[:4001]  # 4,000 watched (one is of another plan): four windows of 1,000
    rng = np.random.default_rng(1)
    labels = np.r_[rows["label"].to_numpy()[:2001], rng.integers(0, 2, 2000)]
    client = redis.Redis.from_url(redis_server.url)
    pipe = client.pipeline(transaction=False)
    for i in range(len(rows)):
        row = rows.iloc[i:i + 1]
        tensors = {c: row[c].to_numpy().reshape(1, 1) for c in CONTINUOUS + CATEGORICAL}
        plan = profile.plan_fingerprint if i != 7 else "f" * 64  # one request transformed by another plan
        pipe.xadd(REQUEST_STREAM, encode_record(RequestRecord(10_000 + i, "features", "criteo_transform", 1, 1, tensors, plan=plan)))
        pipe.xadd(REQUEST_STREAM, encode_record(RequestRecord(10_000 + i, "prediction", "criteo_scorer", 1, 1,
                                                              {"probability": row["probability"].to_numpy().reshape(1, 1).astype(np.float32)})))
    pipe.execute()
    report_labels(redis_server.url, [10_000 + i for i in range(len(rows))], labels.tolist())
    ran = tmp_path / "ran.txt"
    on_alert = f"{sys.executable} -c \"import os, sys; open(sys.argv[1], 'a').write(os.environ['TRITONREC_ALERT'] + '\\n')\" {ran}"
    port = free_port("127.0.0.1")
    process = subprocess.Popen(
        [sys.executable, "-m", "tritonrec.cli", "monitor", "--redis", redis_server.url, "--sink", str(tmp_path / "sink"),
         "--label-window", "30", "--profile", str(path), "--on-alert", on_alert, "--window-rows", "1000", "--quality-rows", "1000",
         "--alert-windows", "2", "--metrics-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        while not ran.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert ran.exists() and ran.read_text() == "auc_drop:criteo_scorer:1\n", err
    audit = AuditLog(tmp_path / "sink" / "_monitor_audit.jsonl").read()
    assert [e["event"] for e in audit].count("alert_raised") == 1 and [e["event"] for e in audit].count("action_started") == 1
    assert 'tritonrec_monitor_auc{model="criteo_scorer",version="1"}' in metrics and "tritonrec_feature_drift{" in metrics
    assert "tritonrec_monitor_rows_other_plan_total 1.0" in metrics
    assert "tritonrec_dataset_drift 0.0" in metrics and "dataset_drift" not in [e.get("alert") for e in audit]
    assert f"requests of plan {'f' * 64} are not compared with the profile" in err
    assert all(f"tritonrec monitor: window {w}: 1,000 rows" in err for w in (1, 2, 3, 4)), err  # every window logged


def test_columns_and_values_the_profile_never_saw(profiled):
    """A column the profile lacks is ignored; a profiled column the traffic lacks has no value (not
    drifted, no alert); a categorical value never seen counts in the profile's "other"."""
    profile, fresh, _ = profiled
    window = fresh.drop(columns=["I3"]).assign(new_feature=1.0)
    window["C1"] = -12345  # a value no training row had
    report = Watch(profile, window_rows=ROWS).add(window)
    assert "new_feature" not in report["columns"] and report["columns"]["I3"] == {"metric": "psi", "value": None, "drifted": False}
    entry = profile.categorical["C1"]
    assert report["columns"]["C1"]["value"] == pytest.approx(_js_by_hand(entry, window["C1"].to_numpy()), rel=1e-9)
    assert report["columns"]["C1"]["drifted"]
    with pytest.raises(ValueError, match="window_rows 0"):
        Watch(profile, window_rows=0)
    for bad, words in (({"js_alert": 0}, "js_alert 0: expected a number in \\(0, 1\\]"), ({"oov_alert": 1.5}, "oov_alert 1.5"),
                       ({"auc_drop": -0.1}, "auc_drop -0.1"), ({"psi_alert": float("nan")}, "psi_alert nan"),
                       ({"psi_warn": 0.3}, "psi_warn 0.3 is above psi_alert 0.25")):
        with pytest.raises(ValueError, match=words):
            Watch(profile, **bad)
    # a column the training rows never had a value in (all missing there): no reference, no verdict
    import dataclasses

    empty = {**profile.categorical, "C2": {"top": [], "other": 0, "missing": profile.rows, "oov": 0, "oov_rate": 0.0, "source": "data"}}
    report = Watch(dataclasses.replace(profile, categorical=empty), window_rows=ROWS).add(fresh)
    assert report["columns"]["C2"] == {"metric": "js", "value": None, "drifted": False} and report["columns"]["C3"]["value"] is not None


def test_the_monitor_refuses_a_profile_of_another_plan_than_the_one_served(profiled, redis_server, tmp_path, capsys):
    """The newest features record in the stream says which plan is served: a profile of another plan
    is refused by name before anything is read; with no record yet, or the same plan, it starts."""
    import redis

    from tritonrec.cli import main
    from tritonrec.monitoring.monitor import Monitor
    from tritonrec.monitoring.profile import ProfileError
    from tritonrec.serving.request_log import REQUEST_STREAM, RequestRecord, encode_record

    profile = profiled[0]
    path = profile.save(tmp_path / "profile.json")
    Monitor(redis_server.url, tmp_path / "sink", watch=Watch(profile), group="empty")  # nothing served yet: starts
    client = redis.Redis.from_url(redis_server.url)
    tensors = {"I1": np.ones((1, 1))}
    client.xadd(REQUEST_STREAM, encode_record(RequestRecord(1, "features", "criteo_transform", 1, 1, tensors, plan=profile.plan_fingerprint)))
    client.xadd(REQUEST_STREAM, encode_record(RequestRecord(2, "features", "criteo_transform", 2, 2, tensors, plan="e" * 64)))
    for key in range(2, 40):  # the newest features record lies pages back (the monitor reads 16 entries at a time)
        client.xadd(REQUEST_STREAM, encode_record(RequestRecord(key, "prediction", "criteo_scorer", 1, 2, {"probability": np.ones((1, 1))})))
    with pytest.raises(ProfileError, match=f"built for plan {profile.plan_fingerprint}; model 'criteo_transform' serves plan {'e' * 64}"):
        Monitor(redis_server.url, tmp_path / "sink", watch=Watch(profile))
    assert main(["monitor", "--redis", redis_server.url, "--sink", str(tmp_path / "sink"), "--profile", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"--profile {path}: the profile was built for plan {profile.plan_fingerprint}" in err and "build the profile of the plan now served" in err
    assert not (tmp_path / "sink").exists() or not list((tmp_path / "sink").glob("date=*"))  # nothing read, nothing written
    client.xadd(REQUEST_STREAM, encode_record(RequestRecord(3, "features", "criteo_transform", 1, 3, tensors, plan=profile.plan_fingerprint)))
    Monitor(redis_server.url, tmp_path / "sink", watch=Watch(profile))  # the profile's plan served again: starts


def test_windows_too_small_for_the_js_threshold_are_warned_about(profiled, tmp_path, capsys):
    """With 100 top values, 1,000-row windows give JS distances near the 0.1 threshold from sampling
    alone: the watch knows each column's noise (js_noise) and the command warns at start, naming them."""
    from tritonrec.cli import main
    from tritonrec.monitoring.drift import js_noise

    profile = profiled[0]
    small, large = Watch(profile, window_rows=1000), Watch(profile, window_rows=100_000)
    entry = profile.categorical["C26"]
    assert small.js_noise["C26"] == js_noise([c for _, c in entry["top"]] + [entry["other"]], 1000)
    noisy = small.noisy_columns()
    assert "C26" in noisy and all(v >= 0.05 for v in noisy.values()) and not large.noisy_columns()
    path = profile.save(tmp_path / "profile.json")
    code = main(["monitor", "--redis", "redis://127.0.0.1:1", "--sink", str(tmp_path / "sink"), "--profile", str(path), "--window-rows", "1000"])
    err = capsys.readouterr().err
    assert code == 1 and "warning: in windows of 1,000 rows, sampling alone gives a JS distance of" in err
    assert f"({len(noisy)} columns at half of --js-alert 0.1 or more)" in err and "--window-rows" in err
