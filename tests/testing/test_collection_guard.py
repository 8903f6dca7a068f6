"""The CI guard fails a run whose test folders pytest skipped (as it skips ``dist/``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lorap_dist.testing.collection_guard import uncollected_folders

PASSING_TEST = "def test_ok():\n    assert True\n"


def make_suite(root: Path, folders: list[str]) -> None:
    (root / "pytest.ini").write_text("[pytest]\ntestpaths = tests\n")
    for folder in folders:
        (root / "tests" / folder).mkdir(parents=True, exist_ok=True)
        (root / "tests" / folder / f"test_{folder.replace('/', '_')}.py").write_text(PASSING_TEST)


def run_pytest(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "lorap_dist.testing.collection_guard", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_uncollected_folders_names_only_the_missing_ones(tmp_path):
    make_suite(tmp_path, ["quant", "dist", "dist/inner"])
    collected = {tmp_path / "tests/quant/test_quant.py"}
    missing = uncollected_folders([tmp_path / "tests"], collected)
    assert missing == [
        (tmp_path / "tests/dist").resolve(),
        (tmp_path / "tests/dist/inner").resolve(),
    ]


@pytest.mark.slow
def test_guard_fails_a_run_that_skips_a_dist_folder(tmp_path):
    make_suite(tmp_path, ["quant", "dist"])
    result = run_pytest(tmp_path)
    assert result.returncode != 0
    assert "no tests were collected from tests/dist" in result.stdout + result.stderr


@pytest.mark.slow
def test_guard_passes_when_every_folder_is_collected(tmp_path):
    make_suite(tmp_path, ["quant", "distributed"])
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


@pytest.mark.slow
def test_guard_leaves_a_run_over_one_folder_alone(tmp_path):
    make_suite(tmp_path, ["quant", "dist"])
    result = run_pytest(tmp_path, "tests/quant")
    assert result.returncode == 0, result.stdout + result.stderr
