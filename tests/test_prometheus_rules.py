"""deploy/prometheus/'s rules checked and unit-tested by Prometheus's own promtool (scripts/setup.sh
puts it in the venv) on synthetic series: the recording rules' values and each alert's firing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus"


def _promtool() -> str:
    found = Path(sys.executable).with_name("promtool")
    if found.is_file():
        return str(found)
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("needs promtool (scripts/setup.sh takes it from Debian's prometheus package)")
    return path


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_the_rules_are_valid_and_pass_their_unit_tests():
    checked = _run("check", "rules", "tritonrec-rules.yml", cwd=RULES)
    assert checked.returncode == 0 and "SUCCESS: 12 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = _run("test", "rules", "tritonrec-rules.test.yml", cwd=RULES / "tests")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_the_unit_tests_catch_a_changed_rule(tmp_path):
    """The same tests against rules with the GPU cache alert's threshold moved fail."""
    (tmp_path / "tests").mkdir()
    rules = (RULES / "tritonrec-rules.yml").read_text()
    assert 'tier="gpu"} < 0.8' in rules
    (tmp_path / "tritonrec-rules.yml").write_text(rules.replace('tier="gpu"} < 0.8', 'tier="gpu"} < 0.6'))
    shutil.copy(RULES / "tests" / "tritonrec-rules.test.yml", tmp_path / "tests")
    tested = _run("test", "rules", "tritonrec-rules.test.yml", cwd=tmp_path / "tests")
    assert tested.returncode != 0 and "TritonrecGpuCacheHitRateLow" in tested.stdout + tested.stderr
