"""The reference profile of the trained Criteo pipeline: column kinds from the plan, quantile bins
and missing counts, Categorify's fit-time top values, OOV rates against the vocabulary, the
validation AUC; saved sealed, refused when edited or of another plan."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tritonrec.integrity import IntegrityError
from tritonrec.monitoring.profile import Profile, ProfileError, build_profile, column_kinds
from tritonrec.monitoring.quality import auc, log_loss
from tritonrec.pipeline.synthetic import CATEGORICAL, CONTINUOUS, LABEL


@pytest.fixture(scope="module")
def profiled(criteo_trained):
    pipeline, held = criteo_trained["pipeline"], criteo_trained["held_out"]
    columns = {c: held[c] for c in CONTINUOUS + CATEGORICAL}
    profile = build_profile(pipeline.plan, columns, bins=10, top=5, workflow_dir=pipeline.workflow_dir,
                            predictions=criteo_trained["expected"], labels=held[LABEL])
    return profile, columns


def test_columns_are_sorted_by_what_the_plan_does_with_them(criteo_trained):
    assert column_kinds(criteo_trained["pipeline"].plan) == (list(CONTINUOUS), list(CATEGORICAL))


def test_continuous_columns_get_quantile_bins_and_missing_counts(profiled):
    profile, columns = profiled
    for column in CONTINUOUS:
        values = np.asarray(columns[column], dtype=np.float64)
        entry = profile.continuous[column]
        finite = values[~np.isnan(values)]
        assert entry["missing"] == int(np.isnan(values).sum())
        np.testing.assert_allclose(entry["edges"], np.unique(np.quantile(finite, np.arange(1, 10) / 10)))
        edges = entry["edges"]
        by_hand = [int((finite <= edges[0]).sum())] + [int(((finite > a) & (finite <= b)).sum()) for a, b in zip(edges, edges[1:])] \
            + [int((finite > edges[-1]).sum())]
        assert entry["counts"] == by_hand and sum(by_hand) + entry["missing"] == profile.rows == len(values)


def test_categorical_columns_take_categorifys_fit_counts_and_their_oov_rate(profiled, criteo_trained):
    profile, columns = profiled
    workflow = criteo_trained["pipeline"].workflow_dir
    for column in CATEGORICAL:
        entry = profile.categorical[column]
        vocabulary = pd.read_parquet(workflow / "categories" / f"unique.{column}.parquet").dropna()
        fit = sorted(zip(vocabulary[column].tolist(), vocabulary[f"{column}_size"].tolist()), key=lambda p: -p[1])
        assert entry["source"] == "categorify" and [tuple(p) for p in entry["top"]] == fit[:5]
        assert entry["other"] == sum(c for _, c in fit[5:])
        values = np.asarray(columns[column])
        unseen = int(np.isin(values, vocabulary[column].to_numpy(), invert=True).sum())
        assert entry["oov"] == unseen and entry["oov_rate"] == pytest.approx(unseen / len(values))
    assert any(e["oov_rate"] > 0 for e in profile.categorical.values())  # the held-out rows have unseen values


def test_without_the_workflow_the_counts_come_from_the_data(criteo_trained):
    held = criteo_trained["held_out"]
    columns = {c: held[c] for c in CONTINUOUS + CATEGORICAL}
    profile = build_profile(criteo_trained["pipeline"].plan, columns, top=3)
    values, counts = np.unique(held["C3"], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    entry = profile.categorical["C3"]
    assert entry["source"] == "data" and entry["top"] == [[int(values[i]), int(counts[i])] for i in order[:3]]
    assert entry["other"] == len(held["C3"]) - counts[order[:3]].sum()
    assert profile.prediction is None and profile.validation is None


def test_the_validation_quality_and_prediction_bins(profiled, criteo_trained):
    profile, _ = profiled
    expected, labels = criteo_trained["expected"], criteo_trained["held_out"][LABEL]
    assert profile.validation == {"rows": len(expected), "auc": pytest.approx(auc(labels, expected)),
                                  "log_loss": pytest.approx(log_loss(labels, expected))}
    assert sum(profile.prediction["counts"]) == len(expected) and len(profile.prediction["counts"]) == len(profile.prediction["edges"]) + 1


def test_saved_sealed_and_refused_when_edited_or_of_another_plan(profiled, criteo_trained, tmp_path):
    profile, _ = profiled
    path = profile.save(tmp_path / "profile.json")
    plan = criteo_trained["pipeline"].plan
    assert Profile.load(path, plan.fingerprint) == profile
    with pytest.raises(ProfileError, match=f"built for plan {plan.fingerprint}, the model serves plan abc"):
        Profile.load(path, "abc")
    data = json.loads(path.read_text())
    data["continuous"]["I1"]["counts"][0] += 1
    (tmp_path / "edited.json").write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match="edited.json: damaged or edited"):
        Profile.load(tmp_path / "edited.json")
    (tmp_path / "other.json").write_text('{"format": "something"}')
    with pytest.raises(ProfileError, match="not a tritonrec profile"):
        Profile.load(tmp_path / "other.json")
    with pytest.raises(ProfileError, match="cannot be read as JSON"):
        Profile.load(tmp_path / "absent.json")


def test_bad_training_data_is_named(criteo_trained):
    held = criteo_trained["held_out"]
    plan = criteo_trained["pipeline"].plan
    with pytest.raises(ProfileError, match=r"columns \['I1'\] of the plan are not in the training data"):
        build_profile(plan, {c: held[c] for c in CONTINUOUS + CATEGORICAL if c != "I1"})
    with pytest.raises(ProfileError, match="top 0: expected >= 1"):
        build_profile(plan, held, top=0)
    with pytest.raises(ProfileError, match="validation set: 2 labels and 3 predictions"):
        build_profile(plan, held, predictions=np.array([0.1, 0.2, 0.3]), labels=np.array([0, 1]))


def test_the_profile_command_scores_the_validation_rows_with_the_exported_model(criteo_trained, tmp_path, capsys):
    from tritonrec.cli import main
    from tritonrec.export import export_ensemble

    pipeline, held = criteo_trained["pipeline"], criteo_trained["held_out"]
    repo = tmp_path / "repo"
    export_ensemble(pipeline.plan, pipeline.store_dir, pipeline.scorer_dir, repo, "criteo")
    frame = pd.DataFrame(held)
    frame.iloc[:1000].drop(columns=[LABEL]).to_parquet(tmp_path / "train.parquet")
    frame.iloc[1000:].to_csv(tmp_path / "validation.csv", index=False)
    out = tmp_path / "profile.json"
    assert main(["profile", str(tmp_path / "train.parquet"), "--workflow", str(pipeline.workflow_dir), "--model", str(repo / "criteo"),
                 "--validation", str(tmp_path / "validation.csv"), "-o", str(out), "--top", "3"]) == 0
    assert "profiled 1,000 rows: 13 continuous, 26 categorical columns; validation AUC" in capsys.readouterr().out
    profile = Profile.load(out, pipeline.plan.fingerprint)
    expected, labels = criteo_trained["expected"][1000:], held[LABEL][1000:]
    assert profile.validation["rows"] == 1000 and profile.rows == 1000
    assert profile.validation["auc"] == pytest.approx(auc(labels, expected), abs=1e-6)  # served = offline within 1e-5
    assert profile.validation["log_loss"] == pytest.approx(log_loss(labels, expected), abs=1e-5)
    assert all(len(e["top"]) == 3 and e["source"] == "categorify" for e in profile.categorical.values())
    # bad invocations, named
    assert main(["profile", str(tmp_path / "train.parquet"), "--workflow", str(pipeline.workflow_dir), "--model", str(repo / "criteo"),
                 "-o", str(out)]) == 1
    assert "--model and --validation go together" in capsys.readouterr().err
    assert main(["profile", str(tmp_path / "train.parquet"), "--workflow", str(pipeline.workflow_dir), "--model", str(repo / "criteo"),
                 "--validation", str(tmp_path / "train.parquet"), "-o", str(out)]) == 1
    assert "no 'label' column" in capsys.readouterr().err
    config = repo / "criteo_transform" / "config.pbtxt"
    config.write_text(config.read_text().replace(pipeline.plan.fingerprint, "0" * 64))
    assert main(["profile", str(tmp_path / "train.parquet"), "--workflow", str(pipeline.workflow_dir), "--model", str(repo / "criteo"),
                 "--validation", str(tmp_path / "validation.csv"), "-o", str(out)]) == 1
    assert f"serves plan {'0' * 64}, the workflow given is plan {pipeline.plan.fingerprint}" in capsys.readouterr().err
