"""The README's main job, at a small size: data, fit, train, export, serve, score, report."""

from __future__ import annotations

import re

import pytest

from tritonrec.pipeline.demo import DemoOptions, run_demo

pytestmark = pytest.mark.triton


def test_demo_runs_end_to_end(tmp_path, capsys):
    code = run_demo(DemoOptions(workdir=str(tmp_path), train_rows=5_000, eval_rows=2_000, requests=5))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Parity, in process, plan vs nvtabular.Workflow.transform: 2000 rows x 39 columns: exact" in out
    parity = re.search(r"Parity, served ensemble vs PyTorch on Workflow.transform \(2,000 rows\): max \|difference\| (\S+) \(within 1e-5\)", out)
    assert parity and float(parity.group(1)) <= 1e-5
    single = re.search(r"Parity at batch 1 \(200 rows, one request each\): max \|difference\| (\S+); the timed requests below: (\S+) \(within 1e-5\)", out)
    assert single and float(single.group(1)) <= 1e-5 and float(single.group(2)) <= 1e-5
    auc = re.search(r"AUC on 2,000 held-out rows: served DLRM (\S+), hidden model (\S+), ratio (\S+)", out)
    assert auc and 0.5 < float(auc.group(1)) <= 1 and 0.5 < float(auc.group(2)) <= 1
    assert re.search(r"\|  1024 \| +[\d.]+ \| +[\d.]+ \| +[\d.]+ \|", out)
    # a quarter of the rows in host memory, the rest read from RocksDB: both tiers report
    host = re.search(r"host: ([\d,]+) lookups, ([\d,]+) hits", out)
    rocksdb = re.search(r"rocksdb: ([\d,]+) lookups, ([\d,]+) hits", out)
    assert host and rocksdb
    host_lookups, host_hits = (int(g.replace(",", "")) for g in host.groups())
    assert host_lookups > 0 and 0 < host_hits < host_lookups
    assert int(rocksdb.group(1).replace(",", "")) == host_lookups - host_hits
    for model in ("criteo", "criteo_transform", "criteo_embeddings", "criteo_scorer"):
        assert (tmp_path / "model_repository" / model / "config.pbtxt").is_file()
    assert "demo: all parity checks passed" in out
    # the training profile for tritonrec monitor --profile, of the plan served, with the validation AUC printed above
    from tritonrec.monitoring.profile import Profile
    from tritonrec.transform.plan import TransformPlan

    assert f"Training profile (tritonrec monitor --profile): {tmp_path / 'profile.json'}" in out
    plan = TransformPlan.load(next((tmp_path / "model_repository" / "criteo_transform" / "1").glob("plan*")))
    profile = Profile.load(tmp_path / "profile.json", plan.fingerprint)
    assert profile.rows == 5_000 and profile.validation["rows"] == 2_000
    assert abs(profile.validation["auc"] - float(auc.group(1))) <= 1e-4  # the offline AUC; the served one is printed to 4 places
