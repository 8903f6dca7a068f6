"""Copies of the project's source tree and non-editable builds of them, for the tests that
check where ``lorap_dist.kernels`` is imported from.

A copy holds what a job upload or a build needs (``lorap_dist/``, ``kernels/``,
``pyproject.toml``, ``README.md``); ``mark`` is appended to its ``kernels/__init__.py`` as
``BUILD_MARK``, so a process can tell which copy's kernels it imported.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

#: The project's root (the folder holding ``pyproject.toml``).
REPO = Path(__file__).resolve().parents[2]

_PARTS = ("lorap_dist", "kernels", "pyproject.toml", "README.md")
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc")


def copy_source_tree(dest: Path, mark: str) -> Path:
    """Copy the source tree to ``dest`` and mark its kernels with ``BUILD_MARK = mark``."""
    dest.mkdir(parents=True)
    for part in _PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=_SKIP)
        else:
            shutil.copy2(src, dest / part)
    with open(dest / "kernels" / "__init__.py", "a") as init:
        init.write(f"\nBUILD_MARK = {mark!r}\n")
    return dest


def install_build(tree: Path, target: Path) -> Path:
    """A non-editable install of ``tree`` into ``target`` (a folder to put on ``PYTHONPATH``),
    built with this interpreter's setuptools, without dependencies or downloads."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(tree)],
        check=True,
        capture_output=True,
        timeout=300,
    )  # fmt: skip
    return target
