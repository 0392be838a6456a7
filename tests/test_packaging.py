"""Installing as a package: ``pip install ".[training]"`` resolves to the set that runs NVTabular
23.08 (the pins of requirements/constraints.txt, under which this suite runs), not numpy 2 beside
pandas 1.5 (``numpy.dtype size changed`` on ``import nvtabular``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_TRAINING = {"nvidia-pytriton"}  # the server extra's


def _pins(lines: list[str]) -> dict[str, str]:
    """name -> version of every ``name==version`` requirement."""
    found = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+).*", line)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def _constraints() -> dict[str, str]:
    return _pins((ROOT / "requirements" / "constraints.txt").read_text().splitlines())


def test_the_training_extra_pins_what_the_constraints_pin():
    extra = _pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["training"])
    wanted = {name: version for name, version in _constraints().items() if name not in NOT_TRAINING}
    assert extra == {**extra, **wanted}, "pyproject.toml's training extra and requirements/constraints.txt disagree"


def test_the_training_extra_resolves_to_the_pinned_set(tmp_path):
    """What a fresh ``pip install ".[training]"`` would install (resolved, not installed)."""
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-build-isolation", "--quiet",
         "--report", str(report), f"{ROOT}[training]"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    resolved = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    for name, version in _constraints().items():
        if name not in NOT_TRAINING:
            assert resolved.get(name) == version, f"{name}: resolves to {resolved.get(name)}, the working set has {version}"
    assert resolved["numpy"].startswith("1."), resolved["numpy"]


def test_merlin_writes_parquet_in_the_pinned_set(tmp_path):
    """tensorflow-metadata 1.21 (unpinned) made merlin.io's to_parquet raise ImportError."""
    pd = pytest.importorskip("pandas")
    from merlin.io import Dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Dataset(pd.DataFrame({"a": [1, 2, 3]}), cpu=True).to_parquet(str(tmp_path / "out"))
    assert list((tmp_path / "out").glob("*.parquet"))
