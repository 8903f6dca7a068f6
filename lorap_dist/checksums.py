"""One file checksum for everything this package writes and verifies: prepared dataset
directories (``meta.json``) and checkpoints (``manifest.json``).

xxh3-64 (the ``xxhash`` package): datasets run to hundreds of gigabytes, and xxh3 reads them
at memory speed. Checkpoints written before they shared this checksum recorded a blake2b
digest instead; :func:`checksum_matches` still verifies those.
"""

from __future__ import annotations

import hashlib
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
    size = entry.get("bytes", entry.get("size"))
    if Path(path).stat().st_size != size:
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
