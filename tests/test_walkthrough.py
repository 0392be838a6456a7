"""The README's "Serve your own model" section, replayed block by block as a user would run it: an
NVTabular workflow of an int, a string and a list column, tables and a scorer that are not
tritonrec's DLRM, export, serve, query and perf through the real tritonserver and perf_analyzer.
The served predictions are then checked against the model run in process for the same rows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.triton
README = Path(__file__).resolve().parent.parent / "README.md"


def section_blocks(title: str = "Serve your own model") -> list[tuple[str, str]]:
    """The fenced ``(language, code)`` blocks of a ``## title`` section of the README, in order."""
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end > 0 else len(text)]
    return re.findall(r"```(python|bash)\n(.*?)```", section, flags=re.S)


def test_the_section_covers_the_path_in_order():
    code = "\n".join(body for _, body in section_blocks())
    steps = ["workflow.save(", "check_parity(", "build_store_from_state_dict(", "save_scorer(", "embedding-cache build",
             "tritonrec export ", "tritonrec serve ", "tritonrec query ", "tritonrec perf "]
    positions = [code.find(s) for s in steps]
    assert -1 not in positions, dict(zip(steps, positions))
    assert positions == sorted(positions)


def test_walkthrough_runs_and_serves_the_model_it_built(tmp_path):
    script = ["set -euo pipefail"]
    for i, (language, body) in enumerate(section_blocks()):
        script.append(f"echo '--- block {i} ({language})'")
        if language == "python":  # as a script file: TorchScript reads the scorer class's source
            (tmp_path / f"block_{i}.py").write_text(body)
            body = f"python block_{i}.py\n"
        script.append(body)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
                         start_new_session=True)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert re.search(r"2000 rows x 5 columns: exact", output), output[-3000:]
    assert "wrote ensemble" in output and "scored 2,000 rows with shop" in output
    table = [line for line in run.stdout.splitlines() if re.match(r"\| (1|64|1024) \| 1 \|", line)]
    assert len(table) == 3, output[-3000:]
    assert "equal the model run in process from" in output
    assert not (tmp_path / "endpoints.json").exists(), "serve stopped and removed its endpoints file"

    # the served answers are the model's: the ensemble run in process from the repository, for the same rows
    from tritonrec.serving.reference import ServedReference, repository_configs
    from tritonrec.serving.query import RequestBuilder

    predictions = pd.read_parquet(tmp_path / "predictions.parquet")
    requests = pd.read_parquet(tmp_path / "requests.parquet")
    assert len(predictions) == 2000
    np.testing.assert_array_equal(predictions["label"].to_numpy(), requests["label"].to_numpy())
    configs = repository_configs(tmp_path / "repository")
    reference = ServedReference(tmp_path / "repository", "shop", configs)
    try:
        builder = RequestBuilder(configs("shop", -1)[1])
        expected = reference(builder.tensors(requests))["probability"].reshape(-1)
    finally:
        reference.close()
    np.testing.assert_allclose(predictions["probability"].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert 0 < expected.min() and expected.max() < 1 and expected.std() > 0
    # the parquet-built store holds the same tables
    from embedding_cache import EmbeddingStore

    with EmbeddingStore(tmp_path / "store") as a, EmbeddingStore(tmp_path / "store_from_parquet") as b:
        keys = np.arange(5, dtype=np.int64)
        for table in ("user", "city", "genres"):
            np.testing.assert_array_equal(a.lookup(table, keys), b.lookup(table, keys))
