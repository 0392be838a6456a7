"""The plan directory: writing, reading and fingerprinting a :class:`TransformPlan`.

A plan is a directory: ``manifest.json`` (schemas, steps, parameters, fingerprint, each array
file's size and SHA-256, sealed by its own SHA-256) and ``arrays/`` (one ``.npy`` file per large
parameter, e.g. a vocabulary's hash table), all verified at load. Each step is saved as its kind,
``params()`` and ``arrays()`` and rebuilt through the registry of :mod:`tritonrec.transform.ops`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tritonrec.integrity import (
    PLAN_FORMAT, PLAN_FORMAT_VERSION, PLAN_MANIFEST, IntegrityError, ManifestKind, file_entry, read_sealed_manifest, verify_files,
    write_manifest,
)
from tritonrec.transform.ops import IncompatibleStepError, step_from_manifest
from tritonrec.transform.plan import ColumnSpec, PlanGroup, PlanLoadError, TransformPlan

SUPPORTED_NVTABULAR_VERSIONS = ("23.08.00",)
"""NVTabular releases whose transform semantics the steps reproduce."""
MANIFEST = PLAN_MANIFEST



def _sha256_array(array: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def fingerprint(nvtabular_version: str, groups: Sequence[PlanGroup]) -> str:
    """32 hex digits of SHA-256 over the NVTabular version and every group's columns, dtypes,
    steps and arrays: what a store or scorer trained against the plan records."""
    digest = hashlib.sha256()
    digest.update(f"nvtabular={nvtabular_version}\n".encode())
    for group in groups:
        digest.update(json.dumps([group.inputs, group.outputs, group.input_dtype.name, *(["list"] if group.is_list else [])]).encode())
        for step in group.steps:
            digest.update(json.dumps([step.kind, step.params()], sort_keys=True).encode())
            for name, array in sorted(step.arrays().items()):
                digest.update(name.encode())
                digest.update(_sha256_array(array).encode())
    return digest.hexdigest()[:32]


def save_plan(plan: TransformPlan, path: str | os.PathLike[str]) -> Path:
    """Writes ``plan`` to directory ``path`` (created; existing plan files are replaced)."""
    root = Path(path)
    (root / "arrays").mkdir(parents=True, exist_ok=True)
    groups_json = []
    for gi, group in enumerate(plan.groups):
        steps_json = []
        for si, step in enumerate(group.steps):
            files = {}
            for name, array in step.arrays().items():
                rel = f"arrays/g{gi}_s{si}_{name}.npy"
                np.save(root / rel, np.asarray(array), allow_pickle=False)
                files[name] = file_entry(root, rel)
            steps_json.append({"kind": step.kind, "params": step.params(), "arrays": files})
        groups_json.append(
            {"inputs": group.inputs, "outputs": group.outputs, "input_dtype": group.input_dtype.name, "steps": steps_json,
             **({"list": True} if group.is_list else {})}
        )
    manifest = {
        "format": PLAN_FORMAT,
        "format_version": PLAN_FORMAT_VERSION,
        "nvtabular_version": plan.nvtabular_version,
        "fingerprint": plan.fingerprint,
        "input_schema": [c.to_json() for c in plan.input_schema],
        "output_schema": [c.to_json() for c in plan.output_schema],
        **({"hidden_schema": [c.to_json() for c in plan.hidden_schema]} if plan.hidden_schema else {}),
        "groups": groups_json,
        # what an embedding store for this plan records (embedding-cache build --plan reads it): the rows
        # each Categorify output's table needs (codes 0 .. size-1); derived, not part of the fingerprint
        "table_sizes": {column: ranges[0] for column, ranges in plan.categorical_codes().items()},
    }
    write_manifest(root / MANIFEST, manifest)
    return root


def _load_arrays(root: Path, refs: Mapping[str, Mapping[str, Any]], manifest_path: Path) -> dict[str, np.ndarray]:
    """A step's arrays (name -> host array) from the .npy files its manifest entry lists."""
    arrays = {}
    for name, ref in refs.items():
        file = root / ref["file"]
        try:
            arrays[name] = np.load(file, allow_pickle=False)
        except FileNotFoundError:
            raise PlanLoadError(f"{file}: missing (listed in {manifest_path})") from None
        except (ValueError, OSError, EOFError) as e:
            raise PlanLoadError(f"{file}: damaged array file ({e})") from None
    return arrays


def load_plan(path: str | os.PathLike[str], verify: bool = True) -> TransformPlan:
    """Loads a plan directory written by :func:`save_plan` (see :meth:`TransformPlan.load`)."""
    root = Path(path)
    manifest_path, manifest = read_sealed_manifest(root, MANIFEST, ManifestKind(
        PLAN_FORMAT, PLAN_FORMAT_VERSION, "transform plan", "a transform plan", "tritonrec", "re-export the plan",
        PlanLoadError))
    try:
        if verify:
            verify_files(root, [ref for g in manifest["groups"] for st in g["steps"] for ref in st["arrays"].values()], manifest_path)
    except IntegrityError as e:
        raise PlanLoadError(str(e)) from None
    except (KeyError, TypeError, AttributeError) as e:
        raise PlanLoadError(f"{manifest_path}: damaged manifest ({type(e).__name__}: {e})") from None
    version = manifest.get("nvtabular_version")
    if version not in SUPPORTED_NVTABULAR_VERSIONS:
        raise PlanLoadError(
            f"{manifest_path}: plan compiled for nvtabular {version!r}; this tritonrec reproduces "
            f"nvtabular {', '.join(SUPPORTED_NVTABULAR_VERSIONS)} only"
        )
    try:
        groups = []
        for g in manifest["groups"]:
            steps = []
            for s in g["steps"]:
                steps.append(step_from_manifest(s["kind"], s["params"], _load_arrays(root, s["arrays"], manifest_path)))
            groups.append(PlanGroup(list(g["inputs"]), list(g["outputs"]), np.dtype(g["input_dtype"]), steps, bool(g.get("list", False))))
        plan = TransformPlan(
            [ColumnSpec.from_json(c) for c in manifest["input_schema"]],
            [ColumnSpec.from_json(c) for c in manifest["output_schema"]],
            groups,
            version,
            hidden_schema=[ColumnSpec.from_json(c) for c in manifest.get("hidden_schema", [])],
        )
    except PlanLoadError:
        raise
    except IncompatibleStepError as e:
        raise PlanLoadError(f"{manifest_path}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise PlanLoadError(f"{manifest_path}: damaged manifest ({type(e).__name__}: {e})") from None
    if plan.fingerprint != manifest.get("fingerprint"):
        raise PlanLoadError(
            f"{manifest_path}: fingerprint {manifest.get('fingerprint')!r} does not match the "
            f"plan's contents ({plan.fingerprint}): the plan was altered"
        )
    return plan
