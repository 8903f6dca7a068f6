"""A pytest plugin that fails the run when a folder of tests was never collected.

pytest skips folders by name (``norecursedirs`` holds ``dist``, ``build``, ``*.egg``, ``venv``
and dot-folders by default), and a skipped folder does not fail anything: its tests simply
never run. That is how the distributed tests once stayed out of CI. CI loads this plugin
(``-p lorap_dist.testing.collection_guard``); it compares every folder under the test roots
that holds a ``test_*.py`` file with the folders the run collected tests from, before any
``-k``/``-m`` deselection, and stops the run with the list of folders that were left out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# Folders that never hold the project's tests, whatever they contain.
IGNORED_PARTS = frozenset({"__pycache__", ".pytest_cache", ".venv", ".git"})


def test_folders(root: Path) -> set[Path]:
    """Every folder under ``root`` (itself included) that holds a ``test_*.py`` file."""
    return {
        path.parent.resolve()
        for path in root.rglob("test_*.py")
        if not IGNORED_PARTS.intersection(path.relative_to(root).parts)
    }


def uncollected_folders(roots: list[Path], collected_files: set[Path]) -> list[Path]:
    """The test folders under ``roots`` from which no file was collected, sorted."""
    collected = {path.resolve().parent for path in collected_files}
    wanted: set[Path] = set()
    for root in roots:
        wanted |= test_folders(root)
    return sorted(wanted - collected)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items) -> None:
    roots = [Path(config.rootpath, p) for p in config.getini("testpaths")] or [config.rootpath]
    # Only a run over the whole suite can be checked: `pytest tests/quant` collects one folder.
    if sorted(Path(a).resolve() for a in config.args) != sorted(r.resolve() for r in roots):
        return
    missing = uncollected_folders(roots, {Path(item.path) for item in items})
    if missing:
        names = ", ".join(str(p.relative_to(config.rootpath)) for p in missing)
        raise pytest.UsageError(
            f"no tests were collected from {names}: pytest skipped these folders (a name in "
            "norecursedirs such as 'dist' or 'build', or a collection filter). Rename the "
            "folder or fix the filter so that its tests run."
        )
