"""The reference profile the monitor compares traffic with: what the model was trained on (issue 18).

Built from the raw training columns (before the transform) and the plan that serves them:

- each continuous column (numbers feeding no categorical encoder): its quantile bin edges
  (:func:`~tritonrec.monitoring.drift.quantile_edges`, ``bins``), the rows in each bin, and the
  missing (NaN) rows;
- each categorical column (feeding ``Categorify``, ``HashBucket`` or a hashed cross): its ``top``
  most frequent values with their counts (``Categorify``'s own fit-time counts, from the workflow's
  ``categories/unique.<column>.parquet``, where given), the rows of every other value (``other``),
  the missing rows, and the rows the plan encodes out of vocabulary (``oov``; ``oov_rate``: their
  share of all rows);
- optionally the prediction distribution on a validation set (bins of its quantiles) and the
  validation AUC and log loss.

Saved as one JSON file, sealed (:mod:`tritonrec.integrity`: an edited or damaged profile is
refused), carrying the plan's fingerprint: :meth:`Profile.load` refuses a profile of another plan.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tritonrec.integrity import IntegrityError, check_seal, write_manifest
from tritonrec.monitoring.drift import bin_counts, quantile_edges
from tritonrec.monitoring.quality import auc, log_loss

PROFILE_FORMAT = "tritonrec.profile"
PROFILE_VERSION = 1
_CATEGORICAL_KINDS = ("categorify", "hash_bucket", "hashed_cross", "xor_buckets", "indexed_hash")


class ProfileError(ValueError):
    """A profile that cannot be built or used; the message names the file, column or plan."""


@dataclasses.dataclass
class Profile:
    """A reference profile (see the module's docstring). ``continuous``: column -> ``{"edges",
    "counts", "missing"}``; ``categorical``: column -> ``{"top": [[value, count], ...], "other",
    "missing", "oov", "oov_rate", "source"}``; ``prediction``: ``{"edges", "counts"}`` or None;
    ``validation``: ``{"rows", "auc", "log_loss"}`` or None."""

    plan_fingerprint: str
    rows: int
    continuous: dict[str, dict[str, Any]]
    categorical: dict[str, dict[str, Any]]
    prediction: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the sealed JSON file (atomically); returns its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_manifest(path, {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, **dataclasses.asdict(self)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], plan_fingerprint: str | None = None) -> Profile:
        """Reads and checks a profile; with ``plan_fingerprint``, refuses a profile of another plan.

        Raises:
            ProfileError: not a profile, another version, or another plan (both fingerprints named).
            IntegrityError: the file is damaged or edited.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ProfileError(f"profile {path}: cannot be read as JSON ({e})") from None
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"profile {path}: not a tritonrec profile (format {data.get('format') if isinstance(data, dict) else None!r})")
        check_seal(data, path)
        if data.get("version") != PROFILE_VERSION:
            raise ProfileError(f"profile {path}: version {data.get('version')!r}, this tritonrec reads {PROFILE_VERSION}")
        fields = {f.name: data[f.name] for f in dataclasses.fields(cls)}
        profile = cls(**fields)
        if plan_fingerprint is not None and profile.plan_fingerprint != plan_fingerprint:
            raise ProfileError(f"profile {path} was built for plan {profile.plan_fingerprint}, "
                               f"the model serves plan {plan_fingerprint}: build the profile of this plan")
        return profile


def column_kinds(plan: Any) -> tuple[list[str], list[str]]:
    """(continuous, categorical) input columns of ``plan``, in input order: categorical feed an
    encoder (Categorify, HashBucket, a hashed cross) or are strings; continuous are the other
    numeric, non-list columns. List columns are in neither."""
    encoded = {c for g in plan.groups if any(s.kind in _CATEGORICAL_KINDS for s in g.steps) for c in g.inputs}
    continuous, categorical = [], []
    for spec in plan.input_schema:
        if spec.is_list:
            continue
        if spec.name in encoded or np.dtype(spec.dtype).kind in "OSU":
            categorical.append(spec.name)
        elif np.dtype(spec.dtype).kind in "iufb":
            continuous.append(spec.name)
    return continuous, categorical


def _continuous(values: Any, bins: int, column: str) -> dict[str, Any]:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    missing = int(np.isnan(array).sum())
    try:
        edges = quantile_edges(array, bins)
    except ValueError as e:
        raise ProfileError(f"column {column!r}: {e}") from None
    return {"edges": edges.tolist(), "counts": bin_counts(array, edges).tolist(), "missing": missing}


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _categorical(values: Any, top: int, fitted: list[tuple[Any, int]] | None) -> dict[str, Any]:
    """``top`` most frequent values with counts (``fitted``: Categorify's (value, count) pairs, most
    frequent first, else counted here), the rest's count as ``other``, the missing rows."""
    array = np.asarray(values).reshape(-1)
    missing_mask = np.array([_is_missing(v) for v in array.tolist()], dtype=bool) if array.dtype.kind in "Of" else np.zeros(array.size, bool)
    if fitted is not None:
        pairs, source = [(plain_value(v), int(c)) for v, c in fitted], "categorify"
    else:
        uniques, counts = np.unique(array[~missing_mask], return_counts=True)
        order = np.argsort(-counts, kind="stable")
        pairs, source = [(plain_value(uniques[i]), int(counts[i])) for i in order], "data"
    return {"top": [list(p) for p in pairs[:top]], "other": sum(c for _, c in pairs[top:]), "missing": int(missing_mask.sum()),
            "source": source}


def plain_value(value: Any) -> Any:
    """A numpy scalar as the JSON value it is (int, float, str)."""
    return value.item() if isinstance(value, np.generic) else value


def fit_counts(workflow_dir: str | os.PathLike[str] | None, column: str) -> list[tuple[Any, int]] | None:
    """``Categorify``'s fit-time (value, count) pairs of ``column``, most frequent first, from a
    fitted NVTabular workflow directory (``categories/unique.<column>.parquet``); None without one."""
    if workflow_dir is None:
        return None
    path = Path(workflow_dir) / "categories" / f"unique.{column}.parquet"
    if not path.is_file():
        return None
    import pyarrow.parquet as pq  # noqa: PLC0415

    table = pq.read_table(path)
    if column not in table.column_names or f"{column}_size" not in table.column_names:
        return None
    values, counts = table.column(column).to_pylist(), table.column(f"{column}_size").to_pylist()
    pairs = sorted(((v, int(c)) for v, c in zip(values, counts) if not _is_missing(v)), key=lambda p: -p[1])
    return pairs


def oov_counts(plan: Any, columns: Mapping[str, Any], categorical: list[str]) -> dict[str, int]:
    """Rows whose value ``plan`` encodes out of vocabulary (the codes in its OOV range, see
    :meth:`TransformPlan.oov_inputs`), per categorical input column; 0 for a column without a
    vocabulary (hashed). Missing values are not out of vocabulary (they get the null code)."""
    outputs = plan.transform(columns)
    found = plan.oov_inputs()
    counts = {}
    for column in categorical:
        if column in found:
            name, first, end = found[column]
            values = np.asarray(outputs[name]).reshape(-1)
            counts[column] = int(((values >= first) & (values < end)).sum())
        else:
            counts[column] = 0
    return counts


def build_profile(plan: Any, columns: Mapping[str, Any], *, bins: int = 10, top: int = 100,
                  workflow_dir: str | os.PathLike[str] | None = None, predictions: Any = None, labels: Any = None) -> Profile:
    """The profile of raw training ``columns`` (name -> (n,) array, every input of ``plan``) for
    ``plan``; with ``predictions`` (and 0/1 ``labels``) of a validation set, also its prediction
    distribution (and AUC and log loss).

    Raises:
        ProfileError: a column of the plan missing, no rows, ``top`` < 1, or predictions and
            labels of different lengths.
    """
    if top < 1:
        raise ProfileError(f"top {top}: expected >= 1")
    missing = [c.name for c in plan.input_schema if c.name not in columns]
    if missing:
        raise ProfileError(f"columns {missing} of the plan are not in the training data")
    rows = len(np.asarray(columns[plan.input_schema[0].name])) if plan.input_schema else 0
    if rows == 0:
        raise ProfileError("no training rows: expected at least one")
    continuous, categorical = column_kinds(plan)
    inputs = {c.name: columns[c.name] for c in plan.input_schema}
    oov = oov_counts(plan, inputs, categorical)
    profile = Profile(
        plan_fingerprint=plan.fingerprint, rows=rows,
        continuous={c: _continuous(columns[c], bins, c) for c in continuous},
        categorical={c: {**_categorical(columns[c], top, fit_counts(workflow_dir, c)), "oov": oov[c], "oov_rate": oov[c] / rows}
                     for c in categorical},
    )
    if predictions is not None:
        p = np.asarray(predictions, dtype=np.float64).reshape(-1)
        binned = _continuous(p, bins, "prediction")
        profile.prediction = {"edges": binned["edges"], "counts": binned["counts"]}
        if labels is not None:
            try:
                profile.validation = {"rows": int(p.size), "auc": auc(labels, p), "log_loss": log_loss(labels, p)}
            except ValueError as e:
                raise ProfileError(f"validation set: {e}") from None
    return profile


def served_predictions(model_dir: str | os.PathLike[str], frame: Any, plan_fingerprint: str, batch_rows: int = 4096) -> np.ndarray:
    """Probabilities that the exported model at ``model_dir`` (``<repository>/<model>``, an ensemble
    of tritonrec's backends) answers for the raw rows of DataFrame ``frame``, computed in process
    (:class:`~tritonrec.serving.reference.ServedReference`), float64 (n,).

    Raises:
        ProfileError: a model of another plan than ``plan_fingerprint``, or one without a single
            [rows, 1] output; NoReferenceError: a step on another backend.
    """
    from tritonrec.serving.query import RequestBuilder  # noqa: PLC0415
    from tritonrec.serving.reference import ServedReference, repository_configs  # noqa: PLC0415

    model_dir = Path(model_dir)
    configs = repository_configs(model_dir.parent)
    _, config = configs(model_dir.name, -1)
    steps = [s["model_name"] for s in config.get("ensemble_scheduling", {}).get("step", [])] or [model_dir.name]
    for step in steps:
        found = configs(step, -1)[1].get("parameters", {}).get("plan_fingerprint", {}).get("string_value")
        if found and found != plan_fingerprint:
            raise ProfileError(f"model {model_dir} serves plan {found}, the workflow given is plan {plan_fingerprint}")
    builder = RequestBuilder(config)
    builder.check(frame, model_dir)
    if len(builder.outputs) != 1 and "probability" not in builder.outputs:
        raise ProfileError(f"model {model_dir}: outputs {builder.outputs}: expected one probability output")
    output = "probability" if "probability" in builder.outputs else builder.outputs[0]
    reference = ServedReference(model_dir.parent, model_dir.name, configs)
    try:
        parts = [np.asarray(reference(builder.tensors(frame.iloc[start:start + batch_rows]))[output], dtype=np.float64).reshape(-1)
                 for start in range(0, len(frame), batch_rows)]
    finally:
        reference.close()
    return np.concatenate(parts) if parts else np.zeros(0)


def profile_files(data: str | os.PathLike[str], workflow: str | os.PathLike[str], output: str | os.PathLike[str], *,
                  model: str | os.PathLike[str] | None = None, validation: str | os.PathLike[str] | None = None,
                  bins: int = 10, top: int = 100) -> Profile:
    """What ``tritonrec profile`` does: the profile of the raw training rows in ``data`` (.parquet or
    .csv) for the plan of ``workflow`` (a plan or a fitted workflow directory; Categorify's counts
    from its ``categories/``), with the validation rows of ``validation`` (a ``label`` column)
    scored by ``model`` (an exported ensemble's directory), saved to ``output``.

    Raises:
        ProfileError, QueryError (an unreadable file, missing columns), NoReferenceError.
    """
    from tritonrec.export.transform import load_or_compile  # noqa: PLC0415
    from tritonrec.serving.query import read_rows  # noqa: PLC0415

    if (model is None) != (validation is None):
        raise ProfileError("--model and --validation go together: the validation rows (with a 'label' column) and the model that scores them")
    plan = load_or_compile(workflow)
    frame = read_rows(data)
    columns = {c: frame[c].to_numpy() for c in frame.columns}
    predictions = labels = None
    if model is not None:
        rows = read_rows(validation)
        if "label" not in rows.columns:
            raise ProfileError(f"{validation}: no 'label' column: expected the validation rows with their 0/1 labels")
        predictions, labels = served_predictions(model, rows, plan.fingerprint), rows["label"].to_numpy()
    workflow_dir = Path(workflow) if (Path(workflow) / "categories").is_dir() else None
    profile = build_profile(plan, columns, bins=bins, top=top, workflow_dir=workflow_dir, predictions=predictions, labels=labels)
    profile.save(output)
    return profile


__all__ = ["IntegrityError", "Profile", "ProfileError", "build_profile", "column_kinds", "fit_counts", "oov_counts", "plain_value", "profile_files",
           "served_predictions"]
