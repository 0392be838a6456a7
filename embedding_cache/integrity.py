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
