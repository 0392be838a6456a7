"""The README's main job, at a small size: fit, compile, export, serve, check, report."""

from __future__ import annotations

import pytest

from tritonrec.pipeline.demo import DemoOptions, run_demo

pytestmark = pytest.mark.triton


def test_demo_runs_end_to_end(tmp_path, capsys):
    code = run_demo(DemoOptions(workdir=str(tmp_path), train_rows=5_000, eval_rows=2_500, requests=5))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Parity, in process, plan vs nvtabular.Workflow.transform: 2500 rows x 39 columns: exact" in out
    assert "Parity, served by tritonserver (per-column, model 'criteo_transform'): 2500 rows x 39 columns: exact" in out
    assert "Parity, served by tritonserver (packed, model 'criteo_transform_packed'): 2500 rows x 39 columns: exact" in out
    assert "| packed     |  1024 |" in out
    assert (tmp_path / "model_repository" / "criteo_transform_packed" / "1" / "plan" / "manifest.json").is_file()
    assert "demo: all parity checks passed" in out
