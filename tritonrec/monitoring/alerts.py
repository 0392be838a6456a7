"""Alerts that act: an alert over consecutive windows, the ``--on-alert`` command it runs, and the
audit log of every decision (issue 18).

- :class:`AuditLog`: decisions as JSON lines (``time``, ``event`` and the values and window that
  caused them), each line flushed and synced before the call returns.
- :class:`Alert`: raised when its condition holds for ``windows`` consecutive windows, cleared at
  the first window where it does not; a window without data (``None``) neither raises nor clears
  it (a label stream that stops must not raise a false alert).
- :class:`ActionRunner`: runs the command when an alert is raised, never blocking the caller: at
  most one run at a time, none within ``cooldown_s`` of the last start, killed after ``timeout_s``;
  started, skipped, finished (with the exit code), failed to start and timed out are all audited.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


class AuditLog:
    """Appends one JSON object a line to ``path`` (its directory created). OSError naming the path
    when it cannot be written (checked when made)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8"):
                pass
        except OSError as e:
            raise OSError(f"audit log {self.path}: cannot write there ({e.strerror or e})") from None

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        """Appends ``{"time": <UTC ISO 8601>, "event": event, **fields}``; returns it."""
        entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"), "event": event, **fields}
        line = json.dumps(entry, default=_json_default, sort_keys=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return entry

    def read(self) -> list[dict[str, Any]]:
        """Every entry so far, oldest first."""
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _json_default(value: Any) -> Any:
    """numpy scalars and other numbers as JSON numbers; anything else as its text."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


class Alert:
    """An alert named ``name`` over windows (see the module's docstring).

    Args:
        windows: consecutive breaching windows that raise it (>= 1).
        audit: where ``alert_raised`` / ``alert_cleared`` go, with the values and the window.
    """

    def __init__(self, name: str, windows: int = 3, audit: AuditLog | None = None) -> None:
        if int(windows) != windows or windows < 1:
            raise ValueError(f"windows {windows!r}: expected an integer >= 1")
        self.name, self.windows, self.audit = name, int(windows), audit
        self.active = False
        self.streak = 0

    def update(self, breached: bool | None, values: Mapping[str, Any], window: Mapping[str, Any]) -> str | None:
        """One window's verdict: True (the condition holds), False, or None (no data: nothing
        changes). Returns ``"raised"`` or ``"cleared"`` when the alert changes, else None."""
        if breached is None:
            return None
        if not breached:
            self.streak = 0
            if self.active:
                self.active = False
                self._audit("alert_cleared", values, window)
                return "cleared"
            return None
        self.streak += 1
        if not self.active and self.streak >= self.windows:
            self.active = True
            self._audit("alert_raised", values, window)
            return "raised"
        return None

    def _audit(self, event: str, values: Mapping[str, Any], window: Mapping[str, Any]) -> None:
        if self.audit is not None:
            self.audit.write(event, alert=self.name, values=dict(values), window=dict(window), consecutive_windows=self.streak)


class ActionRunner:
    """Runs ``command`` (split like a shell line, run without a shell) for raised alerts.

    The command's environment has ``TRITONREC_ALERT`` (the alert's name) and
    ``TRITONREC_ALERT_VALUES`` (JSON of the values that raised it). Its output goes to
    ``output`` (default: the monitor's stderr).

    Args:
        cooldown_s: seconds after a run starts during which another is not started.
        timeout_s: seconds a run may take; then it is killed (and audited as ``action_timed_out``).

    Raises:
        ValueError: an empty command, or a negative cooldown or non-positive timeout.
    """

    def __init__(self, command: str, audit: AuditLog, *, cooldown_s: float = 3600.0, timeout_s: float = 3600.0,
                 output: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.argv = shlex.split(command)
        if not self.argv:
            raise ValueError("on-alert command is empty: expected a command line")
        if cooldown_s < 0 or timeout_s <= 0:
            raise ValueError(f"cooldown_s {cooldown_s} / timeout_s {timeout_s}: expected >= 0 / > 0")
        self.audit, self.cooldown_s, self.timeout_s, self.output, self.clock = audit, cooldown_s, timeout_s, output, clock
        self._process: subprocess.Popen[bytes] | None = None
        self._started_at: float | None = None
        self._alert = ""

    @property
    def running(self) -> bool:
        return self._process is not None

    def trigger(self, alert: str, values: Mapping[str, Any]) -> str:
        """Starts the command for ``alert`` unless one runs or the cooldown holds. Returns
        ``"started"``, ``"running"``, ``"cooling_down"`` or ``"failed_to_start"`` (each audited)."""
        self.poll()
        now = self.clock()
        if self._process is not None:
            self.audit.write("action_skipped", alert=alert, reason="running", command=self.argv)
            return "running"
        if self._started_at is not None and now - self._started_at < self.cooldown_s:
            self.audit.write("action_skipped", alert=alert, reason="cooling_down", command=self.argv,
                             cooldown_left_s=round(self.cooldown_s - (now - self._started_at), 3))
            return "cooling_down"
        env = {**os.environ, "TRITONREC_ALERT": alert, "TRITONREC_ALERT_VALUES": json.dumps(dict(values), default=_json_default)}
        try:
            self._process = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL, stdout=self.output, stderr=self.output)
        except OSError as e:
            self.audit.write("action_failed_to_start", alert=alert, command=self.argv, error=f"{type(e).__name__}: {e}")
            self._started_at = now  # the cooldown holds: a broken command is not retried every window
            return "failed_to_start"
        self._started_at, self._alert = now, alert
        self.audit.write("action_started", alert=alert, command=self.argv, pid=self._process.pid, values=dict(values))
        return "started"

    def poll(self) -> None:
        """Reaps a finished run (audited with its exit code) or kills one past ``timeout_s``."""
        if self._process is None:
            return
        code = self._process.poll()
        elapsed = self.clock() - (self._started_at or 0.0)
        if code is None and elapsed > self.timeout_s:
            self._process.kill()
            code = self._process.wait()
            self.audit.write("action_timed_out", alert=self._alert, command=self.argv, seconds=round(elapsed, 3), exit_code=code)
            self._process = None
        elif code is not None:
            self.audit.write("action_finished", alert=self._alert, command=self.argv, seconds=round(elapsed, 3), exit_code=code)
            self._process = None

    def close(self, timeout_s: float = 10.0) -> None:
        """Waits up to ``timeout_s`` for a run, then kills it (audited as timed out)."""
        deadline = time.monotonic() + timeout_s
        while self._process is not None and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.05)
        if self._process is not None:
            self._process.kill()
            code = self._process.wait()
            self.audit.write("action_timed_out", alert=self._alert, command=self.argv, exit_code=code, reason="monitor stopping")
            self._process = None
