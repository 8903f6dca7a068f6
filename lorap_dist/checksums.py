"""One file checksum, one manifest reader and one file check for everything this package
writes and verifies: prepared dataset directories (``meta.json``) and checkpoints
(``manifest.json``). Each caller words its own errors (what the user should do differs).

xxh3-64 (the ``xxhash`` package): datasets run to hundreds of gigabytes, and xxh3 reads them
at memory speed. Checkpoints written before they shared this checksum recorded a blake2b
digest instead; :func:`checksum_matches` still verifies those.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import xxhash

CHECKSUM = "xxh3_64"  # the key a manifest records the checksum under
_BLOCK = 8 << 20


def file_checksum(path: str | Path) -> str:
    """Hex xxh3-64 of a file's bytes, read in 8 MiB blocks."""
    digest = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def checksum_entry(path: str | Path) -> dict[str, Any]:
    """``{CHECKSUM: ..., "bytes": size}``: what a manifest records for ``path``."""
    return {CHECKSUM: file_checksum(path), "bytes": Path(path).stat().st_size}


def checksum_matches(path: str | Path, entry: dict[str, Any]) -> bool:
    """Whether ``path`` has the size and checksum its manifest ``entry`` records (an entry
    of an older checkpoint: ``size`` and ``blake2b``)."""
    if Path(path).stat().st_size != _recorded_size(entry):
        return False
    if CHECKSUM in entry:
        return file_checksum(path) == entry[CHECKSUM]
    if "blake2b" in entry:
        digest = hashlib.blake2b(digest_size=32)
        with open(path, "rb") as f:
            while block := f.read(_BLOCK):
                digest.update(block)
        return digest.hexdigest() == entry["blake2b"]
    return False


def read_manifest(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: it does not hold a JSON object (the message says what it holds).
    """
    if not path.is_file():
        raise FileNotFoundError(path)
    manifest = json.loads(path.read_text())  # json.JSONDecodeError is a ValueError
    if not isinstance(manifest, dict):
        raise ValueError(f"a JSON {type(manifest).__name__}, not an object")
    return manifest


def mismatched_file(directory: Path, files: dict[str, dict[str, Any]]) -> tuple[Path, str] | None:
    """The first file of a manifest's ``files`` table (names relative to ``directory``) that
    does not match its entry, with what is wrong, worded to follow "is": ``missing``,
    ``truncated or damaged: N bytes, the manifest says M`` or ``corrupt: its checksum does
    not match the manifest``; ``None`` when every file matches."""
    for name, entry in files.items():
        path = directory / name
        if not path.is_file():
            return path, "missing"
        size, recorded = path.stat().st_size, _recorded_size(entry)
        if size != recorded:
            return path, f"truncated or damaged: {size} bytes, the manifest says {recorded}"
        if not checksum_matches(path, entry):
            return path, "corrupt: its checksum does not match the manifest"
    return None


def _recorded_size(entry: dict[str, Any]) -> int | None:
    """The byte size a manifest entry records (``size`` in checkpoints older than the shared
    checksum)."""
    return entry.get("bytes", entry.get("size"))
