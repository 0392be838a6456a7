"""Alerts over consecutive windows, the on-alert command (one at a time, cooldown, timeout, a
failing or missing command) with real subprocesses, and the audit log of every decision."""

from __future__ import annotations

import json
import sys
import time

import pytest

from tritonrec.monitoring.alerts import ActionRunner, Alert, AuditLog


def _wait_idle(runner: ActionRunner, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while runner.running and time.monotonic() < deadline:
        runner.poll()
        time.sleep(0.02)
    assert not runner.running


def test_an_alert_needs_k_windows_and_a_window_without_data_changes_nothing(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    alert = Alert("auc_drop", windows=3, audit=audit)
    window = {"rows": 1000}
    steps = [alert.update(b, {"auc": 0.7}, window) for b in (True, False, True, True, None, True, True, None, False, False)]
    assert steps == [None, None, None, None, None, "raised", None, None, "cleared", None]
    entries = audit.read()
    assert [e["event"] for e in entries] == ["alert_raised", "alert_cleared"]
    assert entries[0]["alert"] == "auc_drop" and entries[0]["values"] == {"auc": 0.7} and entries[0]["window"] == window
    assert entries[0]["consecutive_windows"] == 3
    with pytest.raises(ValueError, match="windows 0: expected an integer >= 1"):
        Alert("x", windows=0)


def test_the_command_runs_once_at_a_time_then_cools_down(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    out = tmp_path / "ran.txt"
    script = "import os, sys, time; time.sleep(0.5); open(sys.argv[1], 'a').write(os.environ['TRITONREC_ALERT'] + ' ' + os.environ['TRITONREC_ALERT_VALUES'] + '\\n')"
    runner = ActionRunner(f"{sys.executable} -c \"{script}\" {out}", audit, cooldown_s=3600, timeout_s=30)
    assert runner.trigger("auc_drop", {"auc": 0.71}) == "started"
    assert runner.trigger("auc_drop", {"auc": 0.70}) == "running"  # at most one at a time
    _wait_idle(runner)
    assert runner.trigger("drift", {"psi": 0.3}) == "cooling_down"
    assert out.read_text() == 'auc_drop {"auc": 0.71}\n'  # ran once, with the alert's name and values
    events = [(e["event"], e.get("reason"), e.get("exit_code")) for e in audit.read()]
    assert events == [("action_started", None, None), ("action_skipped", "running", None), ("action_finished", None, 0),
                      ("action_skipped", "cooling_down", None)]


def test_the_cooldown_counts_from_the_last_start(tmp_path):
    now = [0.0]
    audit = AuditLog(tmp_path / "audit.jsonl")
    runner = ActionRunner(f"{sys.executable} -c pass", audit, cooldown_s=10, timeout_s=30, clock=lambda: now[0])
    assert runner.trigger("a", {}) == "started"
    _wait_idle(runner)
    now[0] = 9.9
    assert runner.trigger("a", {}) == "cooling_down"
    assert audit.read()[-1]["cooldown_left_s"] == pytest.approx(0.1)
    now[0] = 10.0
    assert runner.trigger("a", {}) == "started"
    _wait_idle(runner)


def test_a_failing_a_hanging_and_a_missing_command_are_audited_and_the_caller_goes_on(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    failing = ActionRunner(f"{sys.executable} -c \"raise SystemExit(3)\"", audit, cooldown_s=0)
    assert failing.trigger("a", {}) == "started"
    _wait_idle(failing)
    assert audit.read()[-1]["event"] == "action_finished" and audit.read()[-1]["exit_code"] == 3
    hanging = ActionRunner(f"{sys.executable} -c \"import time; time.sleep(60)\"", audit, cooldown_s=0, timeout_s=0.5)
    started = time.monotonic()
    assert hanging.trigger("a", {}) == "started"
    assert time.monotonic() - started < 0.5  # trigger does not wait for the command
    time.sleep(0.7)
    hanging.poll()
    assert not hanging.running
    last = audit.read()[-1]
    assert last["event"] == "action_timed_out" and last["exit_code"] != 0 and last["seconds"] >= 0.5
    missing = ActionRunner("/no/such/retrain --now", audit, cooldown_s=60)
    assert missing.trigger("a", {"auc": 0.6}) == "failed_to_start"
    assert audit.read()[-1]["event"] == "action_failed_to_start" and "/no/such/retrain" in audit.read()[-1]["error"]
    assert missing.trigger("a", {}) == "cooling_down"  # not retried every window
    with pytest.raises(ValueError, match="on-alert command is empty"):
        ActionRunner("  ", audit)


def test_close_waits_then_kills_a_run(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    runner = ActionRunner(f"{sys.executable} -c \"import time; time.sleep(60)\"", audit, timeout_s=600)
    runner.trigger("a", {})
    runner.close(timeout_s=0.3)
    assert not runner.running
    last = audit.read()[-1]
    assert last["event"] == "action_timed_out" and last["reason"] == "monitor stopping" and last["exit_code"] != 0


def test_the_audit_log_appends_json_lines_and_refuses_an_unwritable_path(tmp_path):
    audit = AuditLog(tmp_path / "deep" / "audit.jsonl")
    audit.write("alert_raised", values={"auc": 0.5})
    AuditLog(tmp_path / "deep" / "audit.jsonl").write("alert_cleared")  # a restart appends
    lines = (tmp_path / "deep" / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["alert_raised", "alert_cleared"]
    assert json.loads(lines[0])["time"].endswith("+00:00")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match=f"audit log {blocker / 'audit.jsonl'}: cannot write there"):
        AuditLog(blocker / "audit.jsonl")
