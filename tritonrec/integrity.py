"""Checksums of artifact files and manifests: written when an artifact is built, verified at load.

Every artifact (an embedding store, and tritonrec's transform plans and scorers) is a directory
with a JSON manifest that lists its files with their size and SHA-256, and is itself *sealed*: it
carries the SHA-256 of its own canonical JSON, so that an edited or damaged manifest (a changed
row count, a flipped digit) is refused like a damaged file. A seal detects damage, not an
attacker (who can recompute it).

Verification streams each file in 4 MiB chunks and hashes several files at once on threads
(hashlib releases the GIL), so a large store verifies at about disk speed.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SEAL = "manifest_sha256"
"""The manifest key holding the SHA-256 of the rest of the manifest."""
_CHUNK = 4 << 20


class IntegrityError(OSError):
    """A damaged or altered artifact: the message names the file, the expected and the found checksum."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(root: Path, relative: str) -> dict[str, Any]:
    """``{"file", "bytes", "sha256"}`` of ``root/relative``, for a manifest."""
    path = root / relative
    return {"file": relative, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def verify_files(root: Path, entries: Sequence[Mapping[str, Any]], listed_in: Path, threads: int | None = None) -> int:
    """Checks that each ``{"file", "bytes", "sha256"}`` entry (relative to ``root``) exists with
    that size and digest; hashes up to ``threads`` files at once (default: the machine's cores).

    Returns:
        The bytes read.

    Raises:
        IntegrityError: the first file missing, of another size, or with another digest, naming
            it, ``listed_in`` (the manifest) and both values.
    """
    sizes = []
    for entry in entries:
        path = root / entry["file"]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise IntegrityError(f"{path}: missing (listed in {listed_in})") from None
        if size != int(entry["bytes"]):
            raise IntegrityError(f"{path}: {size} bytes, {listed_in} says {entry['bytes']}: truncated or damaged")
        sizes.append(size)
    workers = max(1, min(len(entries), threads or os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        digests = list(pool.map(lambda e: sha256_file(root / e["file"]), entries))
    for entry, found in zip(entries, digests):
        if found != entry["sha256"]:
            raise IntegrityError(
                f"{root / entry['file']}: damaged: sha256 {found}, {listed_in} says {entry['sha256']}"
            )
    return sum(sizes)


def _canonical(manifest: Mapping[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in manifest.items() if k != SEAL}, sort_keys=True, separators=(",", ":")).encode()


def seal(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """``manifest`` with :data:`SEAL` set to the SHA-256 of its canonical JSON (keys sorted)."""
    return {**{k: v for k, v in manifest.items() if k != SEAL}, SEAL: hashlib.sha256(_canonical(manifest)).hexdigest()}


def check_seal(manifest: Mapping[str, Any], path: Path) -> None:
    """Raises :class:`IntegrityError` naming ``path`` unless ``manifest`` carries its own correct seal."""
    recorded = manifest.get(SEAL)
    if recorded is None:
        raise IntegrityError(f"{path}: no {SEAL} (written without checksums): rebuild the artifact")
    found = hashlib.sha256(_canonical(manifest)).hexdigest()
    if found != recorded:
        raise IntegrityError(f"{path}: damaged or edited: its content has sha256 {found}, its {SEAL} says {recorded}")


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    """Writes ``manifest``, sealed, to ``path`` atomically (a temporary file, fsynced, renamed)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(seal(manifest), f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


PLAN_FORMAT = "tritonrec.transform_plan"
"""The ``format`` of a transform plan's ``manifest.json`` (written by ``tritonrec.transform.plan_io``)."""
PLAN_FORMAT_VERSION = 2  # 2: every array file's size and SHA-256, a sealed manifest
"""Version of the plan directory layout; a plan of another version is refused at load."""
PLAN_MANIFEST = "manifest.json"

@dataclasses.dataclass(frozen=True)
class ManifestKind:
    """What a manifest file must be, and how its errors name it.

    Attributes:
        format: the ``format`` field it must hold, e.g. ``"tritonrec.scorer"``.
        version: the ``format_version`` it must hold.
        label: its name in "not a tritonrec <label> manifest", e.g. ``"scorer"``.
        what: the directory's name in "<dir> is not <what>", e.g. ``"a tritonrec scorer"``.
        reader: what reads it, in "this <reader> reads version N", e.g. ``"tritonrec"``.
        remedy: what to do about another version, e.g. ``"save the scorer again"``.
        error: the exception raised, with one message naming the file.
    """

    format: str
    version: int
    label: str
    what: str
    reader: str
    remedy: str
    error: type[Exception]


def read_sealed_manifest(directory: Path, name: str, kind: ManifestKind) -> tuple[Path, dict[str, Any]]:
    """``(directory/name, its content)``: a JSON object of ``kind``'s format and version whose seal
    (its own SHA-256, see :func:`seal`) matches its content.

    Raises:
        kind.error: no such file, not JSON, another format or format version, a broken seal; the
            message names the file.
    """
    path = Path(directory) / name
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise kind.error(f"{path}: no such file: {directory} is not {kind.what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise kind.error(f"{path}: damaged manifest (not valid JSON: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != kind.format:
        raise kind.error(f"{path}: not a tritonrec {kind.label} manifest")
    if manifest.get("format_version") != kind.version:
        raise kind.error(
            f"{path}: {kind.label.split()[-1]} format version {manifest.get('format_version')!r}; this {kind.reader} reads "
            f"version {kind.version} (which checksums every file): {kind.remedy}"
        )
    try:
        check_seal(manifest, path)
    except IntegrityError as e:
        raise kind.error(str(e)) from None
    return path, manifest
